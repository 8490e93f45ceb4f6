// The resource model: generated kind types plus what loading adds (where a resource came from).
import type { ClusterNode, FirewallPolicy, GpuTrustLevel, Route, VirtualMachine } from './generated.ts';
import type { PositionMap } from './yaml.ts';

export type * from './generated.ts';

export type AnyResource = VirtualMachine | Route | FirewallPolicy | GpuTrustLevel | ClusterNode;

export interface ResourceByKind {
  VirtualMachine: VirtualMachine;
  Route: Route;
  FirewallPolicy: FirewallPolicy;
  GpuTrustLevel: GpuTrustLevel;
  ClusterNode: ClusterNode;
}

/** A validated resource and where it was read from. */
export interface LoadedResource<R extends AnyResource = AnyResource> {
  resource: R;
  /** 'Kind/name' */
  key: string;
  file: string;
  /** sha256 of the whole file's bytes, hex. */
  digest: string;
  /** Positions of the document's fields, for errors found after loading. */
  positions?: PositionMap;
}

export function resourceKey(r: { kind: string; metadata: { name: string } }): string {
  return `${r.kind}/${r.metadata.name}`;
}

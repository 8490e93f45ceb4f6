// The resource model: generated kind types plus what loading adds (where a resource came from).
import type { ClusterNode, FirewallPolicy, GitSource, GpuTrustLevel, Route, VirtualMachine } from './generated.ts';
import type { Kind } from './kinds.ts';
import type { ObjectKey } from './keys.ts';
import type { PositionMap } from './yaml.ts';

export type * from './generated.ts';

export type AnyResource = VirtualMachine | Route | FirewallPolicy | GpuTrustLevel | ClusterNode | GitSource;

export interface ResourceByKind {
  VirtualMachine: VirtualMachine;
  Route: Route;
  FirewallPolicy: FirewallPolicy;
  GpuTrustLevel: GpuTrustLevel;
  ClusterNode: ClusterNode;
  GitSource: GitSource;
}

/** The spec type of each kind. */
export type SpecByKind = { [K in Kind]: ResourceByKind[K]['spec'] };

/** A validated resource and where it was read from. */
export interface LoadedResource<R extends AnyResource = AnyResource> {
  resource: R;
  /** 'Kind/name' */
  key: ObjectKey;
  file: string;
  /** sha256 of the whole file's bytes, hex. */
  digest: string;
  /** Positions of the document's fields, for errors found after loading. */
  positions?: PositionMap;
}


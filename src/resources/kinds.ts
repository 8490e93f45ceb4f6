// The kinds qwamos knows, their schema files and the order they are reconciled in.
export const API_VERSION = 'qwamos.io/v1alpha1';

export const KIND_SCHEMA_FILES = {
  VirtualMachine: 'virtualmachine.json',
  Route: 'route.json',
  FirewallPolicy: 'firewallpolicy.json',
  GpuTrustLevel: 'gputrustlevel.json',
  ClusterNode: 'clusternode.json',
  GitSource: 'gitsource.json',
} as const;

export type Kind = keyof typeof KIND_SCHEMA_FILES;
export const KINDS = Object.keys(KIND_SCHEMA_FILES) as Kind[];

export function isKind(value: unknown): value is Kind {
  return typeof value === 'string' && Object.hasOwn(KIND_SCHEMA_FILES, value);
}

/** Short names `get` accepts, as kubectl does. */
export const KIND_ALIASES: Record<string, Kind> = {
  virtualmachine: 'VirtualMachine', virtualmachines: 'VirtualMachine', vm: 'VirtualMachine', vms: 'VirtualMachine',
  route: 'Route', routes: 'Route', rt: 'Route',
  firewallpolicy: 'FirewallPolicy', firewallpolicies: 'FirewallPolicy', fw: 'FirewallPolicy',
  gputrustlevel: 'GpuTrustLevel', gputrustlevels: 'GpuTrustLevel', gpu: 'GpuTrustLevel',
  clusternode: 'ClusterNode', clusternodes: 'ClusterNode', node: 'ClusterNode', nodes: 'ClusterNode',
  gitsource: 'GitSource', gitsources: 'GitSource', gs: 'GitSource',
};

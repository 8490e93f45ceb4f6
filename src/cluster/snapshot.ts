// The cluster as placement needs it: the live nodes (drained where a drain/<node> key exists) and the
// current owners, all read at one etcd revision, so every node that reads the same revision computes the
// same placement.
import type { EtcdClient } from '../drivers/etcd.ts';
import { drainedNodes, nodeInfoOf, parseNodeRecord, type ClusterKeys } from './keys.ts';
import { readOwners, type RunClaim } from './ownership.ts';
import { place, type NodeSet, type PlacementResult, type VmRequest } from './placement.ts';

export interface ClusterSnapshot {
  revision: string;
  nodeSet: NodeSet;
  /** run/<vm> claims by VM name. */
  claims: Map<string, RunClaim>;
}

/** Nodes and run/ claims as of one revision (the current one, or `atRevision`). */
export async function readSnapshot(client: EtcdClient, keys: ClusterKeys, atRevision?: string): Promise<ClusterSnapshot> {
  const nodes = await client.list(keys.nodes, atRevision);
  const { owners } = await readOwners(client, keys, nodes.revision);
  const drained = drainedNodes(keys, (await client.list(keys.drains, nodes.revision)).entries);
  const records = nodes.entries.flatMap((e) => parseNodeRecord(e.value) ?? []);
  const infos = records.map((r) => nodeInfoOf(drained.has(r.name) ? { ...r, drained: true } : r));
  return { revision: nodes.revision, nodeSet: { revision: nodes.revision, nodes: infos }, claims: owners };
}

/** Placement of `vms` on a snapshot: claimed VMs count as running on their claimer. */
export function placeOn(snapshot: ClusterSnapshot, vms: readonly VmRequest[]): PlacementResult {
  const owners = new Map([...snapshot.claims].map(([vm, c]) => [vm, c.node]));
  return place(vms, snapshot.nodeSet, owners);
}

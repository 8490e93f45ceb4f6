// The cluster's nodes as `qwamos get nodes` shows them: every node key in etcd (Ready: its lease lives),
// plus every declared ClusterNode that has no key (NotReady).
import type { EtcdClient } from '../drivers/etcd.ts';
import { clusterKeys, drainedNodes } from './keys.ts';
import { hex, readNodes, type LeaseFile } from './membership.ts';
import { readOwners } from './ownership.ts';

export interface NodeView {
  name: string;
  ready: boolean;
  role?: string;
  /** Lease id in hex, as etcdctl prints it. */
  lease?: string;
  /** Epoch ms of the last keepalive etcd acknowledged (to the second, from the lease's remaining TTL; exact for this host's own node). */
  lastKeepalive?: number;
  /** Seconds the lease has left. */
  ttlSeconds?: number;
  revision?: string;
  cpus?: number;
  memoryMiB?: number;
  labels?: Record<string, string>;
  gpuLevels?: string[];
  /** The VMs whose run/ claim it holds. */
  vms: string[];
  /** Whether a ClusterNode declares it. */
  declared: boolean;
  /** `qwamos drain` marked it: placement puts nothing there. */
  drained: boolean;
}

export async function clusterNodeViews(
  client: EtcdClient,
  opts: { prefix: string; declared: readonly string[]; local?: LeaseFile; now?: number },
): Promise<{ revision: string; nodes: NodeView[] }> {
  const now = opts.now ?? Date.now();
  const { revision, nodes } = await readNodes(client, opts.prefix);
  const keys = clusterKeys(opts.prefix);
  const { owners } = await readOwners(client, keys, revision);
  const drained = drainedNodes(keys, (await client.list(keys.drains, revision)).entries);
  const vmsOf = (node: string) => [...owners.values()].filter((c) => c.node === node).map((c) => c.vm).sort();
  const views: NodeView[] = nodes.map(({ record, lease, ttl }) => {
    const local = opts.local && opts.local.node === record.name && opts.local.leaseId === lease ? opts.local : undefined;
    const lastKeepalive = local ? local.lastAckSentAt : ttl ? now - (ttl.grantedTtl - ttl.ttl) * 1000 : undefined;
    return {
      name: record.name,
      ready: ttl !== undefined,
      role: record.role,
      lease: hex(lease),
      ...(lastKeepalive !== undefined ? { lastKeepalive } : {}),
      ...(ttl ? { ttlSeconds: ttl.ttl } : {}),
      ...(record.revision !== undefined ? { revision: record.revision } : {}),
      cpus: record.capacity.cpus,
      memoryMiB: record.capacity.memoryMiB,
      labels: record.labels,
      gpuLevels: record.gpuLevels,
      vms: vmsOf(record.name),
      declared: opts.declared.includes(record.name),
      drained: drained.has(record.name),
    };
  });
  for (const name of opts.declared) {
    if (!views.some((v) => v.name === name)) views.push({ name, ready: false, vms: [], declared: true, drained: drained.has(name) });
  }
  views.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { revision, nodes: views };
}

// What a ClusterNode is in the cluster this host joined: its node key and lease in etcd (one read of every
// node at one etcd revision, src/cluster/status.ts), its drain mark, the VMs whose run/ claim it holds, and
// for this host's own node the fence its fencer recorded. Without a lease file the host joined no cluster.
import { fenceFilePath, type FenceRecord } from '../../cluster/fencer.ts';
import { readLeaseFile, type LeaseFile } from '../../cluster/membership.ts';
import { clusterNodeViews, type NodeView } from '../../cluster/status.ts';
import type { EtcdClient } from '../../drivers/etcd.ts';
import { oneLine } from '../../errors.ts';
import { processAlive } from '../../proc.ts';
import { readJsonFile } from '../../store/atomic.ts';

export type ClusterNodeActual =
  | { joined: false }
  | { joined: true; local: string; revision: string; view?: NodeView; fence?: FenceRecord }
  | { joined: true; local: string; unreachable: string };

export interface ClusterObservation {
  lease?: LeaseFile;
  fence?: FenceRecord;
}

/**
 * This host's lease file and fence record (local files only). A lease file whose daemon is gone (left by
 * a cluster run, the host now runs alone) does not count: the daemon that keeps it writes its pid there.
 */
export async function observeLocal(stateDir: string): Promise<ClusterObservation> {
  const lease = await readLeaseFile(stateDir).catch(() => undefined);
  if (!lease || !processAlive(lease.pid)) return {};
  const fence = await readJsonFile<FenceRecord>(fenceFilePath(stateDir)).catch(() => undefined);
  return { lease, ...(fence ? { fence } : {}) };
}

/** Every declared node as etcd sees it (one read for all). */
export async function observeNodes(
  clientFor: (endpoints: readonly string[]) => Promise<EtcdClient>,
  local: ClusterObservation,
  names: readonly string[],
): Promise<Map<string, ClusterNodeActual>> {
  const lease = local.lease;
  if (!lease) return new Map(names.map((n) => [n, { joined: false }]));
  try {
    const { revision, nodes } = await clusterNodeViews(await clientFor(lease.endpoints), { prefix: lease.prefix, declared: names, local: lease });
    return new Map(
      names.map((name) => {
        const view = nodes.find((v) => v.name === name);
        // The fence file is this host's: it speaks of this node only.
        const fence = name === lease.node ? local.fence : undefined;
        return [name, { joined: true, local: lease.node, revision, ...(view ? { view } : {}), ...(fence ? { fence } : {}) }];
      }),
    );
  } catch (err) {
    const unreachable = `cannot read the cluster from etcd at ${lease.endpoints.join(',')}: ${oneLine(err)}`;
    return new Map(names.map((n) => [n, { joined: true, local: lease.node, unreachable }]));
  }
}

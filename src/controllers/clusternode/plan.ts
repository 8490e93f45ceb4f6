// ClusterNode: pure plan and status. Nothing is changed on the host: the pass outcome says whether the
// node is Ready in the cluster (its lease lives) and the report carries the rest.
import { inSync, waiting, type Plan, type StatusReport, type World } from '../../engine/contract.ts';
import { hex } from '../../cluster/membership.ts';
import { vmRequestOf } from '../../cluster/placement.ts';
import type { ConditionPatch, StoredResource } from '../../store/store.ts';
import type { ClusterNodeActual } from './observe.ts';

/** How often a node that is not Ready is looked at again (ms). */
export const NOT_READY_RECHECK_MS = 5000;

export function planClusterNode(r: StoredResource<'ClusterNode'>, actual: ClusterNodeActual | undefined): Plan {
  if (!actual || !actual.joined) return inSync(); // a declaration on a single host: Ready once stored
  if ('unreachable' in actual) return { actions: [], hold: waiting('EtcdUnreachable', actual.unreachable, NOT_READY_RECHECK_MS) };
  const reason = notReadyReason(r.metadata.name, actual);
  return reason ? { actions: [], hold: waiting(reason.reason, reason.message, NOT_READY_RECHECK_MS) } : inSync();
}

function notReadyReason(name: string, actual: Extract<ClusterNodeActual, { revision: string }>): { reason: string; message: string } | undefined {
  const view = actual.view;
  if (!view?.lease) return { reason: 'NotJoined', message: `node ${name} has no key in etcd: it has not joined, or its lease expired (lost, fenced, or stopped longer than the TTL)` };
  if (!view.ready) return { reason: 'LeaseExpired', message: `node ${name}'s lease ${view.lease} is gone; its key is about to vanish` };
  return undefined;
}

/** Sum of the cpus and memory of `vms` as their VirtualMachine specs ask (VMs the world does not declare count 0). */
export function allocated(vms: readonly string[], world: World): { cpus: number; memoryMiB: number; undeclared: string[] } {
  let cpus = 0;
  let memoryMiB = 0;
  const undeclared: string[] = [];
  for (const name of vms) {
    const vm = world.get('VirtualMachine', name);
    if (!vm) {
      undeclared.push(name);
      continue;
    }
    const req = vmRequestOf(vm);
    cpus += req.cpus;
    memoryMiB += req.memoryMiB;
  }
  return { cpus, memoryMiB, undeclared };
}

export function reportClusterNode(r: StoredResource<'ClusterNode'>, actual: ClusterNodeActual | undefined, world: World): StatusReport {
  if (!actual || !actual.joined) {
    return {
      conditions: [{ type: 'Joined', status: 'False', reason: 'NoCluster', message: 'this host joined no cluster (controller without --node/--etcd): the node is a declaration only' }],
      fields: { cluster: null },
    };
  }
  if ('unreachable' in actual) {
    return { conditions: [{ type: 'Joined', status: 'Unknown', reason: 'EtcdUnreachable', message: actual.unreachable }] };
  }
  const view = actual.view;
  // The fencer's record outlives the fence: once the node rejoined under a new lease it is history.
  const fence = actual.fence && (!view?.lease || view.lease === hex(actual.fence.leaseId)) ? actual.fence : undefined;
  const pastFence = actual.fence && !fence ? actual.fence : undefined;
  const vms = view?.vms ?? [];
  const used = allocated(vms, world);
  const conditions: ConditionPatch[] = [
    view?.lease
      ? { type: 'Joined', status: 'True', reason: view.ready ? 'LeaseAlive' : 'LeaseExpired', message: `lease ${view.lease}` }
      : { type: 'Joined', status: 'False', reason: 'NotJoined', message: `no node key in etcd${actual.local === r.metadata.name ? '' : ` (this host is node ${actual.local})`}` },
    fence
      ? { type: 'Fenced', status: 'True', reason: 'LeaseLost', message: `since ${fence.since}: ${fence.reason}` }
      : {
          type: 'Fenced',
          status: 'False',
          reason: actual.local !== r.metadata.name ? 'NotThisHost' : pastFence ? 'Rejoined' : 'NotFenced',
          message: pastFence ? `fenced ${pastFence.since} (${pastFence.reason}); rejoined under a new lease` : '',
        },
    view?.drained
      ? { type: 'SchedulingDisabled', status: 'True', reason: 'Drained', message: `qwamos drain ${r.metadata.name}: placement puts no VM here` }
      : { type: 'SchedulingDisabled', status: 'False', reason: 'Schedulable', message: '' },
  ];
  return {
    conditions,
    fields: {
      cluster: { etcdRevision: actual.revision, thisHost: actual.local === r.metadata.name },
      lease: view?.lease ?? null,
      lastKeepalive: view?.lastKeepalive !== undefined ? new Date(view.lastKeepalive).toISOString() : null,
      leaseTtlSeconds: view?.ttlSeconds ?? null,
      // A fence is this host's record of its own node (the lease it guarded, since when, why, what died).
      fenced: fence ? { lease: hex(fence.leaseId), since: fence.since, reason: fence.reason, killed: fence.killed.map((k) => k.vm) } : null,
      drained: view?.drained ?? false,
      revision: view?.revision ?? null,
      allocated: { cpus: used.cpus, memory: `${used.memoryMiB}Mi` },
      vms,
      ...(pastFence ? { lastFence: { lease: hex(pastFence.leaseId), since: pastFence.since, reason: pastFence.reason } } : {}),
      ...(used.undeclared.length ? { undeclaredVms: used.undeclared } : {}),
    },
  };
}

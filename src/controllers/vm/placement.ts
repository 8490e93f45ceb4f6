// The VM controller in a cluster: where each VM runs (deterministic placement on the node set and run/
// claims read at one etcd revision), whether this node may start it (it holds run/<vm> under its live
// lease), failover after a node is lost (only the placement winner, only after the old claim has been
// gone for the grace period, only with failover: Restart), and the status that says so. Without a
// cluster (no --etcd) none of this runs: every VM of the store runs here, as on one host.
//   observeCluster  facts, gathered once per observe batch (the snapshot, placement, the fence record)
//   gateCluster     pure: what the cluster allows this node to do with a VM, before the local plan
//   clusterReport   pure: Placed, Unschedulable, FailedOver, Fenced, node and fencing token
import { stalled, waiting, type Plan, type StatusReport, type World } from '../../engine/contract.ts';
import { keyOf } from '../../resources/keys.ts';
import type { StoredResource } from '../../store/store.ts';
import { fenceFilePath, type FenceRecord } from '../../cluster/fencer.ts';
import type { RunClaim } from '../../cluster/ownership.ts';
import { vmRequestOf, type Placement } from '../../cluster/placement.ts';
import { placeOn } from '../../cluster/snapshot.ts';
import type { ClusterVmView, VmRunRecord } from '../../cluster/view.ts';
import type { VmPaths } from './context.ts';
import { gpuLevelOf } from './launch.ts';
import { readJson } from './observe.ts';
import type { VmAction } from './plan.ts';

/** What the cluster says about one VM, as this node saw it at one etcd revision. */
export interface VmClusterFacts {
  /** This node. */
  node: string;
  /** This node's lease while its deadline has not passed (undefined: it may start nothing). */
  lease?: string;
  /** The etcd revision of the snapshot. */
  revision: string;
  /** Placement of the VM on that snapshot (same on every node). */
  placement?: Placement;
  /** run/<vm> at that revision. */
  holder?: RunClaim;
  /** Since when run/<vm> has been absent as this node knows it (epoch ms): the watch saw it go, else the view's start. */
  unclaimedSince?: number;
  /** The node that held run/<vm> when this node saw it vanish. */
  vanishedFrom?: string;
  /** qwamos/vms/<vm>: where it last ran. */
  lastRun?: VmRunRecord;
  /** This node's fencer killed it (fenced.json). */
  fence?: { since: string; reason: string };
  graceMs: number;
}

/** The cluster facts of these VMs: one snapshot, one placement of every desired VM, one fence record. */
export async function observeCluster(view: ClusterVmView, stateDir: string, resources: StoredResource<'VirtualMachine'>[], world: World): Promise<Map<string, VmClusterFacts>> {
  const [state, fence] = await Promise.all([view.current(), readJson<FenceRecord>(fenceFilePath(stateDir))]);
  const lease = view.liveLease();
  const placement = placeOn(state.snapshot, world.list('VirtualMachine').map((r) => vmRequestOf(r)));
  const out = new Map<string, VmClusterFacts>();
  for (const r of resources) {
    const vm = r.metadata.name;
    const holder = state.snapshot.claims.get(vm);
    const vanished = state.vanished.get(vm);
    const placed = placement.placements.get(vm);
    const lastRun = state.runs.get(vm);
    out.set(vm, {
      node: view.node,
      ...(lease ? { lease } : {}),
      revision: state.snapshot.revision,
      ...(placed ? { placement: placed } : {}),
      ...(holder ? { holder } : { unclaimedSince: vanished?.at ?? state.since }),
      ...(!holder && vanished ? { vanishedFrom: vanished.from } : {}),
      ...(lastRun ? { lastRun } : {}),
      ...(fence?.killed?.some((k) => k.vm === vm) ? { fence: { since: fence.since, reason: fence.reason } } : {}),
      graceMs: view.graceMs,
    });
  }
  return out;
}

/** failover as declared, else the default: Never for a VM pinned to a node or with a passthrough GPU. */
export function failoverOf(r: StoredResource<'VirtualMachine'>, world: World): 'Restart' | 'Never' {
  if (r.spec.failover) return r.spec.failover;
  if (r.spec.placement?.node) return 'Never';
  return gpuLevelOf(r.spec, world)?.device === 'vfio' ? 'Never' : 'Restart';
}

/** Whether this node holds the VM's claim under its live lease. */
export function holdsClaim(c: VmClusterFacts): boolean {
  return c.holder !== undefined && c.lease !== undefined && c.holder.node === c.node && c.holder.lease === c.lease;
}

/** A VM this node's failover: Never forbids to start (it last ran on another node, which lost it). */
export function lostElsewhere(c: VmClusterFacts): string | undefined {
  const last = c.lastRun;
  return !c.holder && last && !last.stoppedAt && last.node !== c.node ? last.node : undefined;
}

const RECHECK_MS = 1000;
/** Unschedulable or kept down: the watch re-checks at once when the cluster changes; this is a backstop. */
const UNPLACED_RECHECK_MS = 15_000;

/**
 * What the cluster allows, before the local plan. `plan`: the plan for this VM, final. `mayStart`: go on
 * with the local plan; a start needs `claim` first when this node does not hold run/<vm> yet, and carries
 * the token it holds. Pure.
 */
export type ClusterGate =
  | { kind: 'plan'; plan: Plan<VmAction> }
  | { kind: 'local'; claimFirst: boolean; token?: string; failedOverFrom?: { node: string; vanishedAt?: number } };

export function gateCluster(
  r: StoredResource<'VirtualMachine'>,
  c: VmClusterFacts,
  local: { live: boolean; paths: VmPaths; pid?: number; wantRunning: boolean },
  world: World,
): ClusterGate {
  const key = keyOf(r);
  const name = r.metadata.name;
  const mine = holdsClaim(c);
  const stop = (why: string): VmAction => ({ type: 'stop', resource: key, paths: local.paths, name, graceful: false, describe: `stop QEMU of ${name}${local.pid ? ` (pid ${local.pid})` : ''}: ${why}` });
  const release = (why: string): VmAction => ({ type: 'release-claim', resource: key, name, token: c.holder!.token, describe: `release run/${name} (token ${c.holder!.token}): ${why}` });

  // A copy running here without this node's claim may be running elsewhere too: stop it now.
  if (local.live && !mine) {
    const why = c.lease === undefined ? `node ${c.node} has no live lease` : c.holder ? `run/${name} is held by node ${c.holder.node}` : `node ${c.node} does not hold run/${name}`;
    return { kind: 'plan', plan: { actions: [stop(why)], hold: waiting('NotOwner', `stopped ${name} here: ${why}`, RECHECK_MS) } };
  }
  const p = c.placement;
  if (!p) return { kind: 'plan', plan: { actions: [], hold: waiting('NotPlaced', `${name} is not placed yet`, RECHECK_MS) } };
  if ('unschedulable' in p || p.node !== c.node) {
    // Stop here first, then give the claim up: the winner starts it only once run/<vm> is gone.
    const where = 'unschedulable' in p ? `unschedulable: ${p.unschedulable}` : `placed on node ${p.node}`;
    const actions: VmAction[] = [];
    if (local.live) actions.push(stop(where));
    if (mine) actions.push(release(where));
    if ('unschedulable' in p) return { kind: 'plan', plan: { actions, hold: waiting('Unschedulable', p.unschedulable, UNPLACED_RECHECK_MS) } };
    return { kind: 'plan', plan: { actions } };
  }
  // Placed here.
  if (mine) return { kind: 'local', claimFirst: false, token: c.holder!.token };
  if (!local.wantRunning) return { kind: 'local', claimFirst: false };
  if (c.holder) return { kind: 'plan', plan: { actions: [], hold: waiting('WaitingForRelease', `placed on node ${c.node}; run/${name} is still held by node ${c.holder.node}`, RECHECK_MS) } };
  if (c.lease === undefined) return { kind: 'plan', plan: { actions: [], hold: waiting('NoLease', `node ${c.node} has no live lease: it starts nothing`, RECHECK_MS) } };
  const lostOn = lostElsewhere(c);
  if (lostOn && failoverOf(r, world) === 'Never') {
    return { kind: 'plan', plan: { actions: [], hold: stalled('FailoverNever', `node ${lostOn} running ${name} was lost; failover: Never keeps it down (set failover: Restart, or delete qwamos/vms/${name} in etcd, to start it here)`) } };
  }
  const gone = world.now - (c.unclaimedSince ?? world.now);
  if (gone < c.graceMs) {
    const left = c.graceMs - gone;
    return { kind: 'plan', plan: { actions: [], hold: waiting('FailoverGrace', `run/${name} has been free for ${gone} ms; claiming after the ${c.graceMs} ms grace`, left) } };
  }
  return {
    kind: 'local',
    claimFirst: true,
    ...(lostOn ? { failedOverFrom: { node: lostOn, ...(c.vanishedFrom === lostOn && c.unclaimedSince !== undefined ? { vanishedAt: c.unclaimedSince } : {}) } } : {}),
  };
}

/** Conditions and fields of a VM in a cluster. Pure. */
export function clusterReport(r: StoredResource<'VirtualMachine'>, c: VmClusterFacts, world: World, launched: { startedAt?: string; failedOver?: { from: string; at: string; gapMs?: number } } | undefined): StatusReport {
  const p = c.placement;
  const placedOn = p && 'node' in p ? p.node : undefined;
  const runsOn = c.holder?.node;
  const failedOver = launched?.failedOver;
  const fenced = c.fence && (!launched?.startedAt || Date.parse(c.fence.since) >= Date.parse(launched.startedAt)) ? c.fence : undefined;
  const lostOn = lostElsewhere(c);
  return {
    conditions: [
      placedOn
        ? { type: 'Placed', status: 'True', reason: placedOn === c.node ? 'PlacedHere' : 'PlacedElsewhere', message: `node ${placedOn} (at etcd revision ${c.revision})` }
        : { type: 'Placed', status: 'False', reason: p ? 'Unschedulable' : 'NotPlaced', message: p && 'unschedulable' in p ? p.unschedulable : '' },
      p && 'unschedulable' in p
        ? { type: 'Unschedulable', status: 'True', reason: 'NoNodeFits', message: p.unschedulable }
        : { type: 'Unschedulable', status: 'False', reason: 'Placed', message: '' },
      failedOver && runsOn === c.node
        ? { type: 'FailedOver', status: 'True', reason: 'NodeLost', message: `from node ${failedOver.from} at ${failedOver.at}${failedOver.gapMs !== undefined ? `, ${failedOver.gapMs} ms after its claim vanished` : ''}` }
        : lostOn && failoverOf(r, world) === 'Never'
          ? { type: 'FailedOver', status: 'False', reason: 'FailoverNever', message: `node ${lostOn} was lost; failover: Never keeps ${r.metadata.name} down` }
          : { type: 'FailedOver', status: 'False', reason: 'NotFailedOver', message: '' },
      fenced
        ? { type: 'Fenced', status: 'True', reason: 'LeaseLost', message: `killed by this node's fencer at ${fenced.since}: ${fenced.reason}` }
        : { type: 'Fenced', status: 'False', reason: 'NotFenced', message: '' },
    ],
    fields: {
      node: runsOn ?? null,
      fencingToken: c.holder?.token ?? null,
      placedOn: placedOn ?? null,
      ...(failedOver && runsOn === c.node ? { failedOver } : {}),
    },
  };
}

// Plan: pure, from the resource, what observe saw and the world to the actions to take now, and how the
// pass ends when it cannot go further (a typed hold). The launch spec is rendered here (renderLaunch).
import path from 'node:path';
import { stalled, waiting, type Action, type Plan, type World } from '../../engine/contract.ts';
import { keyOf } from '../../resources/keys.ts';
import type { QemuSpec } from '../../drivers/qemu.ts';
import type { StoredResource } from '../../store/store.ts';
import type { VmContext, VmPaths } from './context.ts';
import { renderLaunch, routeOf, gpuLevelOf } from './launch.ts';
import type { VmActual } from './observe.ts';
import { gateCluster, holdsClaim } from './placement.ts';

export type VmAction =
  | (Action & { type: 'create-disk'; path: string; sizeMiB: number; backing?: string })
  | (Action & { type: 'start'; spec: QemuSpec; hash: string; generation: number; netns?: string; tapVm?: string; paths: VmPaths; cluster?: StartInCluster })
  | (Action & { type: 'stop'; paths: VmPaths; name: string; graceful: boolean })
  | (Action & { type: 'adopt'; paths: VmPaths; name: string; pid: number })
  | (Action & { type: 'pause' | 'resume'; paths: VmPaths })
  | (Action & { type: 'remove-device'; paths: VmPaths; id: string })
  | (Action & { type: 'record-crash'; paths: VmPaths })
  /** QEMU exited by itself (clean exit): close its ledger entry. */
  | (Action & { type: 'record-exit'; paths: VmPaths; name: string })
  /** Cluster: take run/<vm> (only if absent, only under this node's live lease). */
  | (Action & { type: 'claim'; name: string })
  /** Cluster: mark qwamos/vms/<vm> stopped and delete run/<vm>, both guarded by the token. */
  | (Action & { type: 'release-claim'; name: string; token: string })
  | (Action & { type: 'plug-tap'; tapVm: string })
  | (Action & { type: 'clean-up'; paths: VmPaths; name: string; tapVm?: string; disks: string[] });

/**
 * A start in a cluster: apply re-checks in etcd, right before QEMU is launched, that this node holds
 * run/<vm> with this token (or the one the `claim` before it got) under its live lease.
 */
export interface StartInCluster {
  token?: string;
  /** It ran on this node before that node was lost (for FailedOver). */
  failedOverFrom?: { node: string; vanishedAt?: number };
}

/** Backoff between restarts of a VM that keeps dying: 1 s, 2 s, 4 s ... up to 5 min. */
export function crashBackoffMs(crashes: number): number {
  return Math.min(300_000, 1000 * 2 ** Math.max(0, crashes - 1));
}

/** How long to wait for QMP to answer again before deciding anything that depends on the run state. */
const STATUS_RECHECK_MS = 2000;

export function planVm(ctx: VmContext, r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined, world: World): Plan<VmAction> {
  const c = actual?.cluster;
  if (actual?.clusterNodeOutside && !c) {
    // This state dir is a cluster node's, reconciled without the cluster (an in-process `apply`, a daemon
    // without --etcd): starting a VM here could run a second copy of one another node runs.
    const local = planOnHost(ctx, r, actual, world);
    if (!local.actions.some((a) => a.type === 'start')) return local;
    const node = actual.clusterNodeOutside;
    return {
      actions: local.actions.filter((a) => a.type !== 'start' && a.type !== 'create-disk'),
      hold: stalled('ClusterNodeWithoutCluster', `${r.metadata.name} is not started: this host is cluster node ${node} (its lease file is in the state directory); VMs start only under \`qwamos controller --node ${node} --etcd URL\` (remove cluster/lease.json to run as one host again)`),
    };
  }
  if (!actual || !c) return planOnHost(ctx, r, actual, world);
  const key = keyOf(r);
  const name = r.metadata.name;
  const running = actual.proc.state === 'running';
  const live = running || actual.stray !== undefined;
  if (r.deletionRequestedAt) {
    const local = planOnHost(ctx, r, actual, world);
    // Stopped and cleaned up here first, then the claim goes.
    if (!holdsClaim(c)) return local;
    return { ...local, actions: [...local.actions, { type: 'release-claim', resource: key, name, token: c.holder!.token, describe: `release run/${name} (token ${c.holder!.token}): deleted` }] };
  }
  const adopt: VmAction[] = !running && actual.stray ? [{ type: 'adopt', resource: key, paths: actual.paths, name, pid: actual.stray.pid, describe: `adopt QEMU of ${name} (pid ${actual.stray.pid}, found by its command line): rewrite its pidfile` }] : [];
  const pid = actual.stray?.pid ?? (actual.proc.state === 'running' ? actual.proc.pid : undefined);
  const gate = gateCluster(r, c, { live, paths: actual.paths, ...(pid ? { pid } : {}), wantRunning: wantsRunning(r, actual) }, world);
  if (gate.kind === 'plan') return { ...gate.plan, actions: [...adopt, ...gate.plan.actions] };
  const local = planOnHost(ctx, r, actual, world);
  const startAt = local.actions.findIndex((a) => a.type === 'start' || a.type === 'create-disk');
  if (startAt < 0) return local;
  const inCluster: StartInCluster = { ...(gate.token ? { token: gate.token } : {}), ...(gate.failedOverFrom ? { failedOverFrom: gate.failedOverFrom } : {}) };
  const actions = local.actions.map((a): VmAction => (a.type === 'start' ? { ...a, cluster: inCluster } : a));
  if (gate.claimFirst) {
    const claim: VmAction = { type: 'claim', resource: key, name, describe: `claim run/${name} for node ${c.node}${gate.failedOverFrom ? ` (failover from node ${gate.failedOverFrom.node})` : ''}` };
    actions.splice(startAt, 0, claim);
  }
  return { ...local, actions };
}

/** runStrategy, with a clean exit of RerunOnFailure counted: whether the VM should run. */
function wantsRunning(r: StoredResource<'VirtualMachine'>, actual: VmActual): boolean {
  const strategy = r.spec.runStrategy ?? 'Running';
  const cleanExit = actual.proc.state === 'none' && actual.launched !== undefined && !actual.launched.stoppedByController;
  return strategy === 'Running' || strategy === 'Paused' || (strategy === 'RerunOnFailure' && !cleanExit);
}

/** The plan of one host: the VM runs here (no cluster, or the cluster gate allowed it). */
function planOnHost(ctx: VmContext, r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined, world: World): Plan<VmAction> {
  const key = keyOf(r);
  const name = r.metadata.name;
  const spec = r.spec;
  if (!actual) return { actions: [], hold: waiting('NotObserved', `${name} was not observed yet`, 1000) };
  const paths = actual.paths;
  const running = actual.proc.state === 'running';
  const tapVm = routeOf(spec, world)?.vm;
  // A live QEMU of this VM behind a missing or corrupt pidfile: adopt it before anything else.
  const adopt: VmAction[] = !running && actual.stray ? [{ type: 'adopt', resource: key, paths, name, pid: actual.stray.pid, describe: `adopt QEMU of ${name} (pid ${actual.stray.pid}, found by its command line): rewrite its pidfile` }] : [];
  const live = running || actual.stray !== undefined;

  if (r.deletionRequestedAt) {
    const acts: VmAction[] = [...adopt];
    if (live) acts.push({ type: 'stop', resource: key, paths, name, graceful: false, describe: `stop QEMU of ${name} (pid ${actual.stray?.pid ?? (actual.proc.state === 'running' ? actual.proc.pid : '?')})` });
    const deleteDisks = spec.deletionPolicy === 'Delete';
    const unsafe = deleteDisks ? actual.disks.find((d) => d.problem) : undefined;
    if (unsafe) return { actions: acts, hold: stalled('ImagePathEscape', `disk ${unsafe.name} is not deleted: ${unsafe.problem}`) };
    const disks = deleteDisks ? actual.disks.filter((d) => d.exists).map((d) => d.path) : [];
    if (live || actual.leftovers || disks.length) {
      acts.push({ type: 'clean-up', resource: key, paths, name, ...(tapVm ? { tapVm } : {}), disks, describe: `remove ${name}'s runtime files${disks.length ? ` and disks ${disks.map((d) => path.basename(d)).join(', ')}` : deleteDisks ? '' : ' (disks kept: deletionPolicy Retain)'}` });
    }
    return { actions: acts };
  }
  if (adopt.length) return { actions: adopt };

  const strategy = spec.runStrategy ?? 'Running';
  // QEMU removes its pidfile when it exits cleanly; a pidfile whose process is gone means it died.
  const crashed = actual.proc.state === 'dead';
  const wantRunning = wantsRunning(r, actual);

  if (!running) {
    // Gone by itself (no pidfile, nothing by its command line): its ledger entry is closed.
    const exited: VmAction[] = actual.proc.state === 'none' && actual.launched?.ledgerOpen ? [{ type: 'record-exit', resource: key, paths, name, describe: `record that QEMU of ${name} exited` }] : [];
    if (!wantRunning) return { actions: exited };
    const acts: VmAction[] = [...exited];
    if (actual.proc.state === 'dead') acts.push({ type: 'record-crash', resource: key, paths, describe: `record that QEMU of ${name} died (pid ${actual.proc.pid}: ${actual.proc.why})` });
    const launch = renderLaunch(ctx, r, actual, world);
    if (!launch.ok) return { actions: acts, hold: launch.hold };
    if (crashed && actual.launched?.lastCrashAt) {
      const wait = crashBackoffMs(actual.launched.crashes) - (world.now - Date.parse(actual.launched.lastCrashAt));
      if (wait > 0) return { actions: acts, hold: waiting('CrashLoop', `QEMU of ${name} keeps dying: next start in ${Math.ceil(wait / 1000)}s`, wait) };
    }
    return { actions: [...acts, ...startActions(r, actual, launch, tapVm)] };
  }

  if (!wantRunning) return { actions: [{ type: 'stop', resource: key, paths, name, graceful: true, describe: `shut down ${name} (ACPI power button, then quit)` }] };
  // Running or paused cannot be told without QMP: decide nothing that depends on it.
  if (actual.status === 'unknown') return { actions: [], hold: waiting('StatusUnknown', `QMP of ${name} does not answer query-status`, STATUS_RECHECK_MS) };

  const acts: VmAction[] = [];
  const launch = renderLaunch(ctx, r, actual, world);
  if (strategy === 'Paused' && actual.status === 'running') acts.push({ type: 'pause', resource: key, paths, describe: `pause ${name}` });
  if (strategy !== 'Paused' && actual.status === 'paused') acts.push({ type: 'resume', resource: key, paths, describe: `resume ${name}` });
  if (tapVm && actual.tap && !actual.tap.exists && launch.ok) {
    // The netns was recreated under a running QEMU: its NIC is gone with the old tap. Restart.
    return { actions: [{ type: 'stop', resource: key, paths, name, graceful: false, describe: `restart ${name}: its tap went away with its netns` }, ...startActions(r, actual, launch, tapVm)] };
  }
  if (tapVm && actual.tap?.exists && !actual.tap.plugged) acts.push({ type: 'plug-tap', resource: key, tapVm, describe: `plug ${name}'s tap into its bridge` });
  for (const id of foreignGpus(r, actual, world)) acts.push({ type: 'remove-device', resource: key, paths, id, describe: `remove GPU device ${id} that ${name}'s trust level does not give it` });
  if (spec.updatePolicy === 'Restart' && launch.ok && actual.launched && actual.launched.specHash !== launch.hash) {
    acts.push({ type: 'stop', resource: key, paths, name, graceful: true, describe: `restart ${name} for its new spec: shut down` });
    acts.push(...startActions(r, actual, launch, tapVm));
  }
  return { actions: acts };
}

/** GPU devices in the running VM that its trust level does not give it (added by hand). */
export function foreignGpus(r: StoredResource<'VirtualMachine'>, actual: VmActual, world: World): string[] {
  const device = gpuLevelOf(r.spec, world)?.device;
  return (actual.gpuDevices ?? []).filter((id) => !(device && device !== 'none' && id === 'gpu0'));
}

function startActions(r: StoredResource<'VirtualMachine'>, actual: VmActual, launch: { spec: QemuSpec; hash: string; netns?: string }, tapVm?: string): VmAction[] {
  const key = keyOf(r);
  const acts: VmAction[] = [];
  for (const d of actual.disks) {
    if (!d.exists) acts.push({ type: 'create-disk', resource: key, path: d.path, sizeMiB: d.sizeMiB, ...(d.backing ? { backing: d.backing } : {}), describe: `create disk ${path.basename(d.path)} (${d.sizeMiB}Mi${d.backing ? `, over ${path.basename(d.backing)}` : ''})` });
  }
  acts.push({
    type: 'start',
    resource: key,
    spec: launch.spec,
    hash: launch.hash,
    generation: r.generation,
    paths: actual.paths,
    ...(launch.netns ? { netns: launch.netns } : {}),
    ...(tapVm ? { tapVm } : {}),
    describe: `start QEMU ${launch.spec.machine}/${launch.spec.accel} for ${r.metadata.name}${launch.netns ? ` in netns ${launch.netns}` : ''}${launch.spec.startPaused ? ' (paused)' : ''}`,
  });
  return acts;
}

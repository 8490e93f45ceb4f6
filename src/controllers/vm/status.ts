// What `drift` records and `get`/`describe` show: field differences and the VM's status report. Pure.
import path from 'node:path';
import type { FieldDiff, StatusReport, World } from '../../engine/contract.ts';
import type { StoredResource } from '../../store/store.ts';
import type { VmContext } from './context.ts';
import { renderLaunch } from './launch.ts';
import type { VmActual } from './observe.ts';
import { foreignGpus } from './plan.ts';
import { clusterReport } from './placement.ts';

export function diffVm(r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined, world: World): FieldDiff[] {
  const strategy = r.spec.runStrategy ?? 'Running';
  const running = actual?.proc.state === 'running';
  const state = running ? (actual?.status ?? 'unknown') : actual?.proc.state === 'dead' ? `dead (pid ${actual.proc.pid} gone)` : 'stopped';
  const want = strategy === 'Stopped' ? 'stopped' : strategy === 'Paused' ? 'paused' : 'running';
  const diffs: FieldDiff[] = [];
  const placed = actual?.cluster?.placement;
  if (actual?.cluster && !(placed && 'node' in placed && placed.node === actual.cluster.node)) {
    // Placed on another node (or nowhere): it must not run here, whatever its runStrategy.
    const where = placed && 'node' in placed ? `runs on node ${placed.node}` : 'unschedulable';
    if (running || actual.stray) diffs.push({ field: 'state', desired: `not running on node ${actual.cluster.node} (${where})`, actual: 'running here' });
    return diffs;
  }
  if (state !== 'unknown' && want !== state && !(strategy === 'RerunOnFailure' && state === 'stopped')) diffs.push({ field: 'state', desired: want, actual: state });
  if (running && actual?.tap && !actual.tap.plugged) diffs.push({ field: 'tap', desired: 'plugged into the bridge', actual: actual.tap.exists ? 'unplugged' : 'gone' });
  const extra = actual ? foreignGpus(r, actual, world) : [];
  if (extra.length) diffs.push({ field: 'gpu', desired: r.spec.gpu?.trustLevel ?? '(none)', actual: `extra device ${extra.join(', ')}` });
  return diffs;
}

export function reportVm(ctx: VmContext, r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined, world: World): StatusReport {
  if (!actual) return {};
  const local = reportOnHost(ctx, r, actual, world);
  if (!actual.cluster) return local;
  const cluster = clusterReport(r, actual.cluster, world, actual.launched);
  return { conditions: [...(local.conditions ?? []), ...(cluster.conditions ?? [])], fields: { ...local.fields, ...cluster.fields } };
}

function reportOnHost(ctx: VmContext, r: StoredResource<'VirtualMachine'>, actual: VmActual, world: World): StatusReport {
  const running = actual.proc.state === 'running';
  const launch = renderLaunch(ctx, r, actual, world);
  const restartRequired = running && launch.ok && actual.launched !== undefined && actual.launched.specHash !== launch.hash && r.spec.updatePolicy !== 'Restart';
  const gpuProblem = !launch.ok && launch.hold.reason === 'GpuUnavailable' ? launch.hold.message : undefined;
  return {
    conditions: [
      restartRequired
        ? { type: 'RestartRequired', status: 'True', reason: 'SpecChanged', message: 'the spec changed in a way that needs a restart; restart the VM (or set updatePolicy: Restart)' }
        : { type: 'RestartRequired', status: 'False', reason: 'UpToDate', message: '' },
      gpuProblem
        ? { type: 'GpuUnavailable', status: 'True', reason: 'HostCannotProvide', message: gpuProblem }
        : { type: 'GpuUnavailable', status: 'False', reason: 'Provided', message: r.spec.gpu?.trustLevel ?? '' },
      { type: 'Paused', status: actual.status === 'paused' ? 'True' : 'False', reason: actual.status === 'paused' ? 'PausedByStrategy' : 'NotPaused', message: '' },
    ],
    fields: {
      pid: actual.proc.state === 'running' ? actual.proc.pid : null,
      state: running ? (actual.status ?? 'unknown') : 'stopped',
      runDir: actual.paths.runDir,
      qmpSocket: path.join(actual.paths.runDir, 'qmp.sock'),
      serialLog: path.join(actual.paths.runDir, 'serial.log'),
      ...(launch.ok ? { machine: launch.spec.machine, accel: launch.spec.accel, netns: launch.netns ?? null } : {}),
      startedAt: running ? (actual.launched?.startedAt ?? null) : null,
      crashes: actual.launched?.crashes ?? 0,
    },
  };
}

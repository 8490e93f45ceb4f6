// The VirtualMachine controller's plan is pure: from a resource and what observe saw, the actions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VmController, type VmActual } from '../../src/controllers/vm.ts';
import { makeWorld, type Action, type Plan } from '../../src/engine/contract.ts';
import type { StoredResource } from '../../src/store/store.ts';

const route: StoredResource<'Route'> = {
  apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name: 'web' },
  spec: { vm: 'web', mode: 'direct', address: '10.8.0.4/24', gateway: '10.8.0.1' },
  source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '',
};
const controller = new VmController({ layout: { prefix: 'qw' }, stateDir: '/state', imageRoot: '/images', stopTimeoutMs: 1000 });
const world = makeWorld([route]);
const vm = (spec: Record<string, unknown>): StoredResource<'VirtualMachine'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'VirtualMachine', metadata: { name: 'web' },
  spec: { boot: { kernel: 'guest/vmlinux' }, network: { route: 'web' }, ...spec },
  source: { path: '/m', digest: 'd' }, generation: 2, appliedAt: '',
});
const want = { spec: { name: 'web', machine: 'microvm', accel: 'tcg', cpus: 1, memoryMiB: 256, disks: [], runDir: '/state/vms/web' }, hash: 'h2', netns: 'qw-web' } as unknown as VmActual['want'];
const actual = (over: Partial<VmActual> = {}): VmActual => ({
  now: Date.parse('2026-11-25T12:00:00Z'), runDir: '/state/vms/web', disks: [], foreignGpus: [], netnsExists: true,
  want, tap: { exists: true, plugged: true }, ...over,
});
const running = { proc: { pid: 42, alive: true, ours: true }, status: 'running', launched: { specHash: 'h2', generation: 2, startedAt: '', crashes: 0 } };
/** The plan as a list: its actions, then its hold (if any) as a 'blocked' step, for terse assertions. */
const planOf = (r: StoredResource<'VirtualMachine'>, a: VmActual | undefined, deleting = false): (Action & { terminal?: boolean })[] => {
  const p: Plan = controller.plan(deleting ? { ...r, deletionRequestedAt: '2026-11-25T12:00:00Z' } : r, a, world);
  return [...p.actions, ...(p.hold ? [{ type: 'blocked', resource: p.actions[0]?.resource ?? 'VirtualMachine/web', describe: p.hold.message, terminal: p.hold.type === 'Stalled' } as Action & { terminal: boolean }] : [])];
};
const types = (r: StoredResource<'VirtualMachine'>, a: VmActual | undefined, deleting = false) => planOf(r, a, deleting).map((x) => x.type);

test('a Running VM that is not running is started (disks created first); in sync when running', () => {
  const a = actual({ disks: [{ name: 'data', path: '/images/disks/web/data.qcow2', exists: false, sizeMiB: 64 }] });
  assert.deepEqual(types(vm({}), a), ['create-disk', 'start']);
  assert.deepEqual(types(vm({}), actual(running)), []);
});

test('a dead QEMU (pidfile left) is recorded and restarted; a crash loop waits', () => {
  const dead = actual({ proc: { pid: 42, alive: false, ours: false }, launched: { specHash: 'h2', generation: 2, startedAt: '', crashes: 0 } });
  assert.deepEqual(types(vm({}), dead), ['record-crash', 'start']);
  const looping = actual({ proc: { pid: 43, alive: false, ours: false }, launched: { specHash: 'h2', generation: 2, startedAt: '', crashes: 4, lastCrashAt: '2026-11-25T11:59:58Z' } });
  const plan = planOf(vm({}), looping, false);
  assert.deepEqual(plan.map((x) => x.type), ['record-crash', 'blocked']);
  assert.match(plan[1]!.describe, /next start in \d+s/);
});

test('RerunOnFailure restarts a crash but not a clean exit; a stop by the controller is not a clean exit', () => {
  const cleanExit = actual({ launched: { specHash: 'h2', generation: 2, startedAt: '', crashes: 0 } });
  assert.deepEqual(types(vm({ runStrategy: 'RerunOnFailure' }), cleanExit), []);
  const stoppedByUs = actual({ launched: { specHash: 'h2', generation: 2, startedAt: '', crashes: 0, stoppedByController: true } });
  assert.deepEqual(types(vm({ runStrategy: 'RerunOnFailure' }), stoppedByUs), ['start']);
  assert.deepEqual(types(vm({ runStrategy: 'Running' }), cleanExit), ['start']);
});

test('Stopped shuts a running VM down gracefully; Paused pauses; a paused Running VM is resumed', () => {
  const stop = planOf(vm({ runStrategy: 'Stopped' }), actual(running), false);
  assert.deepEqual(stop.map((x) => [x.type, (x as { graceful?: boolean }).graceful]), [['stop', true]]);
  assert.deepEqual(types(vm({ runStrategy: 'Paused' }), actual(running)), ['pause']);
  assert.deepEqual(types(vm({}), actual({ ...running, status: 'paused' })), ['resume']);
  assert.deepEqual(types(vm({ runStrategy: 'Stopped' }), actual()), []);
});

test('what cannot be launched blocks the start, terminal or not as observe said', () => {
  const gpu = planOf(vm({}), actual({ want: { problem: 'GPU trust level medium (virgl) cannot be provided: no render node', condition: 'GpuUnavailable', terminal: true } }), false);
  assert.deepEqual(gpu.map((x) => [x.type, (x as { terminal?: boolean }).terminal]), [['blocked', true]]);
  const missing = planOf(vm({}), actual({ want: { problem: 'boot.kernel not found', terminal: false } }), false);
  assert.equal((missing[0] as { terminal?: boolean }).terminal, false);
});

test('a foreign GPU device is removed; an unplugged tap is plugged; a vanished tap restarts the VM', () => {
  assert.deepEqual(types(vm({}), actual({ ...running, foreignGpus: ['gpu-by-hand'] })), ['remove-device']);
  assert.deepEqual(types(vm({}), actual({ ...running, tap: { exists: true, plugged: false } })), ['plug-tap']);
  assert.deepEqual(types(vm({}), actual({ ...running, tap: { exists: false, plugged: false } })), ['stop', 'start']);
});

test('a changed spec: RestartRequired under updatePolicy Manual, a restart under Restart', () => {
  const old = { ...running, launched: { ...running.launched, specHash: 'h1' } };
  assert.deepEqual(types(vm({}), actual(old)), []);
  const report = controller.report(vm({}), actual(old));
  assert.equal(report.conditions?.find((c) => c.type === 'RestartRequired')?.status, 'True');
  assert.deepEqual(types(vm({ updatePolicy: 'Restart' }), actual(old)), ['stop', 'start']);
  assert.equal(controller.report(vm({}), actual(running)).conditions?.find((c) => c.type === 'RestartRequired')?.status, 'False');
});

test('deletion stops QEMU, removes runtime files, and the disks only under deletionPolicy Delete', () => {
  const disks = [{ name: 'data', path: '/images/disks/web/data.qcow2', exists: true, sizeMiB: 64 }];
  const keep = planOf(vm({}), actual({ ...running, disks }), true);
  assert.deepEqual(keep.map((x) => x.type), ['stop', 'clean-up']);
  assert.deepEqual((keep[1] as unknown as { disks: string[] }).disks, []);
  const del = planOf(vm({ deletionPolicy: 'Delete' }), actual({ ...running, disks }), true);
  assert.deepEqual((del[1] as unknown as { disks: string[] }).disks, ['/images/disks/web/data.qcow2']);
  assert.deepEqual(types(vm({}), undefined, true), []);
});

test('diff names the state that differs, for drift records', () => {
  assert.deepEqual(controller.diff(vm({}), actual({ proc: { pid: 42, alive: false, ours: false } })), [{ field: 'state', desired: 'running', actual: 'dead (pid 42 gone)' }]);
  assert.deepEqual(controller.diff(vm({}), actual({ ...running, status: 'paused' })), [{ field: 'state', desired: 'running', actual: 'paused' }]);
  assert.deepEqual(controller.diff(vm({}), actual(running)), []);
});

// The VirtualMachine controller's plan is pure: from a resource, what observe saw (host facts only) and
// the world, the actions and the hold. The launch spec is rendered in plan.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VmController, type VmActual, type VmAction } from '../../src/controllers/vm/index.ts';
import { vmPaths } from '../../src/controllers/vm/context.ts';
import { makeWorld, type Plan } from '../../src/engine/contract.ts';
import type { QemuProbe } from '../../src/drivers/qemu.ts';
import type { StoredResource } from '../../src/store/store.ts';

const route: StoredResource<'Route'> = {
  apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name: 'web' },
  spec: { vm: 'web', mode: 'direct', address: '10.8.0.4/24', gateway: '10.8.0.1' },
  source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '',
};
const ctx = { layout: { prefix: 'qw' }, stateDir: '/state', imageRoot: '/images', stopTimeoutMs: 1000 };
const controller = new VmController(ctx);
const now = Date.parse('2026-11-25T12:00:00Z');
const world = makeWorld([route], now);
const vm = (spec: Record<string, unknown>, name = 'web'): StoredResource<'VirtualMachine'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'VirtualMachine', metadata: { name },
  spec: { boot: { kernel: 'guest/vmlinux' }, network: { route: 'web' }, ...spec },
  source: { path: '/m', digest: 'd' }, generation: 2, appliedAt: '',
});
const probe: QemuProbe = {
  version: '7.2.0', devices: new Set(['virtio-gpu-device', 'virtio-gpu-pci']), displays: new Set(['none']),
  gl: { usable: false, reason: 'no GL', venus: false }, renderNodes: [], vfioContainer: false, kvmUsable: false, kvmReason: 'no vmx/svm',
};
const paths = vmPaths(ctx, 'web');
const actual = (over: Partial<VmActual> = {}): VmActual => ({
  paths, proc: { state: 'none' }, disks: [], images: { 'guest/vmlinux': { exists: true } }, netnsExists: true,
  tap: { exists: true, plugged: true }, leftovers: false, host: { probe, vmUser: { uid: 64055, gid: 64055 }, tscKhz: 2000000, pci: {} }, ...over,
});
const planOf = (r: StoredResource<'VirtualMachine'>, a: VmActual | undefined, deleting = false, w = world): Plan<VmAction> =>
  controller.plan(deleting ? { ...r, deletionRequestedAt: '2026-11-25T12:00:00Z' } : r, a, w);
const types = (r: StoredResource<'VirtualMachine'>, a: VmActual | undefined, deleting = false) => planOf(r, a, deleting).actions.map((x) => x.type);
/** The hash the plan renders for this VM now (read from a start action). */
const hashNow = (r: StoredResource<'VirtualMachine'>) => {
  const start = planOf(r, actual()).actions.find((a) => a.type === 'start');
  assert.ok(start && start.type === 'start');
  return start.hash;
};
const launched = (specHash: string, over: Record<string, unknown> = {}) => ({ specHash, generation: 2, startedAt: '', crashes: 0, ...over });
const running = (r = vm({})) => ({ proc: { state: 'running' as const, pid: 42 }, status: 'running', gpuDevices: [], launched: launched(hashNow(r)) });

test('the launch spec is rendered in plan: route, tap, unprivileged user, tsc, run dir; disks created first', () => {
  const p = planOf(vm({}), actual({ disks: [{ name: 'data', path: '/images/disks/web/data.qcow2', exists: false, sizeMiB: 64 }] }));
  assert.deepEqual(p.actions.map((a) => a.type), ['create-disk', 'start']);
  assert.equal(p.hold, undefined);
  const start = p.actions[1]!;
  assert.ok(start.type === 'start');
  assert.equal(start.netns, 'qw-web');
  assert.equal(start.spec.tap, 'qwt-web');
  assert.deepEqual(start.spec.user, { uid: 64055, gid: 64055 });
  assert.equal(start.spec.accel, 'tcg', 'KVM not usable: TCG');
  assert.equal(start.spec.runDir, paths.runDir);
  assert.match(start.spec.cmdline ?? '', /tsc_early_khz=2000000 qwamos\.ip=10\.8\.0\.4\/24 qwamos\.gw=10\.8\.0\.1 qwamos\.name=web/);
  assert.deepEqual(start.spec.disks, [{ path: '/images/disks/web/data.qcow2', readOnly: false, format: 'qcow2' }]);
  assert.deepEqual(types(vm({}), actual(running())), []);
});

test('the run directory is short whatever the state directory is', () => {
  const long = vmPaths({ stateDir: `/${'x'.repeat(200)}` }, 'a-long-vm-name-that-is-still-a-valid-dns-label-of-63-characters');
  assert.ok(Buffer.byteLength(`${long.runDir}/qmp-watch.sock`) <= 107);
  assert.notEqual(vmPaths({ stateDir: '/s1' }, 'g1').runDir, vmPaths({ stateDir: '/s2' }, 'g1').runDir);
});

test('a dead QEMU is recorded and restarted; in a crash loop the record-crash is planned beside the CrashLoop hold', () => {
  const dead = actual({ proc: { state: 'dead', pid: 42, why: 'gone' }, launched: launched('h') });
  assert.deepEqual(types(vm({}), dead), ['record-crash', 'start']);
  const looping = actual({ proc: { state: 'dead', pid: 43, why: 'gone' }, launched: launched('h', { crashes: 4, lastCrashAt: '2026-11-25T11:59:58Z' }) });
  const p = planOf(vm({}), looping);
  assert.deepEqual(p.actions.map((x) => x.type), ['record-crash']);
  assert.equal(p.hold?.type, 'Waiting');
  assert.equal(p.hold?.reason, 'CrashLoop');
  assert.equal(p.hold?.type === 'Waiting' && p.hold.afterMs, 8000 - 2000, 'afterMs = the backoff left');
});

test('RerunOnFailure restarts a crash but not a clean exit; a stop by the controller is not a clean exit', () => {
  const cleanExit = actual({ launched: launched('h') });
  assert.deepEqual(types(vm({ runStrategy: 'RerunOnFailure' }), cleanExit), []);
  assert.deepEqual(types(vm({ runStrategy: 'RerunOnFailure' }), actual({ launched: launched('h', { stoppedByController: true }) })), ['start']);
  assert.deepEqual(types(vm({ runStrategy: 'Running' }), cleanExit), ['start']);
});

test('Stopped shuts a running VM down gracefully; Paused pauses; a paused Running VM is resumed', () => {
  const stop = planOf(vm({ runStrategy: 'Stopped' }), actual(running())).actions;
  assert.deepEqual(stop.map((x) => [x.type, x.type === 'stop' && x.graceful]), [['stop', true]]);
  assert.deepEqual(types(vm({ runStrategy: 'Paused' }), actual(running(vm({ runStrategy: 'Paused' })))), ['pause']);
  assert.deepEqual(types(vm({}), actual({ ...running(), status: 'paused' })), ['resume']);
  assert.deepEqual(types(vm({ runStrategy: 'Stopped' }), actual()), []);
});

test('an unknown QMP status is neither running nor paused: nothing is done, the pass waits', () => {
  const p = planOf(vm({ runStrategy: 'Paused' }), actual({ ...running(), status: 'unknown' }));
  assert.deepEqual(p.actions, []);
  assert.equal(p.hold?.type, 'Waiting');
  assert.equal(p.hold?.reason, 'StatusUnknown');
  assert.deepEqual(controller.diff(vm({}), actual({ ...running(), status: 'unknown' }), world), [], 'no drift recorded from an unknown state');
});

test('holds name their reason: Route, kernel, KVM, GPU, image path escape, socket path', () => {
  const hold = (r: StoredResource<'VirtualMachine'>, a: VmActual, w = world) => planOf(r, a, false, w).hold;
  const noRoute = hold(vm({}), actual(), makeWorld([], now));
  assert.deepEqual([noRoute?.type, noRoute?.reason], ['Waiting', 'RouteNotReady']);
  assert.equal(hold(vm({}), actual({ netnsExists: false }))?.reason, 'RouteNotReady');
  const kernel = hold(vm({}), actual({ images: { 'guest/vmlinux': { exists: false } } }));
  assert.deepEqual([kernel?.type, kernel?.reason], ['Waiting', 'KernelMissing']);
  const kvm = hold(vm({ accel: 'kvm' }), actual());
  assert.deepEqual([kvm?.type, kvm?.reason], ['Stalled', 'KvmUnavailable']);
  const gpu = hold(vm({ gpu: { trustLevel: 'medium' } }), actual());
  assert.deepEqual([gpu?.type, gpu?.reason], ['Stalled', 'GpuUnavailable']);
  assert.match(gpu?.message ?? '', /GPU trust level medium \(virgl\) cannot be provided/);
  assert.equal(hold(vm({ gpu: { trustLevel: 'low' } }), actual()), undefined, 'virtio-gpu is provided');
  const esc = hold(vm({ boot: { kernel: '../etc/k' } }), actual({ images: { '../etc/k': { exists: true, escape: "contains '..'" } } }));
  assert.deepEqual([esc?.type, esc?.reason], ['Stalled', 'ImagePathEscape']);
  const diskEsc = hold(vm({}), actual({ disks: [{ name: 'd', path: '/images/disks/web/d.qcow2', exists: false, sizeMiB: 1, problem: 'disks/web: is a symlink' }] }));
  assert.deepEqual([diskEsc?.type, diskEsc?.reason], ['Stalled', 'ImagePathEscape']);
  const sock = hold(vm({}), actual({ socketProblem: 'QMP socket path is 130 bytes' }));
  assert.deepEqual([sock?.type, sock?.reason], ['Stalled', 'SocketPathTooLong']);
  const report = controller.report(vm({ gpu: { trustLevel: 'medium' } }), actual(), world);
  assert.equal(report.conditions?.find((c) => c.type === 'GpuUnavailable')?.status, 'True');
});

test('a live QEMU behind a corrupt pidfile is adopted, never started twice; deletion adopts and stops it before removing disks', () => {
  const stray = actual({ proc: { state: 'none' }, stray: { pid: 77 }, launched: launched('h') });
  assert.deepEqual(types(vm({}), stray), ['adopt']);
  const disks = [{ name: 'data', path: '/images/disks/web/data.qcow2', exists: true, sizeMiB: 64 }];
  assert.deepEqual(types(vm({ deletionPolicy: 'Delete' }), { ...stray, disks }, true), ['adopt', 'stop', 'clean-up']);
});

test('deletion: disks only under deletionPolicy Delete, and never through a symlink', () => {
  const disks = [{ name: 'data', path: '/images/disks/web/data.qcow2', exists: true, sizeMiB: 64 }];
  const keep = planOf(vm({}), actual({ ...running(), disks }), true).actions;
  assert.deepEqual(keep.map((x) => x.type), ['stop', 'clean-up']);
  assert.deepEqual(keep[1]!.type === 'clean-up' && keep[1]!.disks, []);
  const del = planOf(vm({ deletionPolicy: 'Delete' }), actual({ ...running(), disks }), true).actions;
  assert.deepEqual(del[1]!.type === 'clean-up' && del[1]!.disks, ['/images/disks/web/data.qcow2']);
  assert.deepEqual(types(vm({}), actual(), true), [], 'nothing left: deleted');
  const escaped = planOf(vm({ deletionPolicy: 'Delete' }), actual({ ...running(), disks: [{ ...disks[0]!, problem: 'disks/web is a symlink' }] }), true);
  assert.deepEqual(escaped.actions.map((x) => x.type), ['stop'], 'QEMU stopped, nothing removed');
  assert.deepEqual([escaped.hold?.type, escaped.hold?.reason], ['Stalled', 'ImagePathEscape']);
  const sock = planOf(vm({}), actual({ socketProblem: 'too long', leftovers: true }), true);
  assert.deepEqual(sock.actions.map((x) => x.type), ['clean-up'], 'a VM whose sockets cannot exist can still be deleted');
});

test('a foreign GPU device is removed; an unplugged tap is plugged; a vanished tap restarts the VM', () => {
  assert.deepEqual(types(vm({}), actual({ ...running(), gpuDevices: ['gpu-by-hand'] })), ['remove-device']);
  assert.deepEqual(types(vm({}), actual({ ...running(), tap: { exists: true, plugged: false } })), ['plug-tap']);
  assert.deepEqual(types(vm({}), actual({ ...running(), tap: { exists: false, plugged: false } })), ['stop', 'start']);
});

test('a changed spec: RestartRequired under updatePolicy Manual, a restart under Restart', () => {
  const old = { ...running(), launched: launched('h1') };
  assert.deepEqual(types(vm({}), actual(old)), []);
  assert.equal(controller.report(vm({}), actual(old), world).conditions?.find((c) => c.type === 'RestartRequired')?.status, 'True');
  assert.deepEqual(types(vm({ updatePolicy: 'Restart' }), actual(old)), ['stop', 'start']);
  assert.equal(controller.report(vm({}), actual(running()), world).conditions?.find((c) => c.type === 'RestartRequired')?.status, 'False');
});

test('diff names the state that differs, for drift records', () => {
  assert.deepEqual(controller.diff(vm({}), actual({ proc: { state: 'dead', pid: 42, why: 'gone' } }), world), [{ field: 'state', desired: 'running', actual: 'dead (pid 42 gone)' }]);
  assert.deepEqual(controller.diff(vm({}), actual({ ...running(), status: 'paused' }), world), [{ field: 'state', desired: 'running', actual: 'paused' }]);
  assert.deepEqual(controller.diff(vm({}), actual(running()), world), []);
});

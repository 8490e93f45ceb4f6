// VirtualMachines end to end: real QEMU (TCG) booting the tiny guest inside its Route's netns, driven by
// the real bin and the daemon. Checks use QMP, /proc and the test's own ip/ping, not the controller.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { readFile, access } from 'node:fs/promises';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { qmpOnce } from '../../src/drivers/qmp.ts';
import { Store } from '../../src/store/store.ts';
import { tryIn } from '../helpers/hostns.ts';
import { createSandbox, installGuest, route, until, vm, type Sandbox } from './harness.ts';

const runDir = (sb: Sandbox, name: string) => path.join(sb.stateDir, 'vms', name);
const pidOf = async (sb: Sandbox, name: string) => Number((await readFile(path.join(runDir(sb, name), 'qemu.pid'), 'utf8')).trim());
/** Alive and not a zombie (a daemonized QEMU's parent is init, which may reap it late). */
const alive = (pid: number) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
};
const qmpStatus = async (sb: Sandbox, name: string) => (await qmpOnce<{ status: string }>(path.join(runDir(sb, name), 'qmp.sock'), 'query-status')).status;
const serial = async (sb: Sandbox, name: string) => readFile(path.join(runDir(sb, name), 'serial.log'), 'utf8').catch(() => '');
const exists = (p: string) => access(p).then(() => true, () => false);

describe('VirtualMachines on a real host', { timeout: 600_000 }, () => {
  let sb: Sandbox;
  let daemon: ChildProcess | undefined;
  before(async () => {
    sb = await createSandbox();
    await installGuest(sb);
  });
  after(async () => {
    await sb?.qwamos(['delete', 'vm/web', 'vm/lab', 'vm/art', '--timeout', '30s']).catch(() => {});
    await sb?.cleanup();
  });

  test('apply boots a VM that QMP reports running and that answers a ping from its gateway', async () => {
    await sb.manifests_({
      'web-route.yaml': route('web', 'direct', '10.8.0.4/24'),
      'web.yaml': vm('web', '  network:\n    route: web\n  disks:\n    - name: data\n      size: 64Mi\n  deletionPolicy: Delete\n'),
    });
    const r = await sb.qwamos(['apply', '--wait', '-f', sb.manifests]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /^VirtualMachine\/web created$/m);
    assert.equal(await qmpStatus(sb, 'web'), 'running');
    await until('guest ready on the serial console', async () => /QWAMOS-GUEST-READY name=web ip=10\.8\.0\.4/.test(await serial(sb, 'web')), 60_000);
    const ping = await tryIn(sb.host.hostNs, ['busybox', 'ping', '-c1', '-W3', '10.8.0.4']);
    assert.equal(ping.exitCode, 0, `gateway side cannot reach the guest: ${ping.stdout}${ping.stderr}`);
    const sock = path.join(runDir(sb, 'web'), 'qmp.sock');
    const { stat } = await import('node:fs/promises');
    assert.equal((await stat(sock)).mode & 0o777, 0o600, 'QMP socket is 0600');
    const store = await Store.open(sb.stateDir);
    const st = await store.getStatus('VirtualMachine', 'web');
    assert.equal(st?.phase, 'Ready');
    assert.equal(st?.fields.pid, await pidOf(sb, 'web'));
    assert.ok(await exists(path.join(sb.env.QWAMOS_IMAGE_ROOT!, 'disks/web/data.qcow2')), 'disk created under the image root');
    const describe = await sb.qwamos(['describe', 'vm/web']);
    assert.match(describe.stdout, /QWAMOS-GUEST-READY/, 'describe shows the serial console');
  });

  test('the controller restarted adopts the running VM without restarting it', async () => {
    const pid = await pidOf(sb, 'web');
    daemon = await sb.startDaemon();
    const store = await Store.open(sb.stateDir);
    await new Promise((r) => setTimeout(r, 1000));
    daemon.kill('SIGTERM');
    await new Promise((r) => daemon!.once('exit', r));
    assert.ok(alive(pid), 'stopping the controller leaves the VM running');
    daemon = await sb.startDaemon();
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(await pidOf(sb, 'web'), pid, 'same QEMU process after the restart');
    assert.equal((await store.getStatus('VirtualMachine', 'web'))?.fields.pid, pid);
  });

  test('kill -9 of QEMU is seen at once, recorded as drift and healed', async () => {
    const pid = await pidOf(sb, 'web');
    process.kill(pid, 'SIGKILL');
    const store = await Store.open(sb.stateDir);
    await until('a new QEMU', async () => {
      const p = await pidOf(sb, 'web').catch(() => 0);
      return p !== 0 && p !== pid && alive(p);
    }, 30_000);
    await until('drift healed', async () => (await store.listDrift({ resource: 'VirtualMachine/web', state: 'healed' })).some((d) => d.field === 'state'), 30_000);
    const d = (await store.listDrift({ resource: 'VirtualMachine/web' })).find((x) => x.field === 'state')!;
    assert.equal(d.desired, 'running');
    assert.match(d.actual, /dead/);
    await until('guest ready again', async () => (await serial(sb, 'web')).includes('QWAMOS-GUEST-READY'), 60_000);
  });

  test('`stop` by hand over QMP is drift and is resumed', async () => {
    const pid = await pidOf(sb, 'web');
    await qmpOnce(path.join(runDir(sb, 'web'), 'qmp.sock'), 'stop');
    const store = await Store.open(sb.stateDir);
    await until('resumed', async () => (await qmpStatus(sb, 'web')) === 'running' && (await store.listDrift({ resource: 'VirtualMachine/web' })).some((d) => d.actual === 'paused'), 30_000);
    assert.equal(await pidOf(sb, 'web'), pid, 'resumed, not restarted');
  });

  test('the VM netns deleted by hand: the Route is healed and the VM restarted onto it', async () => {
    const pid = await pidOf(sb, 'web');
    await tryIn(undefined, ['ip', 'netns', 'del', `${sb.host.prefix}-web`]);
    await until('a new QEMU', async () => {
      const p = await pidOf(sb, 'web').catch(() => 0);
      return p !== 0 && p !== pid && alive(p);
    }, 30_000);
    await until('guest ready', async () => (await serial(sb, 'web')).includes('QWAMOS-GUEST-READY'), 60_000);
    await until('guest answers its gateway', async () => (await tryIn(sb.host.hostNs, ['busybox', 'ping', '-c1', '-W2', '10.8.0.4'])).exitCode === 0, 30_000);
  });

  test('runStrategy Paused starts it paused; a spec change needing a restart sets RestartRequired', async () => {
    const file = await sb.manifest('lab.yaml', vm('lab', '  runStrategy: Paused\n'));
    assert.equal((await sb.qwamos(['apply', '--wait', '-f', file])).exitCode, 0);
    assert.match(await qmpStatus(sb, 'lab'), /^(paused|prelaunch)$/);
    const pid = await pidOf(sb, 'lab');
    await sb.manifest('lab.yaml', vm('lab', '  runStrategy: Paused\n  cpus: 2\n'));
    assert.equal((await sb.qwamos(['apply', '--wait', '-f', file])).exitCode, 0);
    const store = await Store.open(sb.stateDir);
    await until('RestartRequired', async () => (await store.getStatus('VirtualMachine', 'lab'))?.conditions.some((c) => c.type === 'RestartRequired' && c.status === 'True') === true);
    assert.equal(await pidOf(sb, 'lab'), pid, 'not restarted behind the user\'s back');
    assert.equal((await sb.qwamos(['delete', 'vm/lab', '--wait'])).exitCode, 0);
    assert.equal(alive(pid), false);
  });

  test('a GPU level the host cannot provide keeps the VM stopped with GpuUnavailable', async () => {
    const file = await sb.manifest('art.yaml', vm('art', '  gpu:\n    trustLevel: medium\n'));
    const r = await sb.qwamos(['apply', '--wait', '--timeout', '30s', '-f', file]);
    assert.equal(r.exitCode, 1, r.stderr);
    assert.match(r.stderr, /GPU trust level medium \(virgl\) cannot be provided/);
    assert.equal(await exists(path.join(runDir(sb, 'art'), 'qemu.pid')), false, 'not started');
    const store = await Store.open(sb.stateDir);
    await until('condition', async () => (await store.getStatus('VirtualMachine', 'art'))?.conditions.some((c) => c.type === 'GpuUnavailable' && c.status === 'True') === true);
  });

  test('runStrategy Stopped shuts the VM down; deletion removes the process and, per policy, the disk', async () => {
    const pid = await pidOf(sb, 'web');
    await sb.manifest('web.yaml', vm('web', '  runStrategy: Stopped\n  network:\n    route: web\n  disks:\n    - name: data\n      size: 64Mi\n  deletionPolicy: Delete\n'));
    const r = await sb.qwamos(['apply', '--wait', '-f', `${sb.manifests}/web.yaml`]);
    assert.equal(r.exitCode, 0, r.stderr);
    await until('QEMU gone', async () => !alive(pid), 20_000);
    const disk = path.join(sb.env.QWAMOS_IMAGE_ROOT!, 'disks/web/data.qcow2');
    assert.ok(await exists(disk), 'stopping keeps the disk');
    const del = await sb.qwamos(['delete', 'vm/web', '--wait']);
    assert.equal(del.exitCode, 0, del.stderr);
    assert.equal(await exists(disk), false, 'deletionPolicy Delete removes the disk');
    assert.equal(await exists(runDir(sb, 'web')), false);
  });
});

// VirtualMachines end to end: real QEMU (TCG) booting the tiny guest inside its Route's netns, driven by
// the real bin and the daemon. Checks use QMP, /proc and the test's own ip/ping, not the controller.
// Each test makes the VMs it needs (its own names and addresses) and removes them: none depends on another.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { access, copyFile, mkdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { execa } from 'execa';
import { vmPaths } from '../../src/controllers/vm/context.ts';
import { qmpOnce } from '../../src/drivers/qmp.ts';
import { scanQemuProcesses, vmProcesses } from '../../src/drivers/qemu.ts';
import { Store } from '../../src/store/store.ts';
import { tryIn } from '../helpers/hostns.ts';
import { killQemusIn } from '../helpers/leftovers.ts';
import { createSandbox, installGuest, repo, route, until, vm, type Sandbox } from './harness.ts';

const runDir = (sb: Sandbox, name: string) => vmPaths({ stateDir: sb.stateDir }, name).runDir;
const pidOf = async (sb: Sandbox, name: string) => Number((await readFile(path.join(runDir(sb, name), 'qemu.pid'), 'utf8')).trim());
/** Alive and not a zombie. */
const alive = (pid: number) => {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
};
const qmpStatus = async (sb: Sandbox, name: string) => (await qmpOnce<{ status: string }>(path.join(runDir(sb, name), 'qmp.sock'), 'query-status')).status;
const serial = async (sb: Sandbox, name: string) => readFile(path.join(runDir(sb, name), 'serial.log'), 'utf8').catch(() => '');
const exists = (p: string) => access(p).then(() => true, () => false);
/** Live QEMUs of this VM by their command line (what a pidfile cannot hide). */
const qemusOf = async (sb: Sandbox, name: string) => vmProcesses(await scanQemuProcesses(), runDir(sb, name), name).map((q) => q.pid);

describe('VirtualMachines on a real host', { timeout: 900_000 }, () => {
  let sb: Sandbox;
  const daemons: ChildProcess[] = [];
  const startDaemon = async () => {
    const d = await sb.startDaemon();
    daemons.push(d);
    return d;
  };
  const stopDaemon = async (d: ChildProcess) => {
    if (d.exitCode !== null || d.signalCode !== null) return;
    const gone = new Promise((r) => d.once('exit', r));
    d.kill('SIGTERM');
    await gone;
  };
  /** Applies a Route and a VM of this name (address 10.8.N.2) and waits until QEMU runs. */
  const bootVm = async (name: string, n: number, extra = '') => {
    await sb.manifests_({ [`${name}-route.yaml`]: route(name, 'direct', `10.8.${n}.2/24`), [`${name}.yaml`]: vm(name, `  network:\n    route: ${name}\n${extra}`) });
    const r = await sb.qwamos(['apply', '--wait', '-f', path.join(sb.manifests, `${name}-route.yaml`), '-f', path.join(sb.manifests, `${name}.yaml`)]);
    assert.equal(r.exitCode, 0, r.stderr);
    return pidOf(sb, name);
  };
  const deleteVm = async (name: string) => {
    const r = await sb.qwamos(['delete', `vm/${name}`, `route/${name}`, '--wait', '--timeout', '60s']);
    assert.equal(r.exitCode, 0, r.stderr);
  };

  before(async () => {
    sb = await createSandbox();
    await installGuest(sb);
  });
  after(async () => {
    for (const d of daemons) await stopDaemon(d).catch(() => {});
    await sb?.cleanup();
  });

  test('apply boots a VM that QMP reports running, answers a ping, and runs unprivileged in a full sandbox', async () => {
    const pid = await bootVm('web', 4, '  disks:\n    - name: data\n      size: 64Mi\n  deletionPolicy: Delete\n');
    assert.equal(await qmpStatus(sb, 'web'), 'running');
    await until('guest ready on the serial console', async () => /QWAMOS-GUEST-READY name=web ip=10\.8\.4\.2/.test(await serial(sb, 'web')), 60_000);
    const ping = await tryIn(sb.host.hostNs, ['busybox', 'ping', '-c1', '-W3', '10.8.4.2']);
    assert.equal(ping.exitCode, 0, `gateway side cannot reach the guest: ${ping.stdout}${ping.stderr}`);
    // Point 18 of #12: no root, no capabilities, no new privileges, seccomp on.
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(status)?.[1]?.trim();
    assert.ok(field('Uid')!.split(/\s+/).every((u) => u !== '0'), `Uid: ${field('Uid')}`);
    assert.ok(field('Gid')!.split(/\s+/).every((g) => g !== '0'), `Gid: ${field('Gid')}`);
    assert.equal(field('CapEff'), '0000000000000000');
    assert.equal(field('CapPrm'), '0000000000000000');
    assert.equal(field('NoNewPrivs'), '1');
    assert.equal(field('Seccomp'), '2');
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    assert.equal(argv[argv.indexOf('-sandbox') + 1], 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
    // The controller (root) keeps its files to itself.
    for (const f of ['qmp.sock', 'qmp-watch.sock', 'qemu.pid']) {
      const st = await stat(path.join(runDir(sb, 'web'), f));
      assert.deepEqual([st.mode & 0o777, st.uid], [0o600, 0], f);
    }
    assert.equal((await stat(runDir(sb, 'web'))).mode & 0o777, 0o700);
    const store = await Store.open(sb.stateDir);
    const st = await store.getStatus('VirtualMachine', 'web');
    assert.equal(st?.phase, 'Ready');
    assert.equal(st?.fields.pid, pid);
    assert.ok(await exists(path.join(sb.env.QWAMOS_IMAGE_ROOT!, 'disks/web/data.qcow2')), 'disk created under the image root');
    assert.match((await sb.qwamos(['describe', 'vm/web'])).stdout, /QWAMOS-GUEST-READY/, 'describe shows the serial console');
    await deleteVm('web');
    assert.equal(alive(pid), false);
    assert.equal(await exists(path.join(sb.env.QWAMOS_IMAGE_ROOT!, 'disks/web/data.qcow2')), false, 'deletionPolicy Delete removes the disk');
    assert.equal(await exists(runDir(sb, 'web')), false);
  });

  test('the controller restarted adopts the running VM without restarting it', async () => {
    const pid = await bootVm('ad', 5);
    let daemon = await startDaemon();
    await stopDaemon(daemon);
    assert.ok(alive(pid), 'stopping the controller leaves the VM running');
    daemon = await startDaemon();
    const store = await Store.open(sb.stateDir);
    await until('status after the restart', async () => (await store.getStatus('VirtualMachine', 'ad'))?.fields.pid === pid, 10_000);
    assert.equal(await pidOf(sb, 'ad'), pid, 'same QEMU process after the restart');
    await stopDaemon(daemon);
    await deleteVm('ad');
  });

  test('kill -9 of QEMU is seen at once, recorded as drift and healed; `stop` by hand is resumed', async () => {
    const pid = await bootVm('kl', 6);
    const daemon = await startDaemon();
    process.kill(pid, 'SIGKILL');
    const store = await Store.open(sb.stateDir);
    await until('a new QEMU', async () => {
      const p = await pidOf(sb, 'kl').catch(() => 0);
      return p !== 0 && p !== pid && alive(p);
    }, 30_000);
    await until('drift healed', async () => (await store.listDrift({ resource: 'VirtualMachine/kl', state: 'healed' })).some((d) => d.field === 'state'), 30_000);
    const d = (await store.listDrift({ resource: 'VirtualMachine/kl' })).find((x) => x.field === 'state')!;
    assert.equal(d.desired, 'running');
    assert.match(d.actual, /dead/);

    const pid2 = await pidOf(sb, 'kl');
    await until('QMP answers', async () => (await qmpStatus(sb, 'kl').catch(() => '')) === 'running', 10_000);
    await qmpOnce(path.join(runDir(sb, 'kl'), 'qmp.sock'), 'stop');
    await until('resumed', async () => (await qmpStatus(sb, 'kl')) === 'running' && (await store.listDrift({ resource: 'VirtualMachine/kl' })).some((x) => x.actual === 'paused'), 30_000);
    assert.equal(await pidOf(sb, 'kl'), pid2, 'resumed, not restarted');
    await stopDaemon(daemon);
    await deleteVm('kl');
  });

  test('the VM netns deleted by hand: the Route is healed and the VM restarted onto it', async () => {
    const pid = await bootVm('ns', 7);
    const daemon = await startDaemon();
    await tryIn(undefined, ['ip', 'netns', 'del', `${sb.host.prefix}-ns`]);
    await until('a new QEMU', async () => {
      const p = await pidOf(sb, 'ns').catch(() => 0);
      return p !== 0 && p !== pid && alive(p);
    }, 30_000);
    await until('guest answers its gateway', async () => (await tryIn(sb.host.hostNs, ['busybox', 'ping', '-c1', '-W2', '10.8.7.2'])).exitCode === 0, 60_000);
    await stopDaemon(daemon);
    await deleteVm('ns');
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
    assert.equal((await sb.qwamos(['delete', 'vm/art', '--wait'])).exitCode, 0);
  });

  test('runStrategy Stopped shuts the VM down and keeps its disk', async () => {
    const pid = await bootVm('st', 8, '  disks:\n    - name: data\n      size: 64Mi\n');
    await sb.manifest('st.yaml', vm('st', '  runStrategy: Stopped\n  network:\n    route: st\n  disks:\n    - name: data\n      size: 64Mi\n'));
    const r = await sb.qwamos(['apply', '--wait', '-f', path.join(sb.manifests, 'st.yaml')]);
    assert.equal(r.exitCode, 0, r.stderr);
    await until('QEMU gone', async () => !alive(pid), 20_000);
    const disk = path.join(sb.env.QWAMOS_IMAGE_ROOT!, 'disks/st/data.qcow2');
    assert.ok(await exists(disk), 'stopping keeps the disk');
    await deleteVm('st');
    assert.ok(await exists(disk), 'deletionPolicy Retain keeps the disk');
  });

  test('#12.11: a corrupt pidfile with the daemon running starts no second QEMU; delete stops the first before removing its disk', async () => {
    const pid = await bootVm('g1', 9, '  disks:\n    - name: data\n      size: 64Mi\n  deletionPolicy: Delete\n');
    const daemon = await startDaemon();
    await writeFile(path.join(runDir(sb, 'g1'), 'qemu.pid'), 'junk\n');
    const store = await Store.open(sb.stateDir);
    await sb.qwamos(['reconcile', 'vm/g1']);
    await until('pidfile rewritten (adopted)', async () => (await pidOf(sb, 'g1').catch(() => 0)) === pid, 30_000);
    assert.deepEqual(await qemusOf(sb, 'g1'), [pid], 'exactly one QEMU of g1, the first');
    assert.ok(await exists(path.join(runDir(sb, 'g1'), 'qmp.sock')), 'its QMP socket was not removed');
    assert.equal(await qmpStatus(sb, 'g1'), 'running');
    await until('status names the first QEMU', async () => (await store.getStatus('VirtualMachine', 'g1'))?.fields.pid === pid);
    await stopDaemon(daemon);
    // Corrupt again, then delete: the live QEMU is found by its command line and stopped first.
    await writeFile(path.join(runDir(sb, 'g1'), 'qemu.pid'), 'junk\n');
    await deleteVm('g1');
    assert.equal(alive(pid), false, 'delete stopped the QEMU the pidfile no longer named');
    assert.equal(await exists(path.join(sb.env.QWAMOS_IMAGE_ROOT!, 'disks/g1/data.qcow2')), false);
  });

  test('#12.14: a disk directory symlinked out of the image root is refused (ImagePathEscape), for create and delete', async () => {
    const outside = path.join(sb.dir, 'elsewhere');
    await mkdir(outside, { recursive: true });
    await writeFile(path.join(outside, 'data.qcow2'), 'not yours');
    await mkdir(path.join(sb.env.QWAMOS_IMAGE_ROOT!, 'disks'), { recursive: true });
    await symlink(outside, path.join(sb.env.QWAMOS_IMAGE_ROOT!, 'disks/g2'));
    const file = await sb.manifest('g2.yaml', vm('g2', '  disks:\n    - name: data\n      size: 64Mi\n    - name: more\n      size: 64Mi\n  deletionPolicy: Delete\n'));
    const r = await sb.qwamos(['apply', '--wait', '--timeout', '20s', '-f', file]);
    assert.notEqual(r.exitCode, 0);
    assert.match(r.stderr, /symlink/);
    assert.equal(await exists(path.join(outside, 'more.qcow2')), false, 'no disk created outside the image root');
    assert.equal(await exists(path.join(runDir(sb, 'g2'), 'qemu.pid')), false, 'not started');
    await sb.qwamos(['delete', 'vm/g2', '--wait', '--timeout', '10s']);
    assert.equal(await readFile(path.join(outside, 'data.qcow2'), 'utf8'), 'not yours', 'delete removed nothing outside the image root');
    // Remove the symlink: the deletion completes.
    await rm(path.join(sb.env.QWAMOS_IMAGE_ROOT!, 'disks/g2'));
    const store = await Store.open(sb.stateDir);
    await sb.qwamos(['reconcile', 'vm/g2']);
    await until('g2 deleted', async () => (await store.getResource('VirtualMachine', 'g2')) === undefined, 30_000);
  });

  test('#12.13: a state dir whose path is far too long for a unix socket still runs and deletes VMs', async () => {
    const longState = path.join(sb.dir, 'x'.repeat(60), 'y'.repeat(60), 'state');
    await mkdir(path.join(longState, 'trust'), { recursive: true });
    await copyFile(path.join(sb.stateDir, 'trust/e2e.pub'), path.join(longState, 'trust/e2e.pub'));
    const env = { ...sb.env, QWAMOS_STATE_DIR: longState };
    const qw = async (args: string[]) => execa('node', [path.join(repo, 'bin/qwamos.js'), ...args], { env, reject: false, cwd: sb.dir, timeout: 120_000 });
    try {
      assert.ok(Buffer.byteLength(path.join(longState, 'vms/lg/qmp-watch.sock')) > 107, 'the old layout could not bind this');
      const file = await sb.manifest('lg.yaml', vm('lg', ''));
      const r = await qw(['apply', '--wait', '-f', file]);
      assert.equal(r.exitCode, 0, String(r.stderr));
      const dir = vmPaths({ stateDir: longState }, 'lg').runDir;
      const pid = Number((await readFile(path.join(dir, 'qemu.pid'), 'utf8')).trim());
      assert.equal((await qmpOnce<{ status: string }>(path.join(dir, 'qmp.sock'), 'query-status')).status, 'running');
      const del = await qw(['delete', 'vm/lg', '--wait', '--timeout', '30s']);
      assert.equal(del.exitCode, 0, String(del.stderr));
      assert.equal(alive(pid), false);
    } finally {
      await killQemusIn(longState);
    }
  });
});

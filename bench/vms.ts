// VirtualMachines under TCG, inside a private test host:
//  1. apply -> QMP `running` through the controller, against launching the same QEMU command by hand
//     and polling QMP (the controller's overhead), median of a few runs. Both sides poll QMP the same
//     way; the controller's pass goes on after that (its launch's own checks, the status, a second pass
//     that verifies), which the "converged" row times;
//  2. a 4-VM apply: time until all four report running, and until all four guests are up.
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, link, copyFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { buildQemuArgs, type QemuSpec } from '../src/drivers/qemu.ts';
import { vmPaths } from '../src/controllers/vm/context.ts';
import { qmpOnce } from '../src/drivers/qmp.ts';
import { createEngine } from '../src/runtime.ts';
import { Store } from '../src/store/store.ts';
import { createTestHost } from '../test/helpers/hostns.ts';
import { killQemusIn } from '../test/helpers/leftovers.ts';
import { median, printTable, time, writeResult } from './lib.ts';

const repo = fileURLToPath(new URL('../', import.meta.url));
const GUEST = '/tmp/qwamos-guest-cache';
const RUNS = Number(process.env.BENCH_VM_RUNS ?? 3);
const manifestSource = { path: '/bench', digest: 'bench' };

const routeOf = (name: string, i: number) => ({ apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name }, spec: { vm: name, mode: 'direct', address: `10.30.${i}.2/24`, gateway: `10.30.${i}.1` } });
const vmOf = (name: string) => ({
  apiVersion: 'qwamos.io/v1alpha1',
  kind: 'VirtualMachine',
  metadata: { name },
  spec: { runStrategy: 'Running', cpus: 1, memory: '192Mi', machine: 'microvm', accel: 'tcg', boot: { kernel: 'guest/vmlinux', initrd: 'guest/initrd.cpio', cmdline: 'console=ttyS0 quiet panic=-1' }, network: { route: name } },
});

async function waitQmpRunning(sock: string, give: () => boolean = () => false): Promise<void> {
  for (;;) {
    if (give()) throw new Error('the controller settled before QMP said running');
    const r = await qmpOnce<{ status: string }>(sock, 'query-status').catch(() => undefined);
    if (r?.status === 'running') return;
    await new Promise((res) => setTimeout(res, 5));
  }
}

export interface VmsResult {
  controllerMs: number;
  handMs: number;
}

export async function benchVms(): Promise<VmsResult> {
  const build = await execa('bash', [path.join(repo, 'scripts/build-guest.sh'), GUEST], { reject: false });
  if (build.exitCode !== 0) throw new Error(`build-guest.sh failed: ${build.stderr}`);
  const host = await createTestHost();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-bench-vms-'));
  const images = path.join(dir, 'images');
  await mkdir(path.join(images, 'guest'), { recursive: true });
  for (const f of ['vmlinux', 'initrd.cpio']) await link(path.join(GUEST, f), path.join(images, 'guest', f)).catch(() => copyFile(path.join(GUEST, f), path.join(images, 'guest', f)));
  const env = { ...process.env, QWAMOS_PREFIX: host.prefix, QWAMOS_HOST_NETNS: host.hostNs, QWAMOS_STATE_DIR: dir, QWAMOS_IMAGE_ROOT: images, QWAMOS_STOP_TIMEOUT_MS: '500' };
  const store = await Store.open(dir);
  const engine = createEngine(store, { env });
  const reconcile = async (keys: string[]) => {
    const since = Date.now();
    await engine.sync();
    engine.enqueue(keys);
    if (!(await engine.settle(keys, { untilConverged: true, timeoutMs: 120_000, since }))) throw new Error('did not converge');
    const bad = keys.filter((k) => !['Ready', 'Deleted'].includes(engine.last.get(k)?.phase ?? ''));
    if (bad.length) throw new Error(`${bad[0]}: ${engine.last.get(bad[0]!)?.message}`);
  };
  engine.start();
  const hand: number[] = [];
  const controller: number[] = [];
  const converged: number[] = [];
  try {
    await store.putResource(routeOf('one', 0), manifestSource);
    await reconcile(['Route/one']);
    for (let i = 0; i < RUNS; i++) {
      // Through the controller: store the VM and reconcile until QMP says running.
      await store.putResource(vmOf('one'), manifestSource);
      const start = performance.now();
      const passes = reconcile(['VirtualMachine/one']);
      let settled = false;
      void passes.then(() => (settled = true), () => (settled = true));
      await Promise.race([waitQmpRunning(path.join(vmPaths({ stateDir: dir }, 'one').runDir, 'qmp.sock'), () => settled), passes]);
      controller.push(performance.now() - start);
      await passes;
      converged.push(performance.now() - start);
      await store.markForDeletion('VirtualMachine', 'one');
      await reconcile(['VirtualMachine/one']);

      // By hand: the same QEMU command line, in the same netns, then poll QMP.
      const runDir = path.join(dir, 'hand');
      await mkdir(runDir, { recursive: true, mode: 0o700 });
      const qemuSpec: QemuSpec = {
        name: 'one', machine: 'microvm', accel: 'tcg', cpus: 1, memoryMiB: 192,
        kernel: path.join(images, 'guest/vmlinux'), initrd: path.join(images, 'guest/initrd.cpio'),
        cmdline: 'console=ttyS0 quiet panic=-1 qwamos.ip=10.30.0.2/24 qwamos.gw=10.30.0.1 qwamos.name=one',
        disks: [], tap: `${host.prefix}t-one`, runDir,
      };
      // QEMU is not daemonized (the sandbox's spawn=deny forbids -daemonize's fork): spawned detached.
      const t = await time(async () => {
        spawn('ip', ['netns', 'exec', `${host.prefix}-one`, 'qemu-system-x86_64', ...buildQemuArgs(qemuSpec)], { detached: true, stdio: 'ignore' }).unref();
        await waitQmpRunning(path.join(runDir, 'qmp.sock'));
      });
      hand.push(t.ms);
      const pid = Number((await readFile(path.join(runDir, 'qemu.pid'), 'utf8')).trim());
      process.kill(pid, 'SIGKILL');
      while ((await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')).length > 0 && !/\) Z /.test(await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => ''))) await new Promise((r) => setTimeout(r, 5));
      await rm(runDir, { recursive: true, force: true });
      await execa('ip', ['-n', `${host.prefix}-one`, 'link', 'del', `${host.prefix}t-one`], { reject: false });
    }

    // Four VMs in one apply.
    const names = ['va', 'vb', 'vc', 'vd'];
    for (const [i, n] of names.entries()) {
      await store.putResource(routeOf(n, i + 1), manifestSource);
      await store.putResource(vmOf(n), manifestSource);
    }
    const keys = names.flatMap((n) => [`Route/${n}`, `VirtualMachine/${n}`]);
    const four = await time(() => reconcile(keys));
    const booted = await time(async () => {
      for (;;) {
        const logs = await Promise.all(names.map((n) => readFile(path.join(vmPaths({ stateDir: dir }, n).runDir, 'serial.log'), 'utf8').catch(() => '')));
        if (logs.every((l) => l.includes('QWAMOS-GUEST-READY'))) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    });
    for (const n of names) await store.markForDeletion('VirtualMachine', n);
    await reconcile(names.map((n) => `VirtualMachine/${n}`));

    const rows = [
      { measure: `apply -> QMP running, controller (median of ${RUNS})`, value: median(controller), unit: 'ms' },
      { measure: 'same QEMU command by hand -> QMP running', value: median(hand), unit: 'ms' },
      { measure: 'controller overhead', value: median(controller) - median(hand), unit: 'ms' },
      { measure: `apply -> converged (Ready after a verifying pass, median of ${RUNS})`, value: median(converged), unit: 'ms' },
      { measure: 'ratio controller / by hand', value: median(controller) / median(hand), unit: 'x' },
      { measure: '4-VM apply (routes + VMs) -> all running', value: four.ms, unit: 'ms' },
      { measure: '... then until all 4 guests are up (TCG boot)', value: four.ms + booted.ms, unit: 'ms' },
    ];
    printTable('VirtualMachines (microvm, TCG, tiny guest)', rows);
    console.log(`wrote ${await writeResult('vms', { runs: RUNS, controllerMs: controller, convergedMs: converged, handMs: hand, ratio: median(controller) / median(hand), fourVmApplyMs: four.ms, fourVmBootedMs: four.ms + booted.ms })}`);
    return { controllerMs: median(controller), handMs: median(hand) };
  } finally {
    await engine.stop();
    await killQemusIn(dir); // whatever is still running was started here
    await host.cleanup();
    await rm(dir, { recursive: true, force: true });
  }
}

// Every row of the scale table in one run (issue 10), as a user runs it: 500 isolated Routes plus 500
// Stopped VMs in 10 signed files of 100 documents, inside a private test host netns, through the real
// bin. Rows:
//   start-up            `qwamos --help`, `qwamos get all` on an empty store (median of 5)
//   apply               `apply --wait` of the 1,000 from empty, against a hand-written `ip -batch`
//                       script making the same host changes (measured in this run: the ratio)
//   diff                `diff` of the same 1,000 (nothing changed)
//   daemon              RSS settled and peak with the 1,000 applied; RSS after 100 resyncs (growth)
//   drift heal          a Route's netns deleted by hand -> recreated by the daemon, p50 at 1,000
//   no-op resync        200 Routes in sync: time and processes spawned (in-process engine)
//   delete              `delete --wait` of the same 1,000
//   validate + verify   1,000 signed manifests: one core, pool cold, cache warm (bench/validate.ts)
//   VM start            apply -> QMP running, against the same QEMU command by hand (bench/vms.ts)
// Everything it makes (netns, state dir, daemon) is removed at the end, also when a step fails.
// BENCH_SCALE_ROWS=startup,apply,diff,daemon,noop,delete,validate,vms runs only those rows (the apply
// itself always runs: the other rows need the 1,000 in place; 'apply' adds its hand-written baseline).
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { observeRouteHost } from '../src/controllers/route/observe.ts';
import { planRouteNet, routeMark } from '../src/controllers/route/plan.ts';
import { processesSpawned } from '../src/drivers/exec.ts';
import { createEngine } from '../src/runtime.ts';
import { Store } from '../src/store/store.ts';
import { createTestHost, listAllNetns, type TestHost } from '../test/helpers/hostns.ts';
import { median, percentile, printTable, time, writeResult } from './lib.ts';
import { benchValidate } from './validate.ts';
import { benchVms } from './vms.ts';

const repo = fileURLToPath(new URL('../', import.meta.url));
const bin = path.join(repo, 'bin/qwamos.js');
const FILES = Number(process.env.BENCH_SCALE_FILES ?? 10);
const PER_FILE = Number(process.env.BENCH_SCALE_PER_FILE ?? 100); // documents: half Routes, half VMs
const PAIRS = (FILES * PER_FILE) / 2;
const RESYNCS = Number(process.env.BENCH_RESYNCS ?? 100);
const RESYNC_MS = 200;
const HEALS = Number(process.env.BENCH_HEALS ?? 11);
const NOOP_ROUTES = Math.min(200, PAIRS);
const ROWS = new Set((process.env.BENCH_SCALE_ROWS ?? 'startup,apply,diff,daemon,noop,delete,validate,vms').split(',').map((r) => r.trim()));
const wanted = (row: string) => ROWS.has(row);

const vmName = (i: number) => `s${i}`;

function fileText(f: number): string {
  const docs: string[] = [];
  for (let j = 0; j < PER_FILE / 2; j++) {
    const n = vmName(f * (PER_FILE / 2) + j);
    docs.push(
      `apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata:\n  name: ${n}\nspec:\n  vm: ${n}\n  mode: isolated\n`,
      `apiVersion: qwamos.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: ${n}\nspec:\n  runStrategy: Stopped\n  memory: 192Mi\n  boot:\n    kernel: guest/vmlinux\n    initrd: guest/initrd.cpio\n  network:\n    route: ${n}\n`,
    );
  }
  return docs.join('---\n');
}

/** The host changes of 500 isolated Routes, hand-written: netns, IPv6 off, lo up, a marked bridge. */
function handWrittenScript(prefix: string, names: string[]): string {
  const lines = [`ip -batch - <<'EOF'`, ...names.map((n) => `netns add ${prefix}-${n}`), 'EOF'];
  for (const n of names) {
    const ns = `${prefix}-${n}`;
    lines.push(
      `ip netns exec ${ns} sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6'`,
      `ip -n ${ns} -batch - <<'EOF'`,
      'link set lo up',
      `link add ${prefix}b-${n} type bridge forward_delay 0`,
      `link set ${prefix}b-${n} alias ${routeMark(prefix, `Route/${n}`)}`,
      `link set ${prefix}b-${n} up`,
      'EOF',
    );
  }
  return lines.join('\n');
}

async function removeNetnsOf(host: TestHost): Promise<void> {
  const mine = (await listAllNetns()).filter((n) => n.startsWith(`${host.prefix}-`));
  if (mine.length) await execa('ip', ['-force', '-batch', '-'], { input: mine.map((n) => `netns del ${n}`).join('\n'), reject: false });
}

/** VmRSS and VmHWM (peak) of a process, in MB. */
async function rssOf(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function benchScale(): Promise<void> {
  const host = await createTestHost();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-bench-scale-'));
  const stateDir = path.join(dir, 'state');
  const manifests = path.join(dir, 'manifests');
  const images = path.join(dir, 'images');
  const env = {
    ...process.env,
    QWAMOS_STATE_DIR: stateDir,
    QWAMOS_PREFIX: host.prefix,
    QWAMOS_HOST_NETNS: host.hostNs,
    QWAMOS_IMAGE_ROOT: images,
  };
  const qwamos = async (args: string[], extraEnv: NodeJS.ProcessEnv = {}) => {
    const r = await execa('node', [bin, ...args], { env: { ...env, ...extraEnv }, reject: false, cwd: dir, timeout: 600_000 });
    if (r.exitCode !== 0 && !(args[0] === 'diff' && r.exitCode === 1)) throw new Error(`qwamos ${args[0]} failed (${r.exitCode}): ${String(r.stderr).split('\n').slice(0, 3).join(' | ')}`);
    return r;
  };
  let daemon: ChildProcess | undefined;
  const names = Array.from({ length: PAIRS }, (_, i) => vmName(i));
  const rows: { measure: string; value: number; unit: string; goal: string }[] = [];
  // Each row is printed as it is measured, so a run that fails later still shows what it measured.
  const push = rows.push.bind(rows);
  rows.push = (...added) => {
    for (const r of added) console.error(`  ${r.measure}: ${r.unit === 'MB' || r.unit === 'x' ? r.value.toFixed(2) : Math.round(r.value)} ${r.unit}`);
    return push(...added);
  };
  const result: Record<string, unknown> = { routes: PAIRS, vms: PAIRS, files: FILES };
  try {
    // The build must be fresh, or the bin would run the sources through tsx.
    await execa('npm', ['run', 'build'], { cwd: repo });
    await mkdir(path.join(images, 'guest'), { recursive: true });
    for (const f of ['vmlinux', 'initrd.cpio']) await writeFile(path.join(images, 'guest', f), 'not booted: the VMs stay Stopped\n');
    await mkdir(manifests, { recursive: true });

    // --- start-up
    if (wanted('startup')) {
      const help: number[] = [];
      const getAll: number[] = [];
      for (let i = 0; i < 5; i++) {
        help.push((await time(() => qwamos(['--help']))).ms);
        getAll.push((await time(() => qwamos(['get', 'all']))).ms);
      }
      rows.push({ measure: 'qwamos --help (median of 5)', value: median(help), unit: 'ms', goal: '<= 200' });
      rows.push({ measure: 'qwamos get all, empty store (median of 5)', value: median(getAll), unit: 'ms', goal: '<= 200' });
      result.helpMs = median(help);
      result.getAllMs = median(getAll);
    }

    // --- signed manifests
    await qwamos(['keygen', 'bench', '--out', path.join(dir, 'keys')]);
    await mkdir(path.join(stateDir, 'trust'), { recursive: true });
    await copyFile(path.join(dir, 'keys/bench.pub'), path.join(stateDir, 'trust/bench.pub'));
    const files: string[] = [];
    for (let f = 0; f < FILES; f++) {
      const file = path.join(manifests, `part${f}.yaml`);
      await writeFile(file, fileText(f));
      files.push(file);
    }
    await qwamos(['sign', '-k', path.join(dir, 'keys/bench.key'), ...files]);

    // --- the hand-written baseline; it must build exactly the Routes' layout (their plan over it is empty)
    const scriptFile = path.join(dir, 'baseline.sh');
    await writeFile(scriptFile, handWrittenScript(host.prefix, names));
    let baseline = { ms: NaN };
    if (wanted('apply')) {
      baseline = await time(() => execa('bash', ['-e', scriptFile]));
      const layout = { prefix: host.prefix, hostNetns: host.hostNs };
      const seen = (await observeRouteHost(layout, 'all')).nets;
      const left = names.flatMap((n) => planRouteNet(host.prefix, `Route/${n}`, { vm: n, mode: 'isolated' }, seen.get(n)).map((a) => a.describe));
      if (left.length) throw new Error(`the hand-written baseline differs from the Route layout: ${left.slice(0, 3).join('; ')}`);
      await removeNetnsOf(host);
    }

    // --- apply, diff
    const apply = await time(() => qwamos(['apply', '--wait', '--timeout', '600s', '-f', manifests]));
    const netnsAfterApply = (await listAllNetns()).filter((n) => n.startsWith(`${host.prefix}-`)).length;
    if (netnsAfterApply !== PAIRS) throw new Error(`apply made ${netnsAfterApply} VM netns, not ${PAIRS}`);
    if (wanted('apply')) {
      rows.push({ measure: `apply --wait ${PAIRS} Routes + ${PAIRS} VMs from empty`, value: apply.ms, unit: 'ms', goal: '' });
      rows.push({ measure: '  same host changes, hand-written ip -batch script', value: baseline.ms, unit: 'ms', goal: '' });
      rows.push({ measure: '  ratio apply / hand-written', value: apply.ms / baseline.ms, unit: 'x', goal: '<= 1.5' });
      result.applyMs = apply.ms;
      result.handWrittenMs = baseline.ms;
      result.applyRatio = apply.ms / baseline.ms;
    }

    if (wanted('diff')) {
      const diffs: number[] = [];
      for (let i = 0; i < 3; i++) {
        const d = await time(() => qwamos(['diff', '-f', manifests]));
        if (d.value.exitCode !== 0) throw new Error(`diff found differences after apply: ${`${d.value.stdout}\n${d.value.stderr}`.trim().split('\n').slice(0, 4).join(' | ')}`);
        diffs.push(d.ms);
      }
      rows.push({ measure: 'diff of the same 1,000, nothing changed (median of 3)', value: median(diffs), unit: 'ms', goal: '<= 1000' });
      result.diffMs = median(diffs);
    }

    // --- the daemon: memory and drift heal at its normal resync interval, then memory over rapid resyncs
    const startDaemon = async (resync: string) => {
      const child = spawn('node', [bin, 'controller', '--resync', resync], { env: { ...env, QWAMOS_RESYNC: resync }, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
      daemon = child;
      const out = { log: '', lines: 0, lastAt: Date.now() };
      const take = (c: Buffer) => {
        out.log = (out.log + String(c)).slice(-4000);
        out.lines += String(c).split('\n').length - 1;
        out.lastAt = Date.now();
      };
      child.stdout!.on('data', take);
      child.stderr!.on('data', take);
      const started = Date.now();
      while (!out.log.includes('controller started')) {
        if (child.exitCode !== null || Date.now() - started > 60_000) throw new Error(`daemon did not start: ${out.log.slice(-500)}`);
        await sleep(20);
      }
      // Settled: its first pass logged every resource, then nothing for 3 s.
      while (Date.now() - out.lastAt < 3000 && Date.now() - started < 300_000) await sleep(200);
      return { child, pid: child.pid!, out };
    };
    const stopDaemon = async (child: ChildProcess) => {
      child.kill('SIGTERM');
      await new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once('exit', r)));
      daemon = undefined;
    };
    const sampleRss = async (pid: number) => {
      const samples: number[] = [];
      for (let i = 0; i < 10; i++) {
        samples.push((await rssOf(pid)).rss);
        await sleep(100);
      }
      return median(samples);
    };

    if (wanted('daemon')) {
      const first = await startDaemon('60s');
      const settled = await sampleRss(first.pid);
      // Drift heal at 1,000: a Route's netns deleted by hand, recreated by the daemon.
      const heals: number[] = [];
      for (let i = 0; i < HEALS; i++) {
        const victim = `${host.prefix}-${names[(i * 37) % PAIRS]}`;
        await sleep(300);
        const start = process.hrtime.bigint();
        await execa('ip', ['netns', 'del', victim]);
        const deadline = Date.now() + 60_000;
        for (;;) {
          if ((await listAllNetns()).includes(victim)) break;
          if (Date.now() > deadline) throw new Error(`${victim} was not healed within 60 s`);
          await sleep(5);
        }
        heals.push(Number(process.hrtime.bigint() - start) / 1e6);
      }
      const { peak } = await rssOf(first.pid);
      await stopDaemon(first.child);

      // Rapid resyncs: a full resync asked every RESYNC_MS (they queue behind each other: a full pass over
      // 1,000 resources takes longer than that), RSS sampled after the first settle and at the end.
      const second = await startDaemon(`${RESYNC_MS}ms`);
      const beforeResyncs = await sampleRss(second.pid);
      await sleep(RESYNCS * RESYNC_MS);
      const afterResyncs = await sampleRss(second.pid);
      const secondPeak = (await rssOf(second.pid)).peak;
      await stopDaemon(second.child);
      rows.push({ measure: 'daemon RSS with 1,000 resources, settled', value: settled, unit: 'MB', goal: '< 100' });
      rows.push({ measure: 'daemon RSS, peak (VmHWM)', value: Math.max(peak, secondPeak), unit: 'MB', goal: '< 100' });
      rows.push({ measure: `daemon RSS before / after ${RESYNCS} resyncs asked every ${RESYNC_MS} ms`, value: afterResyncs - beforeResyncs, unit: 'MB', goal: 'no growth' });
      rows.push({ measure: `drift heal at 1,000 (netns deleted), p50 of ${HEALS}`, value: median(heals), unit: 'ms', goal: '<= 200' });
      rows.push({ measure: '  drift heal p95', value: percentile(heals, 95), unit: 'ms', goal: '' });
      result.daemonRssMb = { settled, peak: Math.max(peak, secondPeak), beforeResyncs, afterResyncs, resyncs: RESYNCS, resyncEveryMs: RESYNC_MS };
      result.healMs = { p50: median(heals), p95: percentile(heals, 95), samples: heals };
    }

    // --- no-op resync of 200 Routes, in this process on the same store and host
    if (wanted('noop')) {
      const store = await Store.open(stateDir);
      const engine = createEngine(store, { env });
      try {
        await engine.sync();
        const keys = names.slice(0, NOOP_ROUTES).map((n) => `Route/${n}`);
        engine.start();
        engine.enqueue(keys);
        if (!(await engine.settle(keys, { untilConverged: true, timeoutMs: 120_000, since: 0 }))) throw new Error('routes did not settle');
        const runs: { ms: number; spawned: number }[] = [];
        for (let i = 0; i < 3; i++) {
          const before = processesSpawned();
          const since = Date.now();
          const t = await time(async () => {
            engine.enqueue(keys);
            await engine.settle(keys, { untilConverged: true, timeoutMs: 120_000, since });
          });
          const applied = keys.filter((k) => (engine.last.get(k)?.applied.length ?? 0) > 0).length;
          if (applied) throw new Error(`the no-op resync applied changes to ${applied} Routes`);
          runs.push({ ms: t.ms, spawned: processesSpawned() - before });
        }
        const noop = median(runs.map((r) => r.ms));
        rows.push({ measure: `no-op resync of ${NOOP_ROUTES} Routes (median of 3)`, value: noop, unit: 'ms', goal: '<= 200' });
        rows.push({ measure: '  processes spawned by it', value: Math.max(...runs.map((r) => r.spawned)), unit: '', goal: 'O(1)' });
        result.noopResync = { routes: NOOP_ROUTES, ms: noop, processes: Math.max(...runs.map((r) => r.spawned)), runs };
      } finally {
        await engine.stop();
      }
    }

    // --- delete
    if (wanted('delete')) {
      const del = await time(() => qwamos(['delete', '--wait', '--timeout', '600s', '-f', manifests]));
      const netnsLeft = (await listAllNetns()).filter((n) => n.startsWith(`${host.prefix}-`)).length;
      if (netnsLeft) throw new Error(`delete left ${netnsLeft} VM netns`);
      rows.push({ measure: 'delete --wait of the same 1,000', value: del.ms, unit: 'ms', goal: `<= apply (${Math.round(apply.ms)})` });
      result.deleteMs = del.ms;
    }

    printTable(`Scale: ${PAIRS} isolated Routes + ${PAIRS} Stopped VMs (${FILES} files of ${PER_FILE}), private test host`, rows.map((r) => ({ ...r, value: r.unit === 'MB' || r.unit === 'x' ? Number(r.value.toFixed(2)) : Math.round(r.value) })));
  } finally {
    if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
    await removeNetnsOf(host).catch(() => undefined);
    await host.cleanup();
    await rm(dir, { recursive: true, force: true });
  }

  // Signatures and VM start reuse their own benches (each prints its table too).
  const validate = wanted('validate') ? await benchValidate() : undefined;
  const vms = process.env.BENCH_SKIP_VMS || !wanted('vms') ? undefined : await benchVms();
  const more = [
    ...(validate
      ? [
          { measure: 'validate + verify 1,000 signed manifests, one core, no cache', value: Math.round(validate.oneCorePerSecond), unit: '/s', goal: '' },
          { measure: '  pool across cores, cold', value: Math.round(validate.poolColdPerSecond), unit: '/s', goal: '>= 2x 162' },
          { measure: '  unchanged files (cache warm)', value: Math.round(validate.cacheWarmPerSecond), unit: '/s', goal: 'not verified again' },
        ]
      : []),
    ...(vms
      ? [
          { measure: 'apply -> QMP running, controller (median)', value: Math.round(vms.controllerMs), unit: 'ms', goal: '' },
          { measure: '  same QEMU command by hand', value: Math.round(vms.handMs), unit: 'ms', goal: '' },
          { measure: '  controller overhead', value: Math.round(vms.controllerMs - vms.handMs), unit: 'ms', goal: '<= 50' },
        ]
      : []),
  ];
  if (more.length) printTable('Scale (continued): signatures and VM start', more);
  if (validate) result.validate = validate;
  if (vms) result.vmStart = { ...vms, overheadMs: vms.controllerMs - vms.handMs };
  console.log(`wrote ${await writeResult('scale', result)}`);
}

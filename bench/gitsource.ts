// A GitSource following a repository of 1,000 signed manifests (GpuTrustLevels: nothing on the host, so
// this is the git + signature + store cost alone): the first sync, a poll with nothing new, and a
// revision changing one file (only its signature is verified again). Each pass as the engine runs it:
// observe (resolve the ref), plan, apply (load the revision whole, store it as one unit), observe again.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { GitSourceController } from '../src/controllers/gitsource/index.ts';
import { makeWorld } from '../src/engine/contract.ts';
import { keyOf } from '../src/resources/keys.ts';
import { Store, type StoredResource } from '../src/store/store.ts';
import { generateKey, readSecretKey } from '../src/trust/keys.ts';
import { signBytes } from '../src/trust/signature.ts';
import { median, printTable, time, writeResult } from './lib.ts';

const COUNT = Number(process.env.BENCH_MANIFESTS ?? 1000);

const level = (i: number, n = 1) => `apiVersion: qwamos.io/v1alpha1\nkind: GpuTrustLevel\nmetadata:\n  name: l${i}\nspec:\n  level: ${n}\n`;

export async function benchGitSource(): Promise<void> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'qwamos-bench-git-'));
  try {
    const { secretPath, publicPath } = await generateKey('bench', 'ml-dsa-65', path.join(tmp, 'keys'));
    const key = await readSecretKey(secretPath);
    await mkdir(path.join(tmp, 'trust'), { mode: 0o700 });
    await copyFile(publicPath, path.join(tmp, 'trust', 'bench.pub'));
    const repo = path.join(tmp, 'repo');
    const git = (...args: string[]) =>
      execa('git', ['-c', 'user.name=bench', '-c', 'user.email=bench@example.invalid', '-c', 'commit.gpgsign=false', ...args], { cwd: repo, env: { GIT_CONFIG_NOSYSTEM: '1', HOME: tmp } });
    const sign = async (i: number, n = 1) => {
      const text = level(i, n);
      await writeFile(path.join(repo, 'hosts', `l${i}.yaml`), text);
      await writeFile(path.join(repo, 'hosts', `l${i}.yaml.sig`), signBytes(new TextEncoder().encode(text), key));
    };
    await mkdir(path.join(repo, 'hosts'), { recursive: true });
    await git('init', '-q', '-b', 'main');
    for (let i = 0; i < COUNT; i++) await sign(i);
    await git('add', '-A');
    await git('commit', '-q', '-m', 'all');

    const stateDir = path.join(tmp, 'state');
    const store = await Store.open(stateDir);
    await store.putResource({ apiVersion: 'qwamos.io/v1alpha1', kind: 'GitSource', metadata: { name: 'bench' }, spec: { url: repo, ref: { branch: 'main' }, path: 'hosts' } }, { path: '/bench.yaml', digest: 'd' });
    const controller = new GitSourceController({ stateDir, trustDir: path.join(tmp, 'trust'), imageRoot: tmp, prefix: 'qb', store });
    const pass = async () => {
      const src = (await store.getResource('GitSource', 'bench')) as StoredResource<'GitSource'>;
      let actual = (await controller.observe([src])).get(keyOf(src))!;
      const plan = controller.plan(src, actual);
      if (plan.actions.length) {
        await controller.apply(plan.actions, makeWorld(await store.listResources()));
        actual = (await controller.observe([src])).get(keyOf(src))!;
      }
      if (controller.plan(src, actual).actions.length || plan.hold) throw new Error(`not in sync: ${JSON.stringify(plan.hold)}`);
      const event = (await store.listEvents({ resource: 'GitSource/bench' })).at(-1);
      return { applied: plan.actions.length > 0, message: plan.actions.length ? (event?.message ?? '') : 'nothing new' };
    };

    const first = await time(pass);
    const idle = await time(pass);
    await sign(7, 2);
    await git('commit', '-q', '-am', 'one changed');
    const one = await time(pass);
    const stored = (await store.listResources('GpuTrustLevel')).length;
    if (stored !== COUNT) throw new Error(`stored ${stored} of ${COUNT}`);

    const verified = (m: string) => Number(/\((\d+) signatures? verified\)/.exec(m)?.[1] ?? 0);
    const rows = [
      { pass: 'first sync', ms: first.ms, verified: verified(first.value.message), vsFirst: 1 },
      { pass: 'poll, nothing new', ms: idle.ms, verified: 0, vsFirst: idle.ms / first.ms },
      { pass: 'one file changed', ms: one.ms, verified: verified(one.value.message), vsFirst: one.ms / first.ms },
    ];
    printTable(`GitSource, ${COUNT} signed manifests (local repository)`, rows);
    const file = await writeResult('gitsource', { manifests: COUNT, passes: rows });
    console.log(`wrote ${file}`);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

// ---- commit -> converged, with the daemon running -------------------------------------------------

const CONVERGE_ROUNDS = Number(process.env.BENCH_GIT_ROUNDS ?? 5);

/**
 * With the real daemon (the bin, in a private test host), a GitSource following a local repository of
 * signed Routes: each round commits one new signed Route and notifies the daemon the way a post-receive
 * hook does, then waits until the Route's netns exists on the host and its status is Ready. Two
 * notifiers: a line written to STATE/notify.sock (what `socat` in a hook does) and `qwamos notify`.
 */
export async function benchGitConverge(): Promise<void> {
  const { createSandbox, route } = await import('../test/e2e/harness.ts');
  const { TestRepo } = await import('../test/git/repo.ts');
  const { notifySocketPath } = await import('../src/git/notify.ts');
  const sb = await createSandbox();
  let daemon: import('node:child_process').ChildProcess | undefined;
  try {
    const key = await readSecretKey(path.join(sb.dir, 'keys/e2e.key'));
    const repo = await TestRepo.create(path.join(sb.dir, 'fleet'));
    const signRoute = async (name: string) => {
      const text = route(name, 'isolated', '');
      await repo.write(`routes/${name}.yaml`, text);
      await repo.write(`routes/${name}.yaml.sig`, signBytes(new TextEncoder().encode(text), key));
    };
    await signRoute('r0');
    await repo.commit('r0');
    const source = await sb.manifest('gitsource.yaml', `apiVersion: qwamos.io/v1alpha1\nkind: GitSource\nmetadata:\n  name: fleet\nspec:\n  url: ${repo.dir}\n  ref:\n    branch: main\n  path: routes\n  interval: 1h\n`);
    const applied = await sb.qwamos(['apply', '-f', source]);
    if (applied.exitCode !== 0) throw new Error(`apply: ${applied.stderr}`);
    daemon = await sb.startDaemon();
    const logLines: string[] = [];
    let roundStart = 0;
    if (process.env.BENCH_GIT_LOG) daemon.stdout!.on('data', (chunk: string) => logLines.push(...chunk.trim().split('\n').map((l) => `${(performance.now() - roundStart).toFixed(0)} ms ${l}`)));
    const store = await Store.open(sb.stateDir);
    const socketNotify = () =>
      new Promise<void>((resolve, reject) => {
        const conn = net.createConnection(notifySocketPath(sb.stateDir));
        conn.on('connect', () => conn.end('reconcile gitsource/fleet\n'));
        conn.resume(); // the answer is read and dropped, as socat in a hook would
        conn.on('close', () => resolve());
        conn.on('error', reject);
      });
    const cliNotify = async () => {
      const r = await sb.qwamos(['notify', 'gitsource/fleet']);
      if (r.exitCode !== 0) throw new Error(`notify: ${r.stderr}`);
    };
    const rows: Record<string, string | number>[] = [];
    let n = 0;
    for (const [notifier, notify] of [['notify.sock (socat)', socketNotify], ['qwamos notify', cliNotify]] as const) {
      const samples: { notified: number; stored: number; converged: number }[] = [];
      for (let i = 0; i < CONVERGE_ROUNDS; i++) {
        const name = `r${++n}`;
        await signRoute(name);
        await repo.commit(name);
        const start = performance.now();
        roundStart = start;
        await notify();
        const notified = performance.now() - start;
        let stored = 0;
        for (;;) {
          if (!stored && (await store.getResource('Route', name))) stored = performance.now() - start;
          const ready = existsSync(`/run/netns/${sb.host.prefix}-${name}`) && (await store.getStatus('Route', name))?.conditions.find((c) => c.type === 'Ready')?.status === 'True';
          if (ready) break;
          if (performance.now() - start > 30_000) throw new Error(`${name} did not converge in 30 s: ${JSON.stringify(await store.getStatus('Route', name))}`);
          await sleep(5);
        }
        samples.push({ notified, stored, converged: performance.now() - start });
        if (process.env.BENCH_GIT_LOG) process.stderr.write(`${notifier} ${name}: ${JSON.stringify(samples.at(-1))}\n${logLines.splice(0).join('\n')}\n`);
      }
      const col = (k: 'notified' | 'stored' | 'converged') => samples.map((s) => s[k]);
      rows.push({ notifier, rounds: samples.length, notifiedMs: median(col('notified')), storedMs: median(col('stored')), convergedMs: median(col('converged')), convergedMaxMs: Math.max(...col('converged')) });
    }
    printTable('GitSource: commit -> Route Ready on the host (daemon running, medians)', rows);
    const file = await writeResult('gitsource-converge', { rounds: CONVERGE_ROUNDS, rows });
    console.log(`wrote ${file}`);
  } finally {
    if (daemon && daemon.exitCode === null) {
      const exited = new Promise((r) => daemon!.once('exit', r));
      daemon.kill('SIGTERM');
      await exited;
    }
    await sb.cleanup();
  }
}

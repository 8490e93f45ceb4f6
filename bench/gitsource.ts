// A GitSource following a repository of 1,000 signed manifests (GpuTrustLevels: nothing on the host, so
// this is the git + signature + store cost alone): the first sync, a poll with nothing new, and a
// revision changing one file (only its signature is verified again). Each pass as the engine runs it:
// observe (resolve the ref), plan, apply (load the revision whole, store it as one unit), observe again.
import { execa } from 'execa';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { GitSourceController } from '../src/controllers/gitsource/index.ts';
import { makeWorld } from '../src/engine/contract.ts';
import { keyOf } from '../src/resources/keys.ts';
import { Store, type StoredResource } from '../src/store/store.ts';
import { generateKey, readSecretKey } from '../src/trust/keys.ts';
import { signBytes } from '../src/trust/signature.ts';
import { printTable, time, writeResult } from './lib.ts';

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

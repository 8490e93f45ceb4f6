// The GitSource controller against a real store, real local repositories (git CLI) and real ML-DSA
// signatures: observe -> plan -> apply -> observe, as the engine runs a pass (GpuTrustLevels: nothing on
// the host).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { GitSourceController } from '../../src/controllers/gitsource/index.ts';
import type { GitSourceAction, GitSourceActual } from '../../src/controllers/gitsource/plan.ts';
import { makeWorld, type Plan, type StatusReport } from '../../src/engine/contract.ts';
import { keyOf } from '../../src/resources/keys.ts';
import { Store, type StoredResource } from '../../src/store/store.ts';
import { generateKey, readSecretKey, type SecretKeyRecord } from '../../src/trust/keys.ts';
import { signBytes } from '../../src/trust/signature.ts';
import { TestRepo } from '../git/repo.ts';

let tmp: string;
let key: SecretKeyRecord;
let counter = 0;

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-gitsource-'));
  const { secretPath, publicPath } = await generateKey('signer', 'ml-dsa-65', path.join(tmp, 'keys'));
  key = await readSecretKey(secretPath);
  await fs.mkdir(path.join(tmp, 'trust'), { mode: 0o700 });
  await fs.copyFile(publicPath, path.join(tmp, 'trust', 'signer.pub'));
});

after(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const level = (name: string, n = 1) => `apiVersion: qwamos.io/v1alpha1\nkind: GpuTrustLevel\nmetadata:\n  name: ${name}\nspec:\n  level: ${n}\n`;

async function signed(repo: TestRepo, file: string, text: string): Promise<void> {
  await repo.write(file, text);
  await repo.write(`${file}.sig`, signBytes(new TextEncoder().encode(text), key));
}

interface Env {
  store: Store;
  stateDir: string;
  controller: GitSourceController;
  restart(): void;
  putSource(spec: Record<string, unknown>): Promise<void>;
  source(): Promise<StoredResource<'GitSource'>>;
  pass(): Promise<{ plan: Plan<GitSourceAction>; after: Plan<GitSourceAction>; report: StatusReport; actual: GitSourceActual }>;
}

async function setup(): Promise<Env> {
  const stateDir = path.join(tmp, `state${++counter}`);
  const store = await Store.open(stateDir);
  const make = () => new GitSourceController({ stateDir, trustDir: path.join(tmp, 'trust'), imageRoot: tmp, prefix: 'qt', store });
  const env: Env = {
    store,
    stateDir,
    controller: make(),
    restart() {
      env.controller = make();
    },
    async putSource(spec) {
      await store.putResource({ apiVersion: 'qwamos.io/v1alpha1', kind: 'GitSource', metadata: { name: 'fleet' }, spec }, { path: '/x/fleet.yaml', digest: 'd' });
    },
    async source() {
      return (await store.getResource('GitSource', 'fleet')) as StoredResource<'GitSource'>;
    },
    /** One engine pass: observe, plan, apply the actions, observe again. */
    async pass() {
      const src = await env.source();
      const world = () => store.listResources().then((all) => makeWorld(all));
      let actual = (await env.controller.observe([src])).get(keyOf(src))!;
      const plan = env.controller.plan(src, actual);
      if (plan.actions.length) {
        await env.controller.apply(plan.actions, await world());
        actual = (await env.controller.observe([src])).get(keyOf(src))!;
      }
      return { plan, after: env.controller.plan(src, actual), report: env.controller.report(src, actual), actual };
    },
  };
  return env;
}

const names = async (store: Store) =>
  (await store.listResources('GpuTrustLevel')).filter((r) => !r.deletionRequestedAt).map((r) => r.metadata.name).sort();
const condition = (report: StatusReport, type: string) => report.conditions?.filter((c) => c.type === type).at(-1);

describe('GitSource controller', () => {
  test('a revision is stored as one unit with its git source; a tampered commit stores nothing and names the file; a deleted file is pruned', async () => {
    const env = await setup();
    const repo = await TestRepo.create(path.join(tmp, `r${counter}`));
    await signed(repo, 'hosts/a.yaml', level('a'));
    await signed(repo, 'hosts/b.yaml', level('b'));
    const first = await repo.commit('two');
    await env.putSource({ url: repo.dir, ref: { branch: 'main' }, path: 'hosts' });

    const p1 = await env.pass();
    assert.equal(p1.plan.actions[0]?.type, 'apply-revision');
    assert.deepEqual(p1.after, { actions: [] }, 'in sync after the apply');
    assert.deepEqual(await names(env.store), ['a', 'b']);
    const a = await env.store.getResource('GpuTrustLevel', 'a');
    assert.equal(a?.source.path, 'gitsource/fleet:hosts/a.yaml');
    assert.equal(a?.source.commit, first);
    assert.equal(a?.source.signer?.keyId, key.keyId);
    assert.equal(p1.report.fields?.lastAppliedRevision, `main@sha1:${first}`);
    assert.equal(p1.report.fields?.lastFetchedRevision, `main@sha1:${first}`);
    assert.match(String(p1.report.fields?.appliedDigest), /^sha256:[0-9a-f]{64}$/);
    assert.equal(condition(p1.report, 'Ready')?.status, 'True');

    await repo.write('hosts/b.yaml', level('b', 4)); // not re-signed
    await signed(repo, 'hosts/c.yaml', level('c'));
    const bad = await repo.commit('tampered');
    const p2 = await env.pass();
    assert.equal(p2.after.hold?.type, 'Stalled');
    assert.equal(p2.after.hold?.reason, 'VerificationFailed');
    assert.deepEqual(await names(env.store), ['a', 'b'], 'nothing of the bad revision is stored');
    assert.equal(((await env.store.getResource("GpuTrustLevel", "b")) as StoredResource<"GpuTrustLevel"> | undefined)?.spec.level, 1);
    assert.deepEqual(p2.report.fields?.lastError, { file: 'hosts/b.yaml', key: 'signature', reason: p2.actual.state.failed?.error?.reason });
    assert.equal(p2.report.fields?.lastAttemptedRevision, `main@sha1:${bad}`);
    assert.equal(p2.report.fields?.lastAppliedRevision, `main@sha1:${first}`);
    assert.equal(condition(p2.report, 'VerificationFailed')?.status, 'True');
    assert.equal(condition(p2.report, 'Ready')?.status, 'False');
    assert.match(condition(p2.report, 'Ready')!.message, /hosts\/b\.yaml: signature: tampered/);
    // The same refused commit is not loaded again on the next poll.
    assert.equal((await env.pass()).plan.actions.length, 0);

    await signed(repo, 'hosts/b.yaml', level('b', 4));
    await repo.remove('hosts/a.yaml');
    await repo.remove('hosts/a.yaml.sig');
    await repo.commit('fixed, a removed');
    const p3 = await env.pass();
    assert.deepEqual(p3.after, { actions: [] });
    assert.deepEqual(await names(env.store), ['b', 'c'], 'a pruned');
    assert.ok((await env.store.getResource('GpuTrustLevel', 'a'))?.deletionRequestedAt, 'a is marked for deletion');
    assert.equal(condition(p3.report, 'VerificationFailed')?.status, 'False');
    assert.equal(condition(p3.report, 'Ready')?.status, 'True');
  });

  test('a force-push to an older commit is refused, then accepted once through acceptRevision, also after a restart', async () => {
    const env = await setup();
    const repo = await TestRepo.create(path.join(tmp, `r${counter}`));
    await signed(repo, 'a.yaml', level('a'));
    const old = await repo.commit('one');
    await signed(repo, 'b.yaml', level('b'));
    await repo.commit('two');
    await env.putSource({ url: repo.dir });
    await env.pass();
    assert.deepEqual(await names(env.store), ['a', 'b']);

    await repo.git('reset', '-q', '--hard', old);
    env.restart(); // the applied commit comes from the state file
    const refused = await env.pass();
    assert.equal(refused.after.hold?.reason, 'RollbackRefused');
    assert.match(refused.after.hold!.message, new RegExp(`not a descendant of the applied sha1:[0-9a-f]{40} \\(merge base sha1:${old}\\)`));
    assert.deepEqual(await names(env.store), ['a', 'b']);

    await env.putSource({ url: repo.dir, acceptRevision: old });
    const accepted = await env.pass();
    assert.deepEqual(accepted.after, { actions: [] });
    assert.deepEqual(await names(env.store), ['a']);
    assert.equal(accepted.report.fields?.consumedAcceptRevision, old);

    // Consumed: moving forward and back to the same commit again is refused.
    await signed(repo, 'c.yaml', level('c'));
    await repo.commit('three');
    await env.pass();
    await repo.git('reset', '-q', '--hard', old);
    env.restart();
    assert.equal((await env.pass()).after.hold?.reason, 'RollbackRefused');
  });

  test('an owned resource changed behind the source (apply -f) is a conflict: git wins and it is recorded', async () => {
    const env = await setup();
    const repo = await TestRepo.create(path.join(tmp, `r${counter}`));
    await signed(repo, 'a.yaml', level('a'));
    await repo.commit('one');
    await env.putSource({ url: repo.dir });
    await env.pass();
    await env.store.putResource({ apiVersion: 'qwamos.io/v1alpha1', kind: 'GpuTrustLevel', metadata: { name: 'a' }, spec: { level: 3 } }, { path: '/tmp/mine.yaml', digest: 'x' });
    const p = await env.pass();
    assert.equal(p.plan.actions[0]?.type, 'apply-revision');
    assert.deepEqual(p.after, { actions: [] });
    const a = await env.store.getResource('GpuTrustLevel', 'a');
    assert.equal((a as StoredResource<"GpuTrustLevel"> | undefined)?.spec.level, 1);
    assert.equal(a?.source.path, 'gitsource/fleet:a.yaml');
    const events = await env.store.listEvents({ resource: 'GitSource/fleet' });
    assert.ok(events.some((e) => e.reason === 'Conflict' && e.type === 'Warning' && e.message.includes('GpuTrustLevel/a')), JSON.stringify(events));
  });

  test('a suspended source is not fetched: a new commit waits until it is resumed', async () => {
    const env = await setup();
    const repo = await TestRepo.create(path.join(tmp, `r${counter}`));
    await signed(repo, 'a.yaml', level('a'));
    await repo.commit('one');
    await env.putSource({ url: repo.dir, suspend: true });
    const p = await env.pass();
    assert.deepEqual(p.plan, { actions: [] });
    assert.equal(p.actual.fetch, undefined, 'not fetched');
    assert.equal(condition(p.report, 'Ready')?.reason, 'Suspended');
    assert.deepEqual(await names(env.store), []);
    await env.putSource({ url: repo.dir });
    assert.equal((await env.pass()).plan.actions[0]?.type, 'apply-revision');
    assert.deepEqual(await names(env.store), ['a']);
  });

  test('a new trust store verifies every signature again (its digest is part of the cache key)', async () => {
    const env = await setup();
    const repo = await TestRepo.create(path.join(tmp, `r${counter}`));
    await signed(repo, 'a.yaml', level('a'));
    await signed(repo, 'b.yaml', level('b'));
    await repo.commit('one');
    await env.putSource({ url: repo.dir });
    await env.pass();
    const verifiedIn = async () => (await env.store.listEvents({ resource: 'GitSource/fleet' })).filter((e) => e.reason === 'RevisionApplied').at(-1)?.message ?? '';
    assert.match(await verifiedIn(), /\(2 signatures verified\)/);
    await signed(repo, 'b.yaml', level('b', 2));
    await repo.commit('b changed');
    await env.pass();
    assert.match(await verifiedIn(), /\(1 signature verified\)/, 'a.yaml came from the cache');
    // Another key trusted too: the trust store's digest changes, so cached outcomes no longer count.
    const other = await generateKey('other', 'ml-dsa-65', path.join(tmp, `keys${counter}`));
    const trustCopy = path.join(tmp, 'trust');
    await fs.copyFile(other.publicPath, path.join(trustCopy, `other${counter}.pub`));
    try {
      await signed(repo, 'b.yaml', level('b', 3));
      await repo.commit('b again');
      await env.pass();
      assert.match(await verifiedIn(), /\(2 signatures verified\)/);
    } finally {
      await fs.rm(path.join(trustCopy, `other${counter}.pub`));
    }
  });

  test('watch asks for a pass every interval (with jitter), and at once when an owned resource is changed behind the source', async (t) => {
    t.mock.timers.enable({ apis: ['setInterval', 'Date'] });
    const env = await setup();
    const repo = await TestRepo.create(path.join(tmp, `r${counter}`));
    await signed(repo, 'a.yaml', level('a'));
    await repo.commit('one');
    await env.putSource({ url: repo.dir, interval: '10s' });
    await env.pass();
    const asked: string[][] = [];
    let world = makeWorld(await env.store.listResources());
    const w = env.controller.watch((keys) => asked.push(keys), () => world);
    try {
      t.mock.timers.tick(500); // the first tick schedules the first poll
      assert.deepEqual(asked, []);
      t.mock.timers.tick(8_500);
      assert.deepEqual(asked, [], 'not before 90 % of the interval');
      t.mock.timers.tick(2_500);
      assert.deepEqual(asked, [['GitSource/fleet']], 'by 110 % of the interval');
      await env.store.putResource({ apiVersion: 'qwamos.io/v1alpha1', kind: 'GpuTrustLevel', metadata: { name: 'a' }, spec: { level: 5 } }, { path: '/tmp/mine.yaml', digest: 'x' });
      world = makeWorld(await env.store.listResources());
      t.mock.timers.tick(500);
      assert.deepEqual(asked.at(-1), ['GitSource/fleet'], 'an owned resource applied from a file: a pass at once');
      assert.equal(asked.length, 2);
    } finally {
      w.close();
    }
  });

  test('a deleted source deletes what it applied and forgets its state', async () => {
    const env = await setup();
    const repo = await TestRepo.create(path.join(tmp, `r${counter}`));
    await signed(repo, 'a.yaml', level('a'));
    await repo.commit('one');
    await env.putSource({ url: repo.dir });
    await env.pass();
    await env.store.markForDeletion('GitSource', 'fleet');
    const p = await env.pass();
    assert.equal(p.plan.actions[0]?.type, 'forget-source');
    assert.deepEqual(p.after, { actions: [] });
    assert.deepEqual(await names(env.store), []);
    await assert.rejects(fs.stat(path.join(env.stateDir, 'git', 'fleet.state.json')));
  });
});

// GitSources of two cluster nodes on a real etcd and real local repositories with real ML-DSA signatures:
// a node proposes a revision it fetched and verified (compare-and-swap), every node applies only the agreed
// one and only once it has that revision itself; a node that has not fetched it says so and keeps the last.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { GitSourceController } from '../../src/controllers/gitsource/index.ts';
import { makeWorld, OutcomeError, type StatusReport } from '../../src/engine/contract.ts';
import { keyOf } from '../../src/resources/keys.ts';
import { Store, type StoredResource } from '../../src/store/store.ts';
import { generateKey, readSecretKey, type SecretKeyRecord } from '../../src/trust/keys.ts';
import { signBytes } from '../../src/trust/signature.ts';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { Membership } from '../../src/cluster/membership.ts';
import { readAgreedRevision } from '../../src/cluster/revision.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';
import { TestRepo } from '../git/repo.ts';

const keys = clusterKeys();
const level = (name: string) => `apiVersion: qwamos.io/v1alpha1\nkind: GpuTrustLevel\nmetadata:\n  name: ${name}\nspec:\n  level: 1\n`;
const condition = (report: StatusReport, type: string) => report.conditions?.filter((c) => c.type === type).at(-1);

describe('GitSource in a cluster: the agreed revision', () => {
  let tmp: string;
  let key: SecretKeyRecord;
  let etcd: EtcdCluster;
  let client: EtcdClient;
  const members: Membership[] = [];
  before(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-gitcluster-'));
    const { secretPath, publicPath } = await generateKey('signer', 'ml-dsa-65', path.join(tmp, 'keys'));
    key = await readSecretKey(secretPath);
    await fs.mkdir(path.join(tmp, 'trust'), { mode: 0o700 });
    await fs.copyFile(publicPath, path.join(tmp, 'trust', 'signer.pub'));
    etcd = await startEtcd();
    client = new EtcdClient(etcd.endpoints);
  });
  after(async () => {
    for (const m of members) await m.leave().catch(() => {});
    client?.close();
    await etcd?.stop();
    await fs.rm(tmp, { recursive: true, force: true });
  });

  async function signed(repo: TestRepo, file: string, text: string): Promise<void> {
    await repo.write(file, text);
    await repo.write(`${file}.sig`, signBytes(new TextEncoder().encode(text), key));
  }

  /** A node: its own state dir (store + lease file), joined to etcd, following `url`. */
  async function node(name: string, url: string) {
    const stateDir = path.join(tmp, name);
    const store = await Store.open(stateDir);
    members.push(await Membership.join({ client, stateDir, record: { name, role: 'worker', capacity: { cpus: 2, memoryMiB: 2048 }, labels: {}, gpuLevels: [] } }));
    await store.putResource({ apiVersion: 'qwamos.io/v1alpha1', kind: 'GitSource', metadata: { name: 'fleet' }, spec: { url } }, { path: '/x/fleet.yaml', digest: 'd' });
    const controller = new GitSourceController({ stateDir, trustDir: path.join(tmp, 'trust'), imageRoot: tmp, prefix: 'qt', store });
    return {
      store,
      /** One engine pass; a Waiting/Failed outcome thrown by apply is returned, not thrown. */
      async pass() {
        const src = (await store.getResource('GitSource', 'fleet')) as StoredResource<'GitSource'>;
        let actual = (await controller.observe([src])).get(keyOf(src))!;
        const plan = controller.plan(src, actual);
        let outcome: OutcomeError['outcome'] | undefined;
        if (plan.actions.length) {
          try {
            await controller.apply(plan.actions, makeWorld(await store.listResources()));
          } catch (err) {
            if (!(err instanceof OutcomeError)) throw err;
            outcome = err.outcome;
          }
          actual = (await controller.observe([src])).get(keyOf(src))!;
        }
        return { plan, outcome, after: controller.plan(src, actual), report: controller.report(src, actual) };
      },
      async levels() {
        return (await store.listResources('GpuTrustLevel')).filter((r) => !r.deletionRequestedAt).map((r) => r.metadata.name).sort();
      },
    };
  }

  test('propose, follow, wait for a revision not fetched yet, one winner of a race, an unverified commit never proposed', async () => {
    const origin = await TestRepo.create(path.join(tmp, 'origin'));
    await signed(origin, 'a.yaml', level('a'));
    const c1 = await origin.commit('a');
    // n2 follows its own copy of the repository, which lags behind (a mirror not updated yet).
    const copy = new TestRepo(path.join(tmp, 'copy'));
    await origin.git('clone', '-q', origin.dir, copy.dir);
    const n1 = await node('n1', origin.dir);
    const n2 = await node('n2', copy.dir);

    // No agreed revision yet: n1 verifies C1 and proposes it; it is agreed and applied.
    const first = await n1.pass();
    assert.match(first.plan.actions[0]!.describe, /^propose sha1:[0-9a-f]+ to the cluster and apply it once agreed$/);
    assert.deepEqual(first.after, { actions: [] });
    assert.deepEqual(await n1.levels(), ['a']);
    const agreed1 = await readAgreedRevision(client, keys, keys.sourceRevision('fleet'));
    assert.deepEqual([agreed1?.commit, agreed1?.by], [c1, 'n1']);

    // n2 fetched the same: it applies the agreed revision, proposing nothing.
    const second = await n2.pass();
    assert.match(second.plan.actions[0]!.describe, /\(agreed in the cluster\)$/);
    assert.deepEqual(await n2.levels(), ['a']);
    assert.equal((await readAgreedRevision(client, keys, keys.sourceRevision('fleet')))?.version, agreed1?.version, 'the agreed key untouched');

    // C2 in the origin: n1 proposes and applies it; n2 has not fetched it: it says so and keeps C1.
    await signed(origin, 'b.yaml', level('b'));
    const c2 = await origin.commit('b');
    await n1.pass();
    assert.equal((await readAgreedRevision(client, keys, keys.sourceRevision('fleet')))?.commit, c2);
    assert.deepEqual(await n1.levels(), ['a', 'b']);
    const lagging = await n2.pass();
    assert.deepEqual(lagging.plan.actions, []);
    assert.equal(lagging.plan.hold?.reason, 'RevisionUnavailable');
    assert.match(lagging.plan.hold!.message, new RegExp(`the cluster agreed on sha1:${c2} \\(proposed by n1\\), which this node has not fetched \\(it has sha1:${c1}\\)`));
    assert.equal(condition(lagging.report, 'RevisionUnavailable')?.status, 'True');
    assert.equal(condition(lagging.report, 'Ready')?.status, 'False');
    assert.deepEqual(await n2.levels(), ['a'], 'the last applied revision stays');

    // Once n2 has it, it applies it.
    await copy.git('pull', '-q', '--ff-only');
    await n2.pass();
    assert.deepEqual(await n2.levels(), ['a', 'b']);
    assert.equal((await readAgreedRevision(client, keys, keys.sourceRevision('fleet')))?.commit, c2);

    // Both fetch C3 and propose it from the same view at once: exactly one proposal wins; both apply C3.
    await signed(origin, 'c.yaml', level('c'));
    const c3 = await origin.commit('c');
    await copy.git('pull', '-q', '--ff-only');
    const [r1, r2] = await Promise.all([n1.pass(), n2.pass()]);
    const lost = [r1, r2].filter((r) => r.outcome);
    assert.ok(lost.length <= 1, 'at most one proposal refused');
    for (const r of lost) assert.equal(r.outcome?.reason, 'RevisionNotAgreed');
    for (const n of [n1, n2]) await n.pass();
    const agreed3 = await readAgreedRevision(client, keys, keys.sourceRevision('fleet'));
    assert.equal(agreed3?.commit, c3);
    assert.deepEqual(await n1.levels(), ['a', 'b', 'c']);
    assert.deepEqual(await n2.levels(), ['a', 'b', 'c']);

    // A commit whose signature does not verify is refused by verification and never proposed.
    await origin.write('d.yaml', level('d'));
    await origin.write('d.yaml.sig', signBytes(new TextEncoder().encode(level('tampered')), key));
    await origin.commit('d, badly signed');
    const bad = await n1.pass();
    assert.equal(condition(bad.report, 'VerificationFailed')?.status, 'True');
    assert.equal((await readAgreedRevision(client, keys, keys.sourceRevision('fleet')))?.version, agreed3?.version, 'nothing proposed');
    assert.deepEqual(await n1.levels(), ['a', 'b', 'c']);
  });
});

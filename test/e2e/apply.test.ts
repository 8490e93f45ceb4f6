// apply end to end against issue #12: concurrent applies, symlinked manifests, prune scope, the signer,
// and --wait after a delete. The real bin inside a private test host.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { reconcileNow } from '../../src/cli/reconcile-now.ts';
import { DAEMON_LEASE } from '../../src/runtime.ts';
import { Store } from '../../src/store/store.ts';
import { createSandbox, route, type Sandbox } from './harness.ts';

const routeFor = (name: string, vmName: string, address: string) =>
  route(name, 'isolated', address).replace(`vm: ${name}`, `vm: ${vmName}`);

describe('apply (issue #12)', () => {
  let sb: Sandbox;
  before(async () => (sb = await createSandbox()));
  after(async () => sb?.cleanup());

  async function signed(file: string, text: string): Promise<string> {
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, text);
    const r = await sb.qwamos(['sign', '-k', path.join(sb.dir, 'keys/e2e.key'), file]);
    assert.equal(r.exitCode, 0, r.stderr);
    return file;
  }

  test('two applies at once with rival Routes for one VM: one is stored, the other fails naming file, line and resource', async () => {
    const alpha = await signed(path.join(sb.dir, 'race/alpha.yaml'), routeFor('alpha', 'shared', '10.100.0.2/24'));
    const beta = await signed(path.join(sb.dir, 'race/beta.yaml'), routeFor('beta', 'shared', '10.100.0.3/24'));
    const store = await Store.open(sb.stateDir);
    // Hold the write lock while both start: both read the empty store and pass their first check.
    let release!: () => void;
    const held = store.withLock(() => new Promise<void>((r) => (release = r)), { timeoutMs: 60_000 });
    const runs = Promise.all([sb.qwamos(['apply', '-f', alpha]), sb.qwamos(['apply', '-f', beta])]);
    await new Promise((r) => setTimeout(r, 4000));
    release();
    await held;
    const [a, b] = await runs;
    const codes = [a.exitCode, b.exitCode].sort();
    assert.deepEqual(codes, [0, 1], `${a.stderr}\n${b.stderr}`);
    const loser = a.exitCode === 1 ? { run: a, file: alpha, key: 'Route/alpha' } : { run: b, file: beta, key: 'Route/beta' };
    const line = loser.run.stderr.split('\n').find((l) => l.includes('already has Route'));
    assert.ok(line, loser.run.stderr);
    assert.ok(line.startsWith(`${loser.file}:`), line);
    assert.match(line, new RegExp(`^[^:]+:\\d+:\\d+: ${loser.key}: spec\\.vm: VM "shared" already has Route`));
    assert.match(loser.run.stderr, /nothing was applied/);
    const routes = (await store.listResources('Route')).map((r) => r.metadata.name).filter((n) => n === 'alpha' || n === 'beta');
    assert.equal(routes.length, 1, `stored: ${routes}`);
    await sb.qwamos(['delete', `Route/${routes[0]}`]);
  });

  test('symlinked manifests are applied (and verified) and kept by --prune; a skipped entry blocks --prune', async () => {
    const dir = path.join(sb.dir, 'links');
    const other = path.join(sb.dir, 'elsewhere');
    await signed(path.join(dir, 'l1.yaml'), route('l1', 'isolated', '10.100.1.2/24'));
    await signed(path.join(other, 'l2.yaml'), route('l2', 'isolated', '10.100.1.3/24'));
    await symlink(path.join(other, 'l2.yaml'), path.join(dir, 'l2.yaml'));
    await symlink(path.join(other, 'l2.yaml.sig'), path.join(dir, 'l2.yaml.sig'));
    const first = await sb.qwamos(['apply', '-f', dir]);
    assert.equal(first.exitCode, 0, first.stderr);
    assert.match(first.stdout, /^Route\/l2 created$/m);
    const again = await sb.qwamos(['apply', '-f', dir, '--prune']);
    assert.equal(again.exitCode, 0, again.stderr);
    assert.doesNotMatch(again.stdout, /deleted/);
    const store = await Store.open(sb.stateDir);
    assert.ok(await store.getResource('Route', 'l2'));
    assert.equal((await store.getResource('Route', 'l2'))?.deletionRequestedAt, undefined);

    // A symlink to a directory, a loop and a dangling link are reported; with them --prune refuses.
    await symlink(other, path.join(dir, 'subdir'));
    await symlink(path.join(dir, 'loop.yaml'), path.join(dir, 'loop.yaml'));
    const refused = await sb.qwamos(['apply', '-R', '-f', dir, '--prune']);
    assert.equal(refused.exitCode, 1, refused.stderr);
    assert.match(refused.stderr, /subdir:1:1: file: warning: skipped: symbolic link to a directory/);
    assert.match(refused.stderr, /loop\.yaml:1:1: file: warning: skipped: symbolic link loop/);
    assert.match(refused.stderr, /^error: refusing to prune: 2 entries were skipped/m);
    assert.equal((await store.getResource('Route', 'l1'))?.deletionRequestedAt, undefined);
    await rm(path.join(dir, 'subdir'));
    await rm(path.join(dir, 'loop.yaml'));
    await sb.qwamos(['delete', 'Route/l1', 'Route/l2']);
  });

  test('--prune without -R keeps what -R applied from subdirectories', async () => {
    const dir = path.join(sb.dir, 'tree');
    await signed(path.join(dir, 't1.yaml'), route('t1', 'isolated', '10.100.2.2/24'));
    await signed(path.join(dir, 'sub', 't2.yaml'), route('t2', 'isolated', '10.100.2.3/24'));
    const all = await sb.qwamos(['apply', '-R', '-f', dir]);
    assert.equal(all.exitCode, 0, all.stderr);
    assert.match(all.stdout, /^Route\/t2 created$/m);
    const flat = await sb.qwamos(['apply', '-f', dir, '--prune']);
    assert.equal(flat.exitCode, 0, flat.stderr);
    assert.doesNotMatch(flat.stdout, /t2/);
    const store = await Store.open(sb.stateDir);
    assert.equal((await store.getResource('Route', 't2'))?.deletionRequestedAt, undefined);
    // With -R the file's removal is pruned.
    await rm(path.join(dir, 'sub'), { recursive: true });
    const pruned = await sb.qwamos(['apply', '-R', '-f', dir, '--prune']);
    assert.equal(pruned.exitCode, 0, pruned.stderr);
    assert.match(pruned.stdout, /^Route\/t2 deleted$/m);
    await sb.qwamos(['delete', 'Route/t1']);
  });

  test('the signer is kept with the resource and shown by describe and get -o wide', async () => {
    const file = await signed(path.join(sb.dir, 'signed/s1.yaml'), route('s1', 'isolated', '10.100.3.2/24'));
    const r = await sb.qwamos(['apply', '-f', file]);
    assert.equal(r.exitCode, 0, r.stderr);
    const store = await Store.open(sb.stateDir);
    const signer = (await store.getResource('Route', 's1'))?.source.signer;
    assert.equal(signer?.alg, 'ml-dsa-65');
    assert.equal(signer?.name, 'e2e');
    assert.match(signer?.keyId ?? '', /^[0-9a-f]{32}$/);
    const desc = await sb.qwamos(['describe', 'Route/s1']);
    assert.match(desc.stdout, new RegExp(`^ {2}Signed By: +e2e ${signer!.keyId} \\(ml-dsa-65\\)$`, 'm'));
    const wide = await sb.qwamos(['get', 'Route', '-o', 'wide']);
    assert.match(wide.stdout, new RegExp(`e2e:${signer!.keyId.slice(0, 12)}`));
    await sb.qwamos(['delete', 'Route/s1']);
  });
});

describe('apply --wait with a running controller', () => {
  let dir: string;
  before(async () => {
    const { mkdtemp } = await import('node:fs/promises');
    const os = await import('node:os');
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-wait-'));
  });
  after(async () => rm(dir, { recursive: true, force: true }));

  test('waits for a status newer than its own write, not one left from before a delete', async () => {
    const store = await Store.open(path.join(dir, 'state'));
    const manifest = { apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name: 'w1' }, spec: { vm: 'w1', mode: 'isolated' } };
    const source = { path: '/m/w1.yaml', digest: 'a'.repeat(64) };
    // This process plays the controller: the CLI side only watches the store.
    const lease = await store.acquireLease(DAEMON_LEASE);
    assert.ok(lease);
    try {
      // A life of w1 that ended: its Ready status (generation 1) was left behind.
      await store.putResource(manifest, source);
      await store.updateStatus('Route', 'w1', { phase: 'Ready', observedGeneration: 1 });
      await rm(path.join(store.dir, 'resources', 'Route', 'w1.json'));
      await new Promise((r) => setTimeout(r, 5));
      const { applied } = await store.applyResources([{ manifest, source }]);
      const a = applied[0]!;
      assert.equal(a.result, 'created');
      const since = new Map([['Route/w1', { generation: a.generation, createdAt: a.appliedAt }]]);
      const stale = await reconcileNow(store, ['Route/w1'], { wait: true, timeoutMs: 600, since });
      assert.equal(stale.timedOut, true, 'the status from before the apply is not taken for this apply');
      assert.equal(stale.outcomes.get('Route/w1')?.phase, 'Pending');
      // The controller's status for this apply arrives (the engine names the record version it acted on).
      setTimeout(() => void store.updateStatus('Route', 'w1', { phase: 'Ready', observedGeneration: 1, fields: { machine: { appliedAt: a.appliedAt } } }), 200);
      const fresh = await reconcileNow(store, ['Route/w1'], { wait: true, timeoutMs: 5000, since });
      assert.equal(fresh.timedOut, false);
      assert.equal(fresh.outcomes.get('Route/w1')?.phase, 'Ready');

      // Deleted, then re-applied while the deletion was pending: a new generation, so the old Ready is stale.
      await store.markForDeletion('Route', 'w1');
      const again = (await store.applyResources([{ manifest, source }])).applied[0]!;
      assert.equal(again.generation, 2);
      const waited = await reconcileNow(store, ['Route/w1'], { wait: true, timeoutMs: 600, since: new Map([['Route/w1', { generation: again.generation }]]) });
      assert.equal(waited.outcomes.get('Route/w1')?.phase, 'Pending');
    } finally {
      await lease.release();
    }
  });
});

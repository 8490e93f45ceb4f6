// The store against broken state files, re-applied tombstones and batched writes (issue #12).
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { CorruptStateError, Store, type Manifest } from '../src/store/store.ts';

const made: string[] = [];
after(async () => {
  await Promise.all(made.map((d) => fs.rm(d, { recursive: true, force: true })));
});

async function openStore(): Promise<{ store: Store; warnings: string[] }> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-storeh-'));
  made.push(d);
  const warnings: string[] = [];
  const store = await Store.open(path.join(d, 'state'), { warn: (m) => warnings.push(m) });
  return { store, warnings };
}

const route = (name: string, spec: Record<string, unknown> = { vm: name, mode: 'direct' }): Manifest => ({
  apiVersion: 'qwamos.io/v1alpha1',
  kind: 'Route',
  metadata: { name },
  spec,
});
const src = (name: string) => ({ path: `/m/${name}.yaml`, digest: 'a'.repeat(64) });

describe('delete then re-apply', () => {
  test('deleteResource with ifDeletionRequestedAt keeps a resource re-applied meanwhile', async () => {
    const { store } = await openStore();
    await store.putResource(route('r1'), src('r1'));
    await store.markForDeletion('Route', 'r1');
    const tombstone = (await store.getResource('Route', 'r1'))!.deletionRequestedAt!;
    assert.ok(tombstone);
    // Re-applied while the engine was deleting it from the host.
    assert.deepEqual(await store.putResource(route('r1'), src('r1')), { result: 'created', generation: 2 });
    const back = await store.getResource('Route', 'r1');
    assert.equal(back?.deletionRequestedAt, undefined, 're-applying takes the tombstone back');
    assert.equal(back?.generation, 2, 'the generation moves so the engine starts a fresh pass');
    // The engine finishes the deletion it started: the record must survive.
    assert.equal(await store.deleteResource('Route', 'r1', { ifDeletionRequestedAt: tombstone }), false);
    assert.ok(await store.getResource('Route', 'r1'));
    // Deleted again: a deletion acting on the current tombstone removes it.
    await store.markForDeletion('Route', 'r1');
    const second = (await store.getResource('Route', 'r1'))!.deletionRequestedAt!;
    assert.equal(await store.deleteResource('Route', 'r1', { ifDeletionRequestedAt: second }), true);
    assert.equal(await store.getResource('Route', 'r1'), undefined);
  });
});

describe('unusable state files', () => {
  test('a truncated resource file is skipped with one warning naming it; the others are served and writable', async () => {
    const { store, warnings } = await openStore();
    for (const n of ['r1', 'r5', 'r9']) await store.putResource(route(n), src(n));
    const bad = path.join(store.dir, 'resources', 'Route', 'r5.json');
    await fs.writeFile(bad, '');
    assert.deepEqual((await store.listResources()).map((r) => r.metadata.name), ['r1', 'r9']);
    await store.listResources('Route');
    assert.equal(warnings.length, 1, warnings.join('\n'));
    assert.match(warnings[0]!, /r5\.json/);
    assert.match(warnings[0]!, /qwamos delete Route\/r5/);
    // Writes to the other resources go on.
    assert.equal((await store.putResource(route('r1', { vm: 'r1', mode: 'tor' }), src('r1'))).result, 'configured');
    assert.equal(await store.markForDeletion('Route', 'r9'), 'marked');
    // Reading the bad one names it.
    await assert.rejects(store.getResource('Route', 'r5'), (err) => err instanceof CorruptStateError && err.message.includes(bad));
    // delete removes the record that cannot be parsed.
    assert.equal(await store.markForDeletion('Route', 'r5'), 'removed');
    await assert.rejects(fs.stat(bad), { code: 'ENOENT' });
  });

  test('many records are marked for deletion in one call: marked, already marked, missing and unreadable each answered', async () => {
    const { store } = await openStore();
    for (const n of ['m1', 'm2', 'm3']) await store.putResource(route(n), src(n));
    assert.equal(await store.markForDeletion('Route', 'm2'), 'marked');
    const firstMark = (await store.getResource('Route', 'm2'))!.deletionRequestedAt;
    const bad = path.join(store.dir, 'resources', 'Route', 'm3.json');
    await fs.writeFile(bad, '{');
    const outcomes = await store.markManyForDeletion([
      { kind: 'Route', name: 'm1' },
      { kind: 'Route', name: 'm2' },
      { kind: 'Route', name: 'm3' },
      { kind: 'Route', name: 'nope' },
    ]);
    assert.deepEqual(outcomes, ['marked', 'marked', 'removed', false]);
    assert.ok((await store.getResource('Route', 'm1'))!.deletionRequestedAt);
    assert.equal((await store.getResource('Route', 'm2'))!.deletionRequestedAt, firstMark, 'an earlier mark is kept');
    await assert.rejects(fs.stat(bad), { code: 'ENOENT' });
    // Removing tombstoned records in one call: only the tombstone named.
    const m1 = (await store.getResource('Route', 'm1'))!.deletionRequestedAt!;
    assert.deepEqual(await store.deleteResources([{ kind: 'Route', name: 'm1', ifDeletionRequestedAt: m1 }, { kind: 'Route', name: 'm2', ifDeletionRequestedAt: 'another time' }]), [true, false]);
    assert.deepEqual((await store.listResources()).map((r) => r.metadata.name), ['m2']);
  });

  test('wrong-shaped JSON in every kind of state file gives errors naming the file, never a TypeError', async () => {
    const { store, warnings } = await openStore();
    await store.putResource(route('r1'), src('r1'));
    await store.putResource(route('r2'), src('r2'));
    await store.updateStatus('Route', 'r1', { phase: 'Ready' });
    const resFile = path.join(store.dir, 'resources', 'Route', 'r2.json');
    await fs.writeFile(resFile, JSON.stringify({ kind: 'Route', metadata: 'x' }));
    const statusFile = path.join(store.dir, 'status', 'Route', 'r1.json');
    await fs.writeFile(statusFile, '[1,2]');
    await fs.mkdir(path.join(store.dir, 'drift', 'Route'), { recursive: true });
    const driftFile = path.join(store.dir, 'drift', 'Route', 'r2.json');
    await fs.writeFile(driftFile, JSON.stringify([{ field: 'x' }]));
    await fs.appendFile(path.join(store.dir, 'events.log'), '5\n{"time":1}\n');

    assert.deepEqual((await store.listResources()).map((r) => r.metadata.name), ['r1']);
    assert.deepEqual(await store.listStatuses(), []);
    assert.equal(await store.getStatus('Route', 'r1'), undefined, 'an unusable status counts as absent');
    assert.deepEqual(await store.listDrift(), []);
    assert.deepEqual(await store.listEvents(), []);
    await assert.rejects(store.getResource('Route', 'r2'), /r2\.json is unusable: /);
    for (const f of [resFile, statusFile, driftFile]) assert.ok(warnings.some((w) => w.includes(f)), `no warning names ${f}: ${warnings.join('\n')}`);
    // The status is rebuilt by the next write.
    assert.equal((await store.updateStatus('Route', 'r1', { phase: 'Ready' })).phase, 'Ready');
    assert.equal((await store.getStatus('Route', 'r1'))?.phase, 'Ready');
  });

  test('garbage bytes in a file are not echoed in the message', async () => {
    const { store } = await openStore();
    await fs.mkdir(path.join(store.dir, 'resources', 'Route'), { recursive: true });
    await fs.writeFile(path.join(store.dir, 'resources', 'Route', 'r1.json'), '\u001b[31m\u0007garbage');
    await assert.rejects(store.getResource('Route', 'r1'), (err) => {
      const msg = (err as Error).message;
      return /r1\.json is unusable: not valid JSON/.test(msg) && !/[\u001b\u0007]/.test(msg);
    });
  });

  test('a malformed drift file counts as empty (reported once) and the next record rewrites it', async () => {
    const { store, warnings } = await openStore();
    await fs.mkdir(path.join(store.dir, 'drift', 'Route'), { recursive: true });
    const file = path.join(store.dir, 'drift', 'Route', 'r1.json');
    await fs.writeFile(file, '{"not":"an array"}\n');
    assert.deepEqual(await store.listDrift(), []);
    assert.deepEqual(await store.listDrift({ resource: 'Route/r1' }), []);
    assert.equal(warnings.filter((w) => w.includes(file)).length, 1, warnings.join('\n'));
    const [rec] = await store.recordDrifts('Route/r1', [{ field: 'netns', desired: 'a', actual: 'b' }], 'heal');
    assert.equal(rec?.count, 1);
    assert.equal((await store.listDrift({ resource: 'Route/r1' })).length, 1);
    assert.ok(Array.isArray(JSON.parse(await fs.readFile(file, 'utf8'))));
  });

  test('a failed drift write rejects with an error naming the file', async () => {
    const { store } = await openStore();
    const kindDir = path.join(store.dir, 'drift', 'Route');
    await fs.mkdir(kindDir, { recursive: true });
    // A directory where the file should be: the rename fails.
    await fs.mkdir(path.join(kindDir, 'r1.json'));
    await assert.rejects(store.recordDrifts('Route/r1', [{ field: 'f', desired: 'a', actual: 'b' }], 'heal'), (err) =>
      (err as Error).message.includes(path.join(kindDir, 'r1.json')),
    );
  });

  test('an unparsable request is dropped with a warning and does not block later ones', async () => {
    const { store, warnings } = await openStore();
    await store.requestReconcile(['Route/r1']);
    const dir = path.join(store.dir, 'requests');
    await fs.writeFile(path.join(dir, '0000-bad.json'), '{"keys": 5}');
    await fs.writeFile(path.join(dir, '0001-torn.json'), '{"ke');
    assert.deepEqual(await store.takeRequests(), [['Route/r1']]);
    assert.equal(warnings.length, 2, warnings.join('\n'));
    assert.deepEqual(await fs.readdir(dir), []);
    await store.requestReconcile([]);
    assert.deepEqual(await store.takeRequests(), [[]]);
  });
});

describe('commit', () => {
  test('statuses, healed and new drift, and events in one call', async () => {
    const { store } = await openStore();
    await store.recordDrifts('Route/r1', [{ field: 'old', desired: 'a', actual: 'b' }], 'heal');
    const res = await store.commit({
      statuses: [
        { kind: 'Route', name: 'r1', patch: { phase: 'Pending', conditions: [{ type: 'Ready', status: 'False', reason: 'X', message: 'x' }] } },
        { kind: 'Route', name: 'r1', patch: { phase: 'Ready', observedGeneration: 3 } },
        { kind: 'Route', name: 'r2', patch: { phase: 'Stalled' } },
      ],
      resolveDrift: [{ resource: 'Route/r1' }],
      drifts: [{ resource: 'Route/r1', diffs: [{ field: 'netns', desired: 'x', actual: '' }], policy: 'warn' }],
      events: [
        { resource: 'Route/r1', type: 'Normal', reason: 'Applied', message: 'one' },
        { resource: 'Route/r2', type: 'Warning', reason: 'Stalled', message: 'two' },
      ],
    });
    assert.equal(res.resolved, 1);
    assert.equal(res.statuses.get('Route/r1')?.phase, 'Ready');
    const r1 = await store.getStatus('Route', 'r1');
    assert.equal(r1?.phase, 'Ready');
    assert.equal(r1?.observedGeneration, 3);
    assert.equal(r1?.conditions[0]?.reason, 'X', 'patches for one resource are merged in order');
    assert.equal((await store.getStatus('Route', 'r2'))?.phase, 'Stalled');
    const drift = await store.listDrift({ resource: 'Route/r1' });
    assert.deepEqual(drift.map((d) => [d.field, d.state]), [['old', 'healed'], ['netns', 'open']]);
    assert.deepEqual((await store.listEvents()).map((e) => e.message), ['one', 'two']);
  });

  test('takes the write lock once, however many items', async () => {
    const { store } = await openStore();
    let locks = 0;
    const withLock = store.withLock.bind(store);
    store.withLock = ((fn: () => Promise<unknown>, opts?: { timeoutMs?: number }) => {
      locks++;
      return withLock(fn, opts);
    }) as typeof store.withLock;
    const n = 200;
    await store.commit({
      statuses: Array.from({ length: n }, (_, i) => ({ kind: 'Route', name: `r${i}`, patch: { phase: 'Ready' } })),
      drifts: Array.from({ length: n }, (_, i) => ({ resource: `Route/r${i}`, diffs: [{ field: 'f', desired: 'a', actual: 'b' }], policy: 'heal' as const })),
      events: Array.from({ length: n }, (_, i) => ({ resource: `Route/r${i}`, type: 'Normal' as const, reason: 'Applied', message: String(i) })),
    });
    assert.equal(locks, 1);
    assert.equal((await store.listStatuses()).length, n);
    assert.equal((await store.listDrift()).length, n);
    assert.equal((await store.listEvents()).length, n);
  });

  test('reads never take the write lock', async () => {
    const { store } = await openStore();
    await store.putResource(route('r1'), src('r1'));
    await store.updateStatus('Route', 'r1', { phase: 'Ready' });
    // Hold the lock for good in this process: every read must still answer.
    let release!: () => void;
    const held = store.withLock(() => new Promise<void>((r) => (release = r)));
    await new Promise((r) => setTimeout(r, 20));
    const reads = Promise.all([
      store.listResources(),
      store.getResource('Route', 'r1'),
      store.listStatuses(),
      store.getStatus('Route', 'r1'),
      store.listDrift(),
      store.listEvents(),
      store.listInventory(),
    ]);
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('a read waited for the write lock')), 2000));
    try {
      await Promise.race([reads, timeout]);
    } finally {
      release();
      await held;
    }
  });
});

describe('leases and zombies', () => {
  test('a killed holder that its parent has not reaped (a zombie) holds no lease', async () => {
    const { store } = await openStore();
    const root = path.dirname(path.dirname(new URL(import.meta.url).pathname));
    const fixture = path.join(root, 'test', 'fixtures', 'store-lock-holder.ts');
    // sh starts the holder in the background, then becomes `sleep`, which never waits for its children:
    // once killed, the holder stays a zombie for as long as the sleep runs.
    const { spawn } = await import('node:child_process');
    const wrapper = spawn('sh', ['-c', `"${process.execPath}" --import tsx "${fixture}" "${store.dir}" lease 0 controller & exec sleep 600`], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      let out = '';
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`holder did not start: ${out}`)), 20_000);
        wrapper.stdout!.on('data', (c) => {
          out += String(c);
          if (out.includes('ready')) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      const holder = await store.leaseHolder('controller');
      assert.ok(holder && holder.pid !== wrapper.pid);
      assert.equal(await store.acquireLease('controller'), null, 'a live holder keeps its lease');
      process.kill(holder.pid, 'SIGKILL');
      const state = async () => (await fs.readFile(`/proc/${holder.pid}/stat`, 'utf8')).replace(/^.*\) /s, '')[0];
      for (let i = 0; i < 200 && (await state()) !== 'Z'; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(await state(), 'Z', 'the killed holder is a zombie, not reaped');
      assert.equal(await store.leaseHolder('controller'), null);
      const lease = await store.acquireLease('controller');
      assert.ok(lease, 'a new holder gets the lease of the zombie');
      await lease.release();
    } finally {
      if (wrapper.pid) process.kill(wrapper.pid, 'SIGKILL');
    }
  });
});

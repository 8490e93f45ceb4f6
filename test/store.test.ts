import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { LockTimeoutError } from '../src/store/lock.ts';
import { Store, type Manifest } from '../src/store/store.ts';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const fixtures = path.join(root, 'test', 'fixtures');
const made: string[] = [];
const children: ChildProcess[] = [];

after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await Promise.all(made.map((d) => fs.rm(d, { recursive: true, force: true })));
});

async function tmpDir(): Promise<string> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-store-'));
  made.push(d);
  return path.join(d, 'state'); // not yet existing: open() must create it
}

function vm(name: string, spec: Record<string, unknown> = { cpus: 1 }, labels?: Record<string, string>, annotations?: Record<string, string>): Manifest {
  return { apiVersion: 'qwamos.io/v1alpha1', kind: 'VirtualMachine', metadata: { name, labels, annotations }, spec };
}
const src = (p = '/m/vm.yaml', digest = 'a'.repeat(64)) => ({ path: p, digest });

/** Starts a fixture under tsx; resolves with the child and a function waiting for its next stdout line. */
function runFixture(script: string, args: string[]) {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(fixtures, script), ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  const lines: string[] = [];
  let buf = '';
  const waiters: (() => void)[] = [];
  child.stdout!.on('data', (chunk: Buffer) => {
    buf += chunk.toString();
    const parts = buf.split('\n');
    buf = parts.pop()!;
    lines.push(...parts);
    for (const w of waiters.splice(0)) w();
  });
  const exited = once(child, 'exit');
  async function waitFor(pred: (lines: string[]) => boolean, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(lines)) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${script} exited early (${lines.join(',')})`);
      if (Date.now() > deadline) throw new Error(`${script}: timed out waiting; output so far ${lines.join(',')}`);
      await Promise.race([new Promise<void>((r) => waiters.push(r)), sleep(50)]);
    }
  }
  return { child, lines, waitFor, exited };
}

/** The pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const c = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  await once(c, 'exit');
  return c.pid!;
}

async function modeOf(p: string): Promise<number> {
  return (await fs.stat(p)).mode & 0o777;
}

describe('resources', () => {
  test('created / configured / unchanged, and generation moves only on spec or label changes', async () => {
    const store = await Store.open(await tmpDir());
    assert.deepEqual(await store.putResource(vm('web'), src()), { result: 'created', generation: 1 });
    assert.deepEqual(await store.putResource(vm('web'), src()), { result: 'unchanged', generation: 1 });
    // Key order and undefined members do not count as changes.
    assert.deepEqual(await store.putResource(vm('web', { cpus: 1, x: undefined }), src()), { result: 'unchanged', generation: 1 });
    assert.deepEqual(await store.putResource(vm('web', { cpus: 2 }), src()), { result: 'configured', generation: 2 });
    assert.deepEqual(await store.putResource(vm('web', { cpus: 2 }, { tier: 'a' }), src()), { result: 'configured', generation: 3 });
    assert.deepEqual(await store.putResource(vm('web', { cpus: 2 }, { tier: 'a' }), src()), { result: 'unchanged', generation: 3 });
    // Annotations: configured, but the generation (what controllers act on) stays.
    assert.deepEqual(await store.putResource(vm('web', { cpus: 2 }, { tier: 'a' }, { note: 'x' }), src()), { result: 'configured', generation: 3 });
    // Same manifest from a new source: unchanged, yet the source is recorded (pruning goes by source).
    assert.deepEqual(await store.putResource(vm('web', { cpus: 2 }, { tier: 'a' }, { note: 'x' }), src('/n/web.yaml', 'b'.repeat(64))), { result: 'unchanged', generation: 3 });

    const r = await store.getResource('VirtualMachine', 'web');
    assert.ok(r);
    assert.equal(r.generation, 3);
    assert.deepEqual(r.spec, { cpus: 2 });
    assert.deepEqual(r.metadata, { name: 'web', labels: { tier: 'a' }, annotations: { note: 'x' } });
    assert.deepEqual(r.source, { path: '/n/web.yaml', digest: 'b'.repeat(64) });
    assert.equal(r.apiVersion, 'qwamos.io/v1alpha1');
    assert.ok(!Number.isNaN(Date.parse(r.appliedAt)));

    // A second Store on the same directory sees the same state.
    const again = await Store.open(store.dir);
    assert.equal((await again.getResource('VirtualMachine', 'web'))?.generation, 3);
  });

  test('list, inventory, suspend, delete', async () => {
    const store = await Store.open(await tmpDir());
    await store.putResource(vm('b'), src('/m/b.yaml'));
    await store.putResource(vm('a'), src('/m/a.yaml'));
    await store.putResource({ apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name: 'a' }, spec: { mode: 'tor' } }, src('/m/r.yaml'));
    assert.deepEqual((await store.listResources()).map((r) => `${r.kind}/${r.metadata.name}`), ['Route/a', 'VirtualMachine/a', 'VirtualMachine/b']);
    assert.deepEqual((await store.listResources('VirtualMachine')).map((r) => r.metadata.name), ['a', 'b']);
    assert.deepEqual(await store.listResources('FirewallPolicy'), []);
    assert.deepEqual(await store.listInventory(), [
      { kind: 'Route', name: 'a', source: src('/m/r.yaml'), generation: 1 },
      { kind: 'VirtualMachine', name: 'a', source: src('/m/a.yaml'), generation: 1 },
      { kind: 'VirtualMachine', name: 'b', source: src('/m/b.yaml'), generation: 1 },
    ]);

    await store.setSuspended('VirtualMachine', 'a', true);
    assert.equal((await store.getResource('VirtualMachine', 'a'))?.suspended, true);
    // Re-applying the manifest keeps the suspension (a user action, not part of the manifest).
    await store.putResource(vm('a', { cpus: 4 }), src('/m/a.yaml'));
    assert.equal((await store.getResource('VirtualMachine', 'a'))?.suspended, true);
    await store.setSuspended('VirtualMachine', 'a', false);
    assert.equal((await store.getResource('VirtualMachine', 'a'))?.suspended, undefined);
    await assert.rejects(store.setSuspended('VirtualMachine', 'nope', true), /VirtualMachine\/nope not found/);

    await store.updateStatus('VirtualMachine', 'b', { phase: 'Running' });
    await store.recordDrift({ resource: 'VirtualMachine/b', field: 'f', desired: '1', actual: '2', policy: 'heal' });
    assert.equal(await store.deleteResource('VirtualMachine', 'b'), true);
    assert.equal(await store.deleteResource('VirtualMachine', 'b'), false);
    assert.equal(await store.getResource('VirtualMachine', 'b'), undefined);
    assert.equal(await store.getStatus('VirtualMachine', 'b'), undefined);
    assert.deepEqual(await store.listDrift({ resource: 'VirtualMachine/b' }), []);
  });

  test('names and kinds that could leave the directory are refused', async () => {
    const store = await Store.open(await tmpDir());
    for (const name of ['../x', 'a/b', '..', '.', '', 'A', '-a', 'a-', 'a_b', 'a\u0000', '/etc', 'x'.repeat(64)]) {
      await assert.rejects(store.putResource(vm(name), src()), /invalid resource name/, name);
      await assert.rejects(store.getResource('VirtualMachine', name), /invalid resource name/, name);
      await assert.rejects(store.updateStatus('VirtualMachine', name, {}), /invalid resource name/, name);
    }
    for (const kind of ['../Foo', 'Foo/..', 'virtualMachine', 'V', '', 'Vm/x', 'Vm.x']) {
      await assert.rejects(store.putResource({ ...vm('a'), kind }, src()), /invalid resource kind/, kind);
      await assert.rejects(store.listResources(kind), /invalid resource kind/, kind);
      await assert.rejects(store.deleteResource(kind, 'a'), /invalid resource kind/, kind);
    }
    await assert.rejects(store.recordDrift({ resource: 'VirtualMachine/../../x', field: 'f', desired: '', actual: '', policy: 'warn' }), /invalid/);
    await assert.rejects(store.resolveDrift('nokind'), /expected Kind\/name/);
    await assert.rejects(store.acquireLease('../x'), /invalid resource name/);
    // Nothing was created outside the state directory.
    assert.deepEqual((await fs.readdir(path.dirname(store.dir))).sort(), ['state']);
  });

  test('the state directory is 0700 and every file 0600', async () => {
    const dir = await tmpDir();
    const old = process.umask(0o022); // a usual umask must not loosen the modes
    try {
      const store = await Store.open(dir);
      await store.putResource(vm('a'), src());
      await store.updateStatus('VirtualMachine', 'a', { phase: 'Running' });
      await store.recordDrift({ resource: 'VirtualMachine/a', field: 'f', desired: '1', actual: '2', policy: 'heal' });
      await store.appendEvent({ resource: 'VirtualMachine/a', type: 'Normal', reason: 'Applied', message: 'm' });
      const lease = await store.acquireLease('reconciler');
      let lockMode = 0;
      await store.withLock(async () => {
        lockMode = await modeOf(path.join(dir, 'lock'));
      });
      assert.equal(lockMode, 0o600);

      const walk = async (d: string): Promise<void> => {
        assert.equal(await modeOf(d), 0o700, d);
        for (const e of await fs.readdir(d, { withFileTypes: true })) {
          const p = path.join(d, e.name);
          if (e.isDirectory()) await walk(p);
          else assert.equal(await modeOf(p), 0o600, p);
        }
      };
      await walk(dir);
      await lease?.release();
    } finally {
      process.umask(old);
    }
  });

  test('fast enough for 500 resources', async () => {
    const store = await Store.open(await tmpDir());
    let t = Date.now();
    await store.withLock(() => Promise.all(Array.from({ length: 500 }, (_, i) => store.putResource(vm(`vm-${i}`, { cpus: 1, i }), src()))));
    const putMs = Date.now() - t;
    t = Date.now();
    assert.equal((await store.listResources()).length, 500);
    const listMs = Date.now() - t;
    t = Date.now();
    const again = await store.withLock(() => Promise.all(Array.from({ length: 500 }, (_, i) => store.putResource(vm(`vm-${i}`, { cpus: 1, i }), src()))));
    assert.ok(again.every((r) => r.result === 'unchanged'));
    const unchangedMs = Date.now() - t;
    assert.ok(listMs < 2000, `list took ${listMs} ms`);
    assert.ok(unchangedMs < 2000, `unchanged apply took ${unchangedMs} ms`);
    console.log(`500 puts ${putMs} ms, list ${listMs} ms, unchanged re-apply ${unchangedMs} ms`);
  });
});

describe('status', () => {
  test('conditions merge by type; lastTransitionTime moves only when status flips', async () => {
    const store = await Store.open(await tmpDir());
    const s1 = await store.updateStatus('VirtualMachine', 'a', {
      conditions: [
        { type: 'Ready', status: 'False', reason: 'Starting', message: 'booting' },
        { type: 'Reconciling', status: 'True', reason: 'Progressing', message: 'applying' },
      ],
      observedGeneration: 1,
      phase: 'Starting',
      fields: { pid: 123, tap: 'qw-a' },
    });
    const ready1 = s1.conditions.find((c) => c.type === 'Ready')!;
    await sleep(15);

    // Same status, new reason/message: the transition time stays.
    const s2 = await store.updateStatus('VirtualMachine', 'a', {
      conditions: [{ type: 'Ready', status: 'False', reason: 'WaitingForQmp', message: 'still booting' }],
    });
    const ready2 = s2.conditions.find((c) => c.type === 'Ready')!;
    assert.equal(ready2.lastTransitionTime, ready1.lastTransitionTime);
    assert.equal(ready2.reason, 'WaitingForQmp');
    assert.equal(ready2.message, 'still booting');
    // Untouched conditions and fields are kept.
    assert.equal(s2.conditions.length, 2);
    assert.equal(s2.observedGeneration, 1);
    assert.equal(s2.phase, 'Starting');
    assert.deepEqual(s2.fields, { pid: 123, tap: 'qw-a' });
    await sleep(15);

    // Status flips: a new transition time.
    const s3 = await store.updateStatus('VirtualMachine', 'a', {
      conditions: [
        { type: 'Ready', status: 'True', reason: 'Running', message: 'up' },
        { type: 'Stalled', status: 'False', reason: 'Ok', message: '' },
      ],
      observedGeneration: 2,
      phase: 'Running',
      fields: { pid: 456, tap: undefined },
    });
    const ready3 = s3.conditions.find((c) => c.type === 'Ready')!;
    assert.ok(ready3.lastTransitionTime > ready1.lastTransitionTime);
    assert.equal(s3.conditions.find((c) => c.type === 'Reconciling')!.lastTransitionTime, s1.conditions.find((c) => c.type === 'Reconciling')!.lastTransitionTime);
    assert.deepEqual(s3.conditions.map((c) => c.type), ['Ready', 'Reconciling', 'Stalled']);
    assert.equal(s3.observedGeneration, 2);
    assert.equal(s3.phase, 'Running');
    assert.deepEqual(s3.fields, { pid: 456 });

    // Persisted, and an update that changes nothing leaves the file alone.
    assert.deepEqual(await store.getStatus('VirtualMachine', 'a'), s3);
    const file = path.join(store.dir, 'status', 'VirtualMachine', 'a.json');
    const before = (await fs.stat(file)).ino;
    await sleep(15);
    const s4 = await store.updateStatus('VirtualMachine', 'a', { conditions: [{ type: 'Ready', status: 'True', reason: 'Running', message: 'up' }] });
    assert.deepEqual(s4, s3);
    assert.equal((await fs.stat(file)).ino, before);
    assert.deepEqual((await store.listStatuses()).map((s) => s.name), ['a']);
    assert.equal(await store.getStatus('VirtualMachine', 'other'), undefined);
  });
});

describe('drift', () => {
  test('an open record for the same resource and field is updated, not duplicated; resolve heals', async () => {
    const store = await Store.open(await tmpDir());
    const d1 = await store.recordDrift({ resource: 'VirtualMachine/a', field: 'process', desired: 'running', actual: 'absent', policy: 'heal' });
    assert.equal(d1.state, 'open');
    assert.equal(d1.count, 1);
    await sleep(5);
    const d2 = await store.recordDrift({ resource: 'VirtualMachine/a', field: 'process', desired: 'running', actual: 'paused', policy: 'heal' });
    assert.equal(d2.id, d1.id);
    assert.equal(d2.actual, 'paused');
    assert.equal(d2.count, 2);
    assert.equal(d2.detectedAt, d1.detectedAt);
    assert.ok(d2.lastSeenAt > d1.lastSeenAt);
    await store.recordDrift({ resource: 'VirtualMachine/a', field: 'netns', desired: 'present', actual: 'absent', policy: 'heal' });
    await store.recordDrift({ resource: 'Route/r', field: 'nft', desired: 'rule', actual: 'none', policy: 'warn' });

    assert.equal((await store.listDrift()).length, 3);
    assert.equal((await store.listDrift({ resource: 'VirtualMachine/a' })).length, 2);
    assert.equal(await store.resolveDrift('VirtualMachine/a', 'process'), 1);
    assert.equal(await store.resolveDrift('VirtualMachine/a', 'process'), 0);
    const healed = await store.listDrift({ state: 'healed' });
    assert.equal(healed.length, 1);
    assert.equal(healed[0]!.id, d1.id);
    assert.ok(healed[0]!.healedAt);
    assert.deepEqual((await store.listDrift({ state: 'open' })).map((d) => `${d.resource}:${d.field}`).sort(), ['Route/r:nft', 'VirtualMachine/a:netns']);

    // Seen again after healing: a new record, the healed one stays as history.
    const d3 = await store.recordDrift({ resource: 'VirtualMachine/a', field: 'process', desired: 'running', actual: 'absent', policy: 'heal' });
    assert.notEqual(d3.id, d1.id);
    assert.equal(await store.resolveDrift('VirtualMachine/a'), 2);
    assert.equal((await store.listDrift({ resource: 'VirtualMachine/a', state: 'healed' })).length, 3);
  });

  test('concurrent records in one process do not lose updates', async () => {
    const store = await Store.open(await tmpDir());
    await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        store.recordDrift({ resource: 'VirtualMachine/a', field: `f${i % 5}`, desired: '1', actual: String(i), policy: 'warn' }),
      ),
    );
    const open = await store.listDrift({ state: 'open' });
    assert.equal(open.length, 5);
    assert.deepEqual(open.map((d) => d.count), [4, 4, 4, 4, 4]);
  });
});

describe('events', () => {
  test('append, filter, limit', async () => {
    const store = await Store.open(await tmpDir());
    await store.appendEvent({ resource: 'VirtualMachine/a', type: 'Normal', reason: 'Created', message: 'one' });
    await store.appendEvent({ resource: 'Route/r', type: 'Warning', reason: 'Drift', message: 'two\nlines' });
    await store.appendEvent({ resource: 'VirtualMachine/a', type: 'Normal', reason: 'Started', message: 'three' });
    const all = await store.listEvents();
    assert.deepEqual(all.map((e) => e.message), ['one', 'two\nlines', 'three']);
    assert.ok(all.every((e) => !Number.isNaN(Date.parse(e.time))));
    assert.deepEqual((await store.listEvents({ resource: 'VirtualMachine/a' })).map((e) => e.reason), ['Created', 'Started']);
    assert.deepEqual((await store.listEvents({ limit: 2 })).map((e) => e.message), ['two\nlines', 'three']);
    assert.deepEqual(await store.listEvents({ limit: 0 }), []);
  });

  test('the log is bounded', async () => {
    const store = await Store.open(await tmpDir(), { maxEvents: 10 });
    for (let i = 0; i < 35; i++) await store.appendEvent({ resource: 'controller', type: 'Normal', reason: 'Tick', message: String(i) });
    const events = await store.listEvents();
    assert.ok(events.length <= 20, `kept ${events.length}`);
    assert.ok(events.length >= 10);
    assert.equal(events.at(-1)!.message, '34');
    assert.ok(!events.some((e) => e.message === '0'));
    // Strictly the newest, in order.
    const nums = events.map((e) => Number(e.message));
    assert.deepEqual(nums, Array.from({ length: nums.length }, (_, i) => 35 - nums.length + i));
    // Another writer's appends are counted too.
    const other = await Store.open(store.dir, { maxEvents: 10 });
    for (let i = 35; i < 70; i++) {
      await (i % 2 ? store : other).appendEvent({ resource: 'controller', type: 'Normal', reason: 'Tick', message: String(i) });
    }
    const lines = async (f: string) => (await fs.readFile(f, 'utf8').catch(() => '')).split('\n').filter(Boolean).length;
    assert.ok((await lines(path.join(store.dir, 'events.log'))) <= 10);
    assert.ok((await lines(path.join(store.dir, 'events.log.1'))) <= 11);
  });

  test('a torn last line is skipped and does not swallow the next event', async () => {
    const store = await Store.open(await tmpDir());
    await store.appendEvent({ resource: 'a', type: 'Normal', reason: 'R', message: 'before' });
    await fs.appendFile(path.join(store.dir, 'events.log'), '{"time":"2024-01-01T00:00:00Z","reso');
    await store.appendEvent({ resource: 'a', type: 'Normal', reason: 'R', message: 'after' });
    assert.deepEqual((await store.listEvents()).map((e) => e.message), ['before', 'after']);
  });
});

describe('locking', () => {
  test('concurrent withLock callers in one process do not interleave; nested calls re-enter', async () => {
    const store = await Store.open(await tmpDir());
    const log: string[] = [];
    const worker = (id: string) =>
      store.withLock(async () => {
        log.push(`${id}:start`);
        await sleep(10);
        await store.putResource(vm(`vm-${id}`), src()); // takes the lock itself: must re-enter, not deadlock
        await sleep(10);
        log.push(`${id}:end`);
        return id;
      });
    const results = await Promise.all(['a', 'b', 'c'].map(worker));
    assert.deepEqual(results, ['a', 'b', 'c']);
    assert.deepEqual(log, ['a:start', 'a:end', 'b:start', 'b:end', 'c:start', 'c:end']);
    // Two Store objects on one directory share the lock too.
    const other = await Store.open(store.dir);
    log.length = 0;
    await Promise.all([worker('d'), other.withLock(async () => { log.push('e:start'); await sleep(10); log.push('e:end'); })]);
    assert.deepEqual(log, ['d:start', 'd:end', 'e:start', 'e:end']);
    // An error inside releases the lock.
    await assert.rejects(store.withLock(async () => { throw new Error('boom'); }), /boom/);
    assert.equal(await store.withLock(async () => 'free'), 'free');
  });

  test('a caller in this process times out behind a long holder', async () => {
    const store = await Store.open(await tmpDir());
    let release!: () => void;
    const holding = store.withLock(() => new Promise<void>((r) => (release = r)));
    await sleep(10);
    await assert.rejects(store.withLock(async () => {}, { timeoutMs: 100 }), (err: Error) => {
      assert.ok(err instanceof LockTimeoutError);
      assert.match(err.message, new RegExp(`process ${process.pid} \\(this process\\)`));
      return true;
    });
    release();
    await holding;
    assert.equal(await store.withLock(async () => 1, { timeoutMs: 1000 }), 1);
  });

  test('another process holding the lock: we wait, time out naming its pid, then get it', async () => {
    const dir = await tmpDir();
    const store = await Store.open(dir);
    const holder = runFixture('store-lock-holder.ts', [dir, 'lock', '1500']);
    await holder.waitFor((l) => l.includes('ready'));
    const pid = holder.child.pid!;
    const t0 = Date.now();
    await assert.rejects(store.withLock(async () => {}, { timeoutMs: 300 }), (err: Error) => {
      assert.ok(err instanceof LockTimeoutError);
      assert.equal(err.holderPid, pid);
      assert.match(err.message, new RegExp(`held by process ${pid}\\b`));
      return true;
    });
    assert.ok(Date.now() - t0 >= 290);
    // A put waits for the holder instead of interleaving with it.
    const r = await store.putResource(vm('after'), src());
    assert.equal(r.result, 'created');
    assert.ok(Date.now() - t0 >= 1000, 'the put should have waited for the other process');
    await holder.exited;
  });

  test('writers in several processes never interleave (no lost updates)', async () => {
    const dir = await tmpDir();
    const store = await Store.open(dir);
    const workers = [1, 2, 3].map(() => runFixture('store-lock-holder.ts', [dir, 'count', '25']));
    // The same locked read-increment-write as the fixture's, from this process at the same time.
    for (let i = 0; i < 25; i++) {
      await store.withLock(async () => {
        const n = Number((await store.getStatus('ClusterNode', 'counter'))?.fields.n ?? 0);
        await sleep(Math.random() * 2);
        await store.updateStatus('ClusterNode', 'counter', { fields: { n: n + 1 } });
      });
    }
    for (const w of workers) {
      await w.waitFor((l) => l.includes('done'), 60_000);
      await w.exited;
    }
    assert.equal((await store.getStatus('ClusterNode', 'counter'))?.fields.n, 100);
  });

  test('a stale lock (dead pid, or a reused pid) is taken over', async () => {
    const dir = await tmpDir();
    const store = await Store.open(dir);
    const lockFile = path.join(dir, 'lock');
    const pid = await deadPid();
    await fs.writeFile(lockFile, JSON.stringify({ pid, acquiredAt: new Date().toISOString(), token: 'x' }), { mode: 0o600 });
    const t0 = Date.now();
    assert.equal(await store.withLock(async () => 'got it', { timeoutMs: 2000 }), 'got it');
    assert.ok(Date.now() - t0 < 1000);
    await assert.rejects(fs.stat(lockFile), { code: 'ENOENT' });

    // Our own pid but another start time: the pid was reused, the old holder is gone.
    await fs.writeFile(lockFile, JSON.stringify({ pid: process.pid, processStart: '1', acquiredAt: '', token: 'y' }), { mode: 0o600 });
    assert.equal(await store.withLock(async () => 'again', { timeoutMs: 2000 }), 'again');

    // A live holder's lock is not: our own pid with our real start time.
    const { processStartTime } = await import('../src/store/lock.ts');
    await fs.writeFile(lockFile, JSON.stringify({ pid: process.pid, processStart: processStartTime(process.pid), acquiredAt: '', token: 'z' }));
    await assert.rejects(store.withLock(async () => {}, { timeoutMs: 100 }), LockTimeoutError);
    await fs.unlink(lockFile);
  });

  test('leases: one holder at a time, visible to others, dead holders ignored', async () => {
    const dir = await tmpDir();
    const store = await Store.open(dir);
    assert.equal(await store.leaseHolder('reconciler'), null);

    const daemon = runFixture('store-lock-holder.ts', [dir, 'lease', '0', 'reconciler']);
    await daemon.waitFor((l) => l.includes('ready'));
    assert.equal((await store.leaseHolder('reconciler'))?.pid, daemon.child.pid);
    assert.equal(await store.acquireLease('reconciler'), null);
    // Leases are independent of the write lock and of each other.
    assert.equal(await store.withLock(async () => 'ok', { timeoutMs: 1000 }), 'ok');
    const other = await store.acquireLease('other');
    assert.ok(other);
    await other.release();

    daemon.child.kill('SIGKILL');
    await daemon.exited;
    assert.equal(await store.leaseHolder('reconciler'), null);
    const lease = await store.acquireLease('reconciler');
    assert.ok(lease);
    assert.equal(lease.pid, process.pid);
    assert.equal((await store.leaseHolder('reconciler'))?.pid, process.pid);
    assert.equal(await store.acquireLease('reconciler'), null); // held, even by ourselves

    // A second process sees it busy.
    const cli = runFixture('store-lock-holder.ts', [dir, 'lease', '1', 'reconciler']);
    await cli.waitFor((l) => l.length > 0);
    assert.deepEqual(cli.lines, ['busy']);
    await cli.exited;

    await lease.release();
    await lease.release();
    assert.equal(await store.leaseHolder('reconciler'), null);
    const again = await store.acquireLease('reconciler');
    assert.ok(again);
    await again.release();
  });
});

describe('durability', () => {
  test('kill -9 at any moment loses no acknowledged write and leaves no half file', async () => {
    for (const killAfter of [3, 17, 41]) {
      const dir = await tmpDir();
      await Store.open(dir);
      // Abandoned temp files from a dead writer are cleaned on open; in-flight ones of live writers are not.
      const dead = await deadPid();
      const abandoned = path.join(dir, 'resources', `.x.json.${dead}.0123456789ab.tmp`);
      const inflight = path.join(dir, 'resources', `.y.json.${process.pid}.0123456789ab.tmp`);
      await fs.writeFile(abandoned, '{"half');
      await fs.writeFile(inflight, '{"half');

      const writer = runFixture('store-writer.ts', [dir, '100000']);
      await writer.waitFor((l) => l.length >= killAfter);
      await sleep(Math.random() * 20); // land somewhere inside a later write
      writer.child.kill('SIGKILL');
      await writer.exited;
      const acked = writer.lines.map(Number);
      assert.ok(acked.length >= killAfter);

      // Every file parses: no half files anywhere, temp files or not.
      const store = await Store.open(dir);
      await assert.rejects(fs.stat(abandoned), { code: 'ENOENT' });
      await fs.unlink(inflight);
      const walk = async (d: string): Promise<string[]> =>
        (await Promise.all((await fs.readdir(d, { withFileTypes: true })).map((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)])))).flat();
      for (const f of await walk(dir)) {
        assert.ok(!f.endsWith('.tmp'), `leftover temp file ${f}`);
        const text = await fs.readFile(f, 'utf8');
        if (f.endsWith('.json')) JSON.parse(text);
      }

      // Every acknowledged write is there.
      const names = new Set((await store.listResources('VirtualMachine')).map((r) => r.metadata.name));
      for (const i of acked) {
        assert.ok(names.has(`vm-${i}`), `acknowledged put ${i} lost`);
        const st = await store.getStatus('VirtualMachine', `vm-${i}`);
        assert.equal(st?.fields.i, i);
        assert.equal(((await store.getResource('VirtualMachine', `vm-${i}`))?.spec as { filler?: string } | undefined)?.filler, 'x'.repeat(4000));
      }
      const last = acked.at(-1)!;
      assert.ok((((await store.getResource("VirtualMachine", "vm-0"))?.spec as { last?: number } | undefined)?.last as number) >= last);
      const events = new Set((await store.listEvents()).map((e) => e.message));
      for (const i of acked) assert.ok(events.has(`write ${i}`), `acknowledged event ${i} lost`);

      // The killed writer may have died holding the lock: it is stale and taken over.
      assert.equal((await store.putResource(vm('next'), src())).result, 'created');
    }
  });
});

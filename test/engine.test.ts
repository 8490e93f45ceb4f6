// The engine against a fake controller: an in-memory "host" (a Map of what exists) with call counters
// and switches to make observe/apply/plan fail. No real host tool is run.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { OutcomeError, stalled, waiting, type Action, type AnyController, type FieldDiff, type Plan } from '../src/engine/contract.ts';
import { Engine, type EngineOptions } from '../src/engine/engine.ts';
import { until as poll } from './helpers/poll.ts';
import { Store, type ResourceStatus, type StoredResource } from '../src/store/store.ts';

// ---- the fake controller ---------------------------------------------------------------------------

interface FakeSpec {
  value: string;
  driftPolicy?: 'heal' | 'warn';
  dependsOn?: string[];
  /** Plan a Stalled hold with this message. */
  blocked?: string;
  /** Plan a Waiting hold with this reason while the fake's `waitOver` is false. */
  waitReason?: string;
  waitMs?: number;
  /** Like a VM's crash: an action recording it is applied beside a CrashLoop Waiting hold. */
  crashed?: boolean;
}

interface FakeActual {
  value: string;
}

type FakeAction = Action & { type: 'create' | 'update' | 'remove' | 'record-crash'; value?: string };

class FakeController implements AnyController {
  readonly kind = 'Fake' as never;
  /** What exists on the fake host: 'Fake/name' -> value. */
  readonly host = new Map<string, string>();
  /** One entry per observe call: the keys observed in that batch. */
  readonly observed: string[][] = [];
  /** One entry per apply call: the actions applied in that batch. */
  readonly applied: Action[][] = [];
  readonly plans: { key: string; deleting: boolean }[] = [];
  failApply: false | 'transient' | 'terminal' = false;
  failObserve = false;
  failPlan = false;
  waitOver = false;
  /** Crashes recorded by 'record-crash' actions. */
  readonly crashesRecorded: string[] = [];
  /** What collectGarbage returns (or throws, when an Error). */
  garbage: string[] | Error = [];
  /** While set, apply waits for it (holds a resource "in flight"). */
  gate?: Promise<void>;

  get observeCalls(): number {
    return this.observed.length;
  }
  get applyCalls(): number {
    return this.applied.length;
  }
  /** Keys that ever appeared in an apply call. */
  appliedKeys(): string[] {
    return this.applied.flat().map((a) => a.resource);
  }

  async observe(resources: StoredResource[]): Promise<Map<never, FakeActual>> {
    this.observed.push(resources.map(keyOf));
    if (this.failObserve) throw new Error('fake observe failed: ip -j exited 1');
    const found = new Map<never, FakeActual>();
    for (const r of resources) {
      const v = this.host.get(keyOf(r));
      if (v !== undefined) found.set(keyOf(r) as never, { value: v });
    }
    return found;
  }

  plan(r: StoredResource, actual: FakeActual | undefined): Plan {
    const deleting = Boolean(r.deletionRequestedAt);
    const key = keyOf(r);
    this.plans.push({ key, deleting });
    if (this.failPlan) throw new Error('fake plan exploded');
    const spec = r.spec as unknown as FakeSpec;
    if (deleting) return { actions: actual ? [act('remove', key, `remove ${key}`)] : [] };
    if (spec.blocked) return { actions: [], hold: stalled('Blocked', spec.blocked) };
    if (spec.waitReason && !this.waitOver) return { actions: [], hold: waiting(spec.waitReason, `waiting for ${spec.waitReason}`, spec.waitMs ?? 50) };
    if (spec.crashed && !this.crashesRecorded.includes(key)) {
      return { actions: [act('record-crash', key, `record crash of ${key}`)], hold: waiting('CrashLoop', 'keeps crashing: next start in 60s', 60_000) };
    }
    if (!actual) return { actions: [act('create', key, `create ${key} = ${spec.value}`, spec.value)] };
    if (actual.value !== spec.value) return { actions: [act('update', key, `set ${key} to ${spec.value}`, spec.value)] };
    return { actions: [] };
  }

  diff(r: StoredResource, actual: FakeActual | undefined): FieldDiff[] {
    const spec = r.spec as unknown as FakeSpec;
    if (actual?.value === spec.value) return [];
    return [{ field: 'value', desired: spec.value, actual: actual?.value ?? '(absent)' }];
  }

  async apply(actions: Action[]): Promise<void> {
    this.applied.push(actions);
    if (this.gate) await this.gate;
    if (this.failApply === 'transient') throw new Error('fake apply failed: device busy');
    if (this.failApply === 'terminal') throw new OutcomeError(stalled('ImageCorrupt', 'fake apply refused: image is corrupt'));
    for (const a of actions as FakeAction[]) {
      if (a.type === 'record-crash') this.crashesRecorded.push(a.resource);
      else if (a.type === 'remove') this.host.delete(a.resource);
      else this.host.set(a.resource, a.value!);
    }
  }

  async collectGarbage(): Promise<string[]> {
    if (this.garbage instanceof Error) throw this.garbage;
    return this.garbage;
  }

  dependencies(r: StoredResource): never[] {
    return ((r.spec as unknown as FakeSpec).dependsOn ?? []) as never[];
  }
}

const keyOf = (r: { kind: string; metadata: { name: string } }) => `${r.kind}/${r.metadata.name}`;
const act = (type: FakeAction['type'], resource: string, describe: string, value?: string): FakeAction => ({
  type,
  resource: resource as never,
  describe,
  ...(value !== undefined ? { value } : {}),
});

// ---- harness ---------------------------------------------------------------------------------------

interface Harness {
  dir: string;
  store: Store;
  fake: FakeController;
  newEngine(opts?: Partial<EngineOptions>): Engine;
}

async function harness(t: TestContext): Promise<Harness> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-engine-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  const store = await Store.open(dir);
  const fake = new FakeController();
  return {
    dir,
    store,
    fake,
    newEngine: (opts = {}) =>
      new Engine({ store, controllers: [fake], concurrency: 4, queue: { baseDelayMs: 10, maxDelayMs: 100 }, ...opts }),
  };
}

async function put(store: Store, name: string, spec: FakeSpec): Promise<number> {
  const { generation } = await store.putResource(
    { apiVersion: 'qwamos.io/v1alpha1', kind: 'Fake', metadata: { name }, spec: spec as unknown as Record<string, unknown> },
    { path: '/x', digest: 'd' },
  );
  return generation;
}

/** A `since` strictly after every pass result emitted so far (results carry a ms timestamp). */
async function mark(): Promise<number> {
  await sleep(2);
  return Date.now();
}

/** Enqueues keys and waits for their pass; fails the test if they do not settle. */
async function pass(engine: Engine, keys: string[], untilConverged = true, timeoutMs = 3000): Promise<void> {
  const since = await mark();
  engine.enqueue(keys);
  const ok = await engine.settle(keys, { untilConverged, timeoutMs, since });
  assert.ok(ok, `${keys.join(', ')} did not settle: ${JSON.stringify(keys.map((k) => engine.last.get(k)))}`);
}

/** Runs a first pass: sync, enqueue everything, start, wait until converged. */
async function startAndSettle(engine: Engine, keys: string[], untilConverged = true): Promise<void> {
  const since = await mark();
  await engine.sync();
  engine.enqueueAll();
  engine.start();
  const ok = await engine.settle(keys, { untilConverged, timeoutMs: 10_000, since });
  assert.ok(ok, `${keys.join(', ')} did not settle: ${JSON.stringify(keys.map((k) => engine.last.get(k)))}`);
}

const until = (what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 2000) => poll(what, cond, { timeoutMs, intervalMs: 5 });

function condition(st: ResourceStatus | undefined, type: 'Ready' | 'Reconciling' | 'Stalled') {
  const c = st?.conditions.find((x) => x.type === type);
  assert.ok(c, `status has no ${type} condition: ${JSON.stringify(st)}`);
  return c;
}

async function reasons(store: Store, key: string): Promise<string[]> {
  return (await store.listEvents({ resource: key })).map((e) => e.reason);
}

// ---- tests -----------------------------------------------------------------------------------------

test('first pass creates and reports Ready; a second pass is a no-op; a spec change is applied', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a']);
    assert.deepEqual(fake.applied, [[{ type: 'create', resource: 'Fake/a', describe: 'create Fake/a = one', value: 'one' }]]);
    assert.equal(fake.host.get('Fake/a'), 'one');
    assert.equal(fake.observeCalls, 2, 'observe, then observe again to verify');

    const st = await store.getStatus('Fake', 'a');
    const r = await store.getResource('Fake', 'a');
    assert.equal(st?.phase, 'Ready');
    assert.equal(st?.observedGeneration, r?.generation);
    assert.equal(condition(st, 'Ready').status, 'True');
    assert.equal(condition(st, 'Reconciling').status, 'False');
    assert.equal(condition(st, 'Stalled').status, 'False');
    const events = await store.listEvents({ resource: 'Fake/a' });
    assert.deepEqual(events.map((e) => [e.type, e.reason, e.message]), [['Normal', 'Applied', 'create Fake/a = one']]);
    assert.equal(engine.last.get('Fake/a')?.phase, 'Ready');

    // Second pass: the host already matches; apply is not called and nothing new is logged.
    const observesBefore = fake.observeCalls;
    await pass(engine, ['Fake/a']);
    assert.equal(fake.applyCalls, 1, 'an in-sync resource must not be applied again');
    assert.equal(fake.observeCalls, observesBefore + 1, 'a no-op pass still observes the host once');
    assert.deepEqual(await reasons(store, 'Fake/a'), ['Applied']);
    assert.equal((await store.getStatus('Fake', 'a'))?.phase, 'Ready');

    // A new generation is applied (an update, not drift) and observedGeneration follows.
    assert.equal(await put(store, 'a', { value: 'two' }), 2);
    assert.deepEqual(await engine.sync(), ['Fake/a']);
    await pass(engine, ['Fake/a']);
    assert.deepEqual(fake.applied.at(-1), [{ type: 'update', resource: 'Fake/a', describe: 'set Fake/a to two', value: 'two' }]);
    assert.equal(fake.host.get('Fake/a'), 'two');
    assert.equal((await store.getStatus('Fake', 'a'))?.observedGeneration, 2);
    assert.deepEqual(await reasons(store, 'Fake/a'), ['Applied', 'Applied']);
    assert.deepEqual(await store.listDrift(), [], 'a spec change is not drift');
  } finally {
    await engine.stop();
  }
});

test('resources reconciling together share observe and apply calls', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  const keys: string[] = [];
  for (let i = 0; i < 50; i++) {
    await put(store, `r${i}`, { value: `v${i}` });
    keys.push(`Fake/r${i}`);
  }
  const engine = newEngine({ concurrency: 16 });
  try {
    await startAndSettle(engine, keys);
    assert.equal(fake.host.size, 50);
    // Each resource is observed twice (before and after apply) and applied once...
    assert.equal(fake.observed.flat().length, 100);
    assert.deepEqual(fake.appliedKeys().sort(), [...keys].sort());
    // ...but in batches: per wave of 16 workers one observe, one apply and one verifying observe; four
    // waves (16+16+16+2), not one call per resource.
    assert.ok(fake.observeCalls <= 8, `observe called ${fake.observeCalls} times for 50 resources: ${JSON.stringify(fake.observed.map((b) => b.length))}`);
    assert.ok(fake.applyCalls <= 4, `apply called ${fake.applyCalls} times for 50 resources: ${JSON.stringify(fake.applied.map((b) => b.length))}`);

    // A resync of 50 resources in sync: each is observed once, in at most ceil(50/16) + 1 calls.
    fake.observed.length = 0;
    const applies = fake.applyCalls;
    await pass(engine, keys);
    assert.equal(fake.observed.flat().length, 50);
    assert.ok(fake.observeCalls <= 5, `observe called ${fake.observeCalls} times for 50 resources: ${JSON.stringify(fake.observed.map((b) => b.length))}`);
    assert.equal(fake.applyCalls, applies, 'nothing applied on the resync');
  } finally {
    await engine.stop();
  }

  // With enough workers, all 50 go in one wave: one observe, one apply, one verify.
  const { store: store2, fake: fake2, newEngine: newEngine2 } = await harness(t);
  for (const k of keys) await put(store2, k.slice('Fake/'.length), { value: 'x' });
  const wide = newEngine2({ concurrency: 64 });
  try {
    await startAndSettle(wide, keys);
    assert.ok(fake2.observeCalls <= 3, `observe called ${fake2.observeCalls} times`);
    assert.ok(fake2.applyCalls <= 2, `apply called ${fake2.applyCalls} times`);
    assert.equal(fake2.applied.flat().length, 50);
  } finally {
    await wide.stop();
  }
});

test('passes ending together are written with a few store calls, not a lock round and fsyncs per resource', async (t) => {
  const { store, newEngine } = await harness(t);
  const keys: string[] = [];
  for (let i = 0; i < 50; i++) {
    await put(store, `w${i}`, { value: `v${i}` });
    keys.push(`Fake/w${i}`);
  }
  // Count the store calls the engine makes from here on.
  const calls = new Map<string, number>();
  for (const method of ['commit', 'deleteResources', 'updateStatus', 'appendEvent', 'deleteResource', 'recordDrifts', 'resolveDrift'] as const) {
    const original = (store as any)[method].bind(store);
    (store as any)[method] = (...args: unknown[]) => {
      calls.set(method, (calls.get(method) ?? 0) + 1);
      return original(...args);
    };
  }
  const engine = newEngine({ concurrency: 64 });
  try {
    await startAndSettle(engine, keys);
    assert.equal((await store.listStatuses()).filter((st) => st.phase === 'Ready').length, 50);
    assert.equal((await store.listEvents({ limit: 1000 })).filter((e) => e.reason === 'Applied').length, 50);
    for (const single of ['updateStatus', 'appendEvent', 'deleteResource', 'recordDrifts', 'resolveDrift']) assert.equal(calls.get(single) ?? 0, 0, `${single} called per resource`);
    assert.ok((calls.get('commit') ?? 0) <= 6, `50 resources written with ${calls.get('commit')} commits`);

    calls.clear();
    for (const k of keys) await store.markForDeletion('Fake', k.slice('Fake/'.length));
    await engine.sync();
    await pass(engine, keys);
    assert.deepEqual(await store.listResources(), []);
    assert.deepEqual(await store.listStatuses(), []);
    assert.equal((await store.listEvents({ limit: 1000 })).filter((e) => e.reason === 'Deleted').length, 50);
    assert.equal(calls.get('deleteResource') ?? 0, 0, 'records removed one by one');
    assert.ok((calls.get('deleteResources') ?? 0) <= 3, `50 records removed with ${calls.get('deleteResources')} calls`);
  } finally {
    await engine.stop();
  }
});

test('drift is recorded, healed and marked healed', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a']);
    assert.deepEqual(await store.listDrift(), []);

    fake.host.set('Fake/a', 'tampered'); // behind the engine's back
    await pass(engine, ['Fake/a']);

    assert.equal(fake.host.get('Fake/a'), 'one', 'drift must be healed');
    assert.equal(fake.applyCalls, 2);
    assert.deepEqual(fake.applied.at(-1), [{ type: 'update', resource: 'Fake/a', describe: 'set Fake/a to one', value: 'one' }]);
    const drift = await store.listDrift({ resource: 'Fake/a' });
    assert.equal(drift.length, 1);
    assert.deepEqual(
      { field: drift[0]!.field, desired: drift[0]!.desired, actual: drift[0]!.actual, policy: drift[0]!.policy, state: drift[0]!.state },
      { field: 'value', desired: 'one', actual: 'tampered', policy: 'heal', state: 'healed' },
    );
    assert.ok(drift[0]!.healedAt, 'a healed record says when');
    assert.deepEqual(await store.listDrift({ state: 'open' }), []);
    assert.deepEqual(await reasons(store, 'Fake/a'), ['Applied', 'DriftHealed']);
    const st = await store.getStatus('Fake', 'a');
    assert.equal(st?.phase, 'Ready');
    assert.equal(condition(st, 'Ready').status, 'True');
    assert.equal(engine.last.get('Fake/a')?.drifted, true);
  } finally {
    await engine.stop();
  }
});

test('driftPolicy warn records and reports drift without healing it', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one', driftPolicy: 'warn' });
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a']);
    assert.equal(fake.host.get('Fake/a'), 'one', 'warn still creates on the first pass');
    const appliesBefore = fake.applyCalls;

    fake.host.set('Fake/a', 'tampered');
    await pass(engine, ['Fake/a']);

    assert.equal(fake.host.get('Fake/a'), 'tampered', 'warn must not heal');
    assert.equal(fake.applyCalls, appliesBefore, 'warn must not call apply');
    assert.equal(engine.last.get('Fake/a')?.phase, 'Drifted');
    const st = await store.getStatus('Fake', 'a');
    assert.equal(st?.phase, 'Drifted');
    const ready = condition(st, 'Ready');
    assert.equal(ready.status, 'False');
    assert.equal(ready.reason, 'DriftDetected');
    assert.match(ready.message, /value/);
    const open = await store.listDrift({ state: 'open', resource: 'Fake/a' });
    assert.equal(open.length, 1);
    assert.deepEqual([open[0]!.field, open[0]!.desired, open[0]!.actual, open[0]!.policy], ['value', 'one', 'tampered', 'warn']);
    assert.deepEqual(await reasons(store, 'Fake/a'), ['Applied', 'DriftDetected']);

    // Seen again: the same record is updated, not duplicated; still not healed.
    await pass(engine, ['Fake/a']);
    const again = await store.listDrift({ resource: 'Fake/a' });
    assert.equal(again.length, 1);
    assert.equal(again[0]!.count, 2);
    assert.equal(fake.applyCalls, appliesBefore);

    // Someone puts the host right by hand: in sync again, the open record is closed.
    fake.host.set('Fake/a', 'one');
    await pass(engine, ['Fake/a']);
    assert.equal((await store.getStatus('Fake', 'a'))?.phase, 'Ready');
    assert.deepEqual(await store.listDrift({ state: 'open' }), [], 'a resource back in sync has no open drift');
    assert.equal(fake.applyCalls, appliesBefore);
  } finally {
    await engine.stop();
  }
});

test('a transient failure backs off, is retried by the queue, and recovers on its own', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  fake.failApply = 'transient';
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a'], false);
    assert.equal(engine.last.get('Fake/a')?.phase, 'Failed');
    const st = await store.getStatus('Fake', 'a');
    assert.equal(st?.phase, 'Failed');
    const reconciling = condition(st, 'Reconciling');
    assert.equal(reconciling.status, 'True');
    assert.equal(reconciling.reason, 'ProgressingWithRetry');
    assert.match(reconciling.message, /device busy/);
    assert.equal(condition(st, 'Ready').status, 'False');
    assert.equal(condition(st, 'Stalled').status, 'False');
    assert.ok((await reasons(store, 'Fake/a')).includes('ReconcileFailed'));

    // The queue retries without anyone enqueueing it.
    await until('apply retried', () => fake.applyCalls >= 3);
    assert.ok(engine.failuresOf('Fake/a') >= 2, 'failures are counted for the backoff');

    fake.failApply = false;
    const since = await mark();
    assert.ok(await engine.settle(['Fake/a'], { untilConverged: true, timeoutMs: 3000, since }), 'recovers without a manual enqueue');
    assert.equal(fake.host.get('Fake/a'), 'one');
    const ready = await store.getStatus('Fake', 'a');
    assert.equal(ready?.phase, 'Ready');
    assert.equal(condition(ready, 'Ready').status, 'True');
    assert.equal(condition(ready, 'Reconciling').status, 'False');
    assert.equal(engine.failuresOf('Fake/a'), 0, 'success forgets the failures');
  } finally {
    await engine.stop();
  }
});

test('a terminal error or a terminal blocked action stalls without retries until the spec changes', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  await put(store, 'b', { value: 'one', blocked: 'mode tor is not supported on this host yet' });
  fake.failApply = 'terminal';
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a', 'Fake/b']);
    for (const [name, msg] of [['a', /image is corrupt/], ['b', /mode tor is not supported/]] as const) {
      assert.equal(engine.last.get(`Fake/${name}`)?.phase, 'Stalled');
      const st = await store.getStatus('Fake', name);
      assert.equal(st?.phase, 'Stalled');
      const stalled = condition(st, 'Stalled');
      assert.equal(stalled.status, 'True');
      assert.match(stalled.message, msg);
      assert.equal(condition(st, 'Ready').status, 'False');
      assert.equal(condition(st, 'Reconciling').status, 'False');
      assert.ok((await reasons(store, `Fake/${name}`)).includes('Stalled'));
    }
    assert.ok(!fake.appliedKeys().includes('Fake/b'), 'a blocked plan is never applied');

    // Not retried: the counters stay flat.
    const [observes, applies] = [fake.observeCalls, fake.applyCalls];
    await sleep(250);
    assert.equal(fake.observeCalls, observes, 'a stalled resource is not observed again by itself');
    assert.equal(fake.applyCalls, applies, 'a stalled resource is not applied again by itself');
    assert.deepEqual(['Fake/a', 'Fake/b'].map((k) => engine.machineState(k)), ['stalled', 'stalled'], 'no retry delay pending');

    // A new generation takes both out of stalled.
    fake.failApply = false;
    await put(store, 'a', { value: 'two' });
    await put(store, 'b', { value: 'one' });
    const changed = await engine.sync();
    assert.deepEqual(changed.sort(), ['Fake/a', 'Fake/b']);
    await pass(engine, changed);
    for (const name of ['a', 'b']) {
      const st = await store.getStatus('Fake', name);
      assert.equal(st?.phase, 'Ready', `${name}: ${JSON.stringify(st)}`);
      assert.equal(st?.observedGeneration, 2);
      assert.equal(condition(st, 'Stalled').status, 'False');
    }
    assert.equal(fake.host.get('Fake/a'), 'two');
    assert.equal(fake.host.get('Fake/b'), 'one');
  } finally {
    await engine.stop();
  }
});

test('a dependant waits for its dependency to be Ready, then runs by itself', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  await put(store, 'b', { value: 'two', dependsOn: ['Fake/a'] });
  let release!: () => void;
  fake.gate = new Promise((r) => (release = r)); // holds A in apply
  const engine = newEngine();
  try {
    const since = await mark();
    await engine.sync();
    engine.enqueueAll();
    engine.start();
    await until('b waiting', () => engine.last.get('Fake/b')?.phase === 'Pending');
    const st = await store.getStatus('Fake', 'b');
    const ready = condition(st, 'Ready');
    assert.equal(ready.status, 'False');
    assert.equal(ready.reason, 'DependencyNotReady');
    assert.match(ready.message, /Fake\/a/);
    assert.ok(!fake.observed.flat().includes('Fake/b'), 'b is not even observed while a is not ready');
    assert.ok(!fake.host.has('Fake/b'));

    release();
    fake.gate = undefined;
    assert.ok(await engine.settle(['Fake/a', 'Fake/b'], { untilConverged: true, timeoutMs: 3000, since }), JSON.stringify([...engine.last.values()]));
    assert.equal(fake.host.get('Fake/b'), 'two');
    assert.equal((await store.getStatus('Fake', 'b'))?.phase, 'Ready');
    const order = fake.appliedKeys();
    assert.ok(order.indexOf('Fake/a') < order.indexOf('Fake/b'), `a applied before b: ${order.join(', ')}`);
  } finally {
    release();
    await engine.stop();
  }
});

test('a suspended resource is not reconciled; resuming heals it', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a']);

    await store.setSuspended('Fake', 'a', true);
    assert.deepEqual(await engine.sync(), ['Fake/a']);
    await pass(engine, ['Fake/a']);
    const st = await store.getStatus('Fake', 'a');
    assert.equal(st?.phase, 'Suspended');
    assert.equal(condition(st, 'Reconciling').reason, 'Suspended');

    fake.host.set('Fake/a', 'tampered');
    const [observes, applies] = [fake.observeCalls, fake.applyCalls];
    await pass(engine, ['Fake/a']); // e.g. a periodic resync
    assert.equal(engine.last.get('Fake/a')?.phase, 'Suspended');
    assert.equal(fake.host.get('Fake/a'), 'tampered', 'a suspended resource is not healed');
    assert.equal(fake.observeCalls, observes);
    assert.equal(fake.applyCalls, applies);

    await store.setSuspended('Fake', 'a', false);
    assert.deepEqual(await engine.sync(), ['Fake/a']);
    await pass(engine, ['Fake/a']);
    assert.equal(fake.host.get('Fake/a'), 'one', 'resumed: healed');
    assert.equal((await store.getStatus('Fake', 'a'))?.phase, 'Ready');
    assert.deepEqual(await store.listDrift({ state: 'open' }), []);
    assert.equal((await store.listDrift({ resource: 'Fake/a' })).length, 1);
    assert.equal((await reasons(store, 'Fake/a')).at(-1), 'DriftHealed');
  } finally {
    await engine.stop();
  }
});

test('a suspend that arrives in the middle of a pass still takes effect', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  const engine = newEngine();
  let release!: () => void;
  try {
    await startAndSettle(engine, ['Fake/a']);

    // Hold a healing pass in apply, and suspend meanwhile.
    fake.gate = new Promise((r) => (release = r));
    fake.host.set('Fake/a', 'tampered');
    const applies = fake.applyCalls;
    engine.enqueue(['Fake/a']);
    await until('apply in flight', () => fake.applyCalls > applies);
    await store.setSuspended('Fake', 'a', true);
    const changed = await engine.sync();
    assert.deepEqual(changed, ['Fake/a']);
    const since = await mark();
    engine.enqueue(changed); // runs again once the current pass is done
    fake.gate = undefined;
    release();
    await until('suspended', () => engine.last.get('Fake/a')?.phase === 'Suspended' && (engine.last.get('Fake/a') as { at: number } | undefined)!.at >= since);
    assert.equal((await store.getStatus('Fake', 'a'))?.phase, 'Suspended');

    fake.host.set('Fake/a', 'tampered again');
    await pass(engine, ['Fake/a']);
    assert.equal(engine.last.get('Fake/a')?.phase, 'Suspended');
    assert.equal(fake.host.get('Fake/a'), 'tampered again', 'suspended: not healed');
  } finally {
    release?.();
    await engine.stop();
  }
});

test('delete plans with deleting=true, cleans the host, removes the resource, dependants first', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  await put(store, 'b', { value: 'two', dependsOn: ['Fake/a'] });
  await put(store, 'c', { value: 'three' });
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a', 'Fake/b', 'Fake/c']);

    assert.ok(await store.markForDeletion('Fake', 'c'));
    assert.deepEqual(await engine.sync(), ['Fake/c']);
    await pass(engine, ['Fake/c']);
    assert.ok(fake.plans.some((p) => p.key === 'Fake/c' && p.deleting), 'plan is called with deleting=true');
    assert.deepEqual(fake.applied.at(-1), [{ type: 'remove', resource: 'Fake/c', describe: 'remove Fake/c' }]);
    assert.ok(!fake.host.has('Fake/c'), 'the host is cleaned');
    assert.equal(await store.getResource('Fake', 'c'), undefined);
    assert.equal(await store.getStatus('Fake', 'c'), undefined);
    assert.equal(engine.last.get('Fake/c')?.phase, 'Deleted');
    assert.ok(!engine.resources().some((r) => r.metadata.name === 'c'));
    const events = await store.listEvents({ resource: 'Fake/c' });
    assert.deepEqual(events.at(-1) && [events.at(-1)!.reason, events.at(-1)!.message], ['Deleted', 'remove Fake/c']);

    // Deleting a and b: a (the dependency) goes only after b (its dependant).
    await store.markForDeletion('Fake', 'a');
    await store.markForDeletion('Fake', 'b');
    assert.deepEqual((await engine.sync()).sort(), ['Fake/a', 'Fake/b']);
    await pass(engine, ['Fake/a', 'Fake/b']);
    assert.equal(fake.host.size, 0);
    assert.deepEqual(await store.listResources(), []);
    const removed = fake.appliedKeys().slice(-2);
    assert.deepEqual(removed, ['Fake/b', 'Fake/a'], 'the dependant is removed before its dependency');
  } finally {
    await engine.stop();
  }
});

test('after a restart, a host change to a Ready resource is drift, not a first apply', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  const first = newEngine();
  try {
    await startAndSettle(first, ['Fake/a']);
  } finally {
    await first.stop();
  }
  assert.equal((await store.getStatus('Fake', 'a'))?.observedGeneration, 1);

  // Unchanged host: the new engine adopts it without applying anything.
  const second = newEngine();
  try {
    await startAndSettle(second, ['Fake/a']);
    assert.equal(fake.applyCalls, 1);
  } finally {
    await second.stop();
  }

  // The host changed while no controller ran.
  fake.host.set('Fake/a', 'tampered');
  const third = newEngine();
  try {
    await startAndSettle(third, ['Fake/a']);
    const drift = await store.listDrift({ resource: 'Fake/a' });
    assert.equal(drift.length, 1, 'recorded as drift');
    assert.deepEqual([drift[0]!.field, drift[0]!.desired, drift[0]!.actual, drift[0]!.state], ['value', 'one', 'tampered', 'healed']);
    assert.deepEqual(await reasons(store, 'Fake/a'), ['Applied', 'DriftHealed']);
    assert.equal(fake.host.get('Fake/a'), 'one');
    assert.equal(third.last.get('Fake/a')?.drifted, true);
  } finally {
    await third.stop();
  }

  // But a spec changed while no controller ran is an apply, not drift.
  await put(store, 'a', { value: 'two' });
  const fourth = newEngine();
  try {
    await startAndSettle(fourth, ['Fake/a']);
    assert.equal(fake.host.get('Fake/a'), 'two');
    assert.deepEqual(await reasons(store, 'Fake/a'), ['Applied', 'DriftHealed', 'Applied']);
    assert.equal((await store.listDrift({ resource: 'Fake/a' })).length, 1, 'no new drift record');
  } finally {
    await fourth.stop();
  }
});

test('a controller that throws never crashes the process: the pass ends in backoff and recovers', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  fake.failObserve = true;
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a'], false);
    assert.equal(engine.last.get('Fake/a')?.phase, 'Failed');
    const st = await store.getStatus('Fake', 'a');
    assert.equal(condition(st, 'Reconciling').reason, 'ProgressingWithRetry');
    assert.match(condition(st, 'Ready').message, /fake observe failed/);
    await until('observe retried', () => fake.observeCalls >= 3);
    assert.equal(fake.applyCalls, 0);

    fake.failObserve = false;
    let since = await mark();
    assert.ok(await engine.settle(['Fake/a'], { untilConverged: true, timeoutMs: 3000, since }));
    assert.equal(fake.host.get('Fake/a'), 'one');

    // A throwing plan (an invoked actor of the machine) is a Failed pass of the same actor, with the
    // reason ReconcileFailed; it backs off, and the pass after the fix succeeds.
    fake.failPlan = true;
    fake.host.set('Fake/a', 'tampered');
    await pass(engine, ['Fake/a'], false);
    assert.equal(engine.last.get('Fake/a')?.phase, 'Failed');
    const failedSt = await store.getStatus('Fake', 'a');
    assert.equal(failedSt?.phase, 'Failed');
    assert.equal(condition(failedSt, 'Ready').reason, 'ReconcileFailed');
    assert.match(condition(failedSt, 'Ready').message, /fake plan exploded/);
    await until('plan retried', () => fake.plans.filter((p) => p.key === 'Fake/a').length >= 4);
    fake.failPlan = false;
    since = await mark();
    assert.ok(await engine.settle(['Fake/a'], { untilConverged: true, timeoutMs: 3000, since }), JSON.stringify(engine.last.get('Fake/a')));
    assert.equal(fake.host.get('Fake/a'), 'one');
    assert.equal((await store.getStatus('Fake', 'a'))?.phase, 'Ready');
  } finally {
    await engine.stop();
  }
});

test('a Waiting hold waits for the delay the controller gave: no failure, no ReconcileFailed, re-run by itself', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one', waitReason: 'NoUplink', waitMs: 150 });
  // A long backoff: were the wait counted as a failure, the re-run would come much later than 150 ms.
  const engine = newEngine({ queue: { baseDelayMs: 5_000, maxDelayMs: 10_000 } });
  try {
    await startAndSettle(engine, ['Fake/a'], false);
    const r = engine.last.get('Fake/a')!;
    assert.deepEqual([r.phase, r.reason, r.machineState], ['Waiting', 'NoUplink', 'waiting']);
    const st = await store.getStatus('Fake', 'a');
    assert.equal(st?.phase, 'Waiting');
    assert.deepEqual([condition(st, 'Ready').status, condition(st, 'Ready').reason], ['False', 'NoUplink']);
    assert.deepEqual([condition(st, 'Reconciling').status, condition(st, 'Reconciling').reason], ['True', 'NoUplink']);
    assert.equal(condition(st, 'Stalled').status, 'False');
    assert.equal(engine.failuresOf('Fake/a'), 0, 'a wait is not a failure');
    assert.ok(!(await reasons(store, 'Fake/a')).includes('ReconcileFailed'));
    assert.ok(!fake.host.has('Fake/a'), 'nothing applied while holding');

    // Looked at again after the delay, without anyone enqueueing it; still waiting: one event only.
    const plans = fake.plans.length;
    await until('re-run after the delay', () => fake.plans.length > plans, 1000);
    await sleep(50);
    assert.deepEqual(await reasons(store, 'Fake/a'), ['NoUplink'], 'the same wait again is no new event');

    fake.waitOver = true;
    await until('ready after the wait', async () => (await store.getStatus('Fake', 'a'))?.phase === 'Ready', 1000);
    assert.equal(fake.host.get('Fake/a'), 'one');
    assert.equal(engine.failuresOf('Fake/a'), 0);
  } finally {
    await engine.stop();
  }
});

test('failures back off exponentially in the machine: the delay grows with the failure count', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  fake.failObserve = true;
  const engine = newEngine({ queue: { baseDelayMs: 40, maxDelayMs: 1000, jitter: 0 } });
  try {
    await startAndSettle(engine, ['Fake/a'], false);
    await until('three failures', () => engine.failuresOf('Fake/a') >= 3, 2000);
    // Observes happen at about 0, 40, 40+80, 40+80+160 ms: the gaps double.
    const times: number[] = [];
    const observe = fake.observe.bind(fake);
    fake.observe = async (rs) => {
      times.push(Date.now());
      return observe(rs);
    };
    await until('two more retries', () => times.length >= 2, 3000);
    const gap = times[1]! - times[0]!;
    assert.ok(gap >= 300, `retry gap ${gap} ms after 4+ failures (40 ms base, doubling)`);
    await until('resting in backoff', () => engine.machineState('Fake/a') === 'backoff');
    const events = (await store.listEvents({ resource: 'Fake/a' })).filter((e) => e.reason === 'ReconcileFailed');
    assert.match(events.at(-1)!.message, /^ReconcileFailed: fake observe failed.*\(retry \d+\)$/);
  } finally {
    await engine.stop();
  }
});

test('an action applied beside a hold (a crash recorded while the restart waits) ends with the hold', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one', crashed: true });
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a'], false);
    assert.deepEqual(fake.crashesRecorded, ['Fake/a'], 'the action beside the hold is applied');
    assert.equal(fake.observeCalls, 1, 'a held pass does not observe again to verify');
    const r = engine.last.get('Fake/a')!;
    assert.deepEqual([r.phase, r.reason], ['Waiting', 'CrashLoop']);
    assert.deepEqual(r.applied.map((a) => a.type), ['record-crash']);
    const st = await store.getStatus('Fake', 'a');
    assert.equal(st?.phase, 'Waiting');
    assert.equal(condition(st, 'Ready').reason, 'CrashLoop');
    assert.deepEqual(await reasons(store, 'Fake/a'), ['Applied', 'CrashLoop']);
    assert.equal(engine.failuresOf('Fake/a'), 0);
  } finally {
    await engine.stop();
  }
});

test('an OutcomeError from apply sets the reason; Stalled is not retried and says why', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  fake.failApply = 'terminal';
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a']);
    const st = await store.getStatus('Fake', 'a');
    assert.deepEqual([st?.phase, condition(st, 'Stalled').reason, condition(st, 'Ready').reason], ['Stalled', 'ImageCorrupt', 'ImageCorrupt']);
    assert.equal(engine.machineState('Fake/a'), 'stalled');
  } finally {
    await engine.stop();
  }
});

test('delete, then apply again before the deletion pass finishes: nothing is lost, it ends Ready', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  const engine = newEngine();
  let release!: () => void;
  try {
    await startAndSettle(engine, ['Fake/a']);
    fake.gate = new Promise((r) => (release = r)); // holds the deletion in apply
    assert.ok(await store.markForDeletion('Fake', 'a'));
    engine.enqueue(await engine.sync());
    await until('removal in flight', () => fake.applied.at(-1)?.[0]?.type === 'remove');

    // Applied again meanwhile: the tombstone goes.
    await put(store, 'a', { value: 'one' });
    assert.equal((await store.getResource('Fake', 'a'))?.deletionRequestedAt, undefined);
    const since = await mark();
    engine.enqueue(await engine.sync());
    fake.gate = undefined;
    release();

    assert.ok(await engine.settle(['Fake/a'], { untilConverged: true, timeoutMs: 3000, since }), JSON.stringify(engine.last.get('Fake/a')));
    const r = await store.getResource('Fake', 'a');
    assert.ok(r, 'the re-applied record is still in the store');
    assert.equal(r.deletionRequestedAt, undefined);
    assert.equal(engine.last.get('Fake/a')?.phase, 'Ready');
    assert.equal(engine.machineState('Fake/a'), 'ready');
    assert.equal(fake.host.get('Fake/a'), 'one', 'recreated on the host');
    assert.equal((await store.getStatus('Fake', 'a'))?.phase, 'Ready');
    assert.ok(!(await reasons(store, 'Fake/a')).includes('Deleted'));

    // Later passes are ordinary ones: no deletion plans any more.
    const plansBefore = fake.plans.length;
    await pass(engine, ['Fake/a']);
    assert.ok(fake.plans.slice(plansBefore).every((p) => !p.deleting), 'no deletion pass after the re-apply');
    assert.equal(fake.host.get('Fake/a'), 'one');
  } finally {
    release?.();
    await engine.stop();
  }
});

test('a failing drift write is reported once, never crashes, and the pass still ends', async (t) => {
  const { dir, store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  const warnings: string[] = [];
  const engine = newEngine({ onWarning: (line) => warnings.push(line) });
  try {
    await startAndSettle(engine, ['Fake/a']);
    // The kind's drift folder is a file: every drift write fails (as on a full or read-only disk).
    await fs.rm(path.join(dir, 'drift', 'Fake'), { recursive: true, force: true });
    await fs.writeFile(path.join(dir, 'drift', 'Fake'), 'not a folder');
    fake.host.set('Fake/a', 'tampered');
    await pass(engine, ['Fake/a']);
    assert.equal(fake.host.get('Fake/a'), 'one', 'healed all the same');
    assert.equal((await store.getStatus('Fake', 'a'))?.phase, 'Ready');
    assert.deepEqual(await reasons(store, 'Fake/a'), ['Applied', 'DriftHealed']);
    fake.host.set('Fake/a', 'tampered again');
    await pass(engine, ['Fake/a']);
    assert.equal(warnings.length, 1, `reported once: ${warnings.join(' | ')}`);
    assert.match(warnings[0]!, /Fake\/a: could not write its drift records: /);
  } finally {
    await engine.stop();
  }
});

test('a store that cannot be written (lock timeout) is no failure of the resource', async (t) => {
  const { dir, fake, newEngine } = await harness(t);
  const store = await Store.open(dir, { lockTimeoutMs: 100 });
  await put(store, 'a', { value: 'one' });
  const warnings: string[] = [];
  const engine = newEngine({ store, onWarning: (line) => warnings.push(line) });
  let unlock!: () => void;
  try {
    await startAndSettle(engine, ['Fake/a']);
    // Another holder keeps the lock (in this process: a separate Store on the same directory shares it).
    const held = store.withLock(() => new Promise<void>((r) => (unlock = r)), { timeoutMs: 1000 });
    await sleep(20);
    fake.host.set('Fake/a', 'tampered');
    await pass(engine, ['Fake/a'], false);
    const r = engine.last.get('Fake/a')!;
    assert.equal(r.phase, 'Ready', 'the pass healed the host; only its record could not be written');
    assert.equal(engine.failuresOf('Fake/a'), 0);
    assert.equal(fake.host.get('Fake/a'), 'one');
    assert.match(warnings.join('\n'), /could not write the outcome of its pass/);
    unlock();
    await held;
  } finally {
    unlock?.();
    await engine.stop();
  }
});

test('settle waits for a pass that started after the caller\'s write, not an older outcome', async (t) => {
  const { store, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a']);
    const since = await mark();
    assert.equal(await engine.settle(['Fake/a'], { untilConverged: true, timeoutMs: 150, since }), false, 'the Ready from before does not count');
    engine.enqueue(['Fake/a']);
    assert.equal(await engine.settle(['Fake/a'], { untilConverged: true, timeoutMs: 2000, since }), true);
  } finally {
    await engine.stop();
  }
});

test('the machine state and its transitions are written to status and shown by describe', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one', waitReason: 'RouteNotReady', waitMs: 60_000 });
  const engine = newEngine();
  try {
    await startAndSettle(engine, ['Fake/a'], false);
    fake.waitOver = true;
    await pass(engine, ['Fake/a']);
    const st = await store.getStatus('Fake', 'a');
    const machine = st?.fields.machine as { state: string; transitions: { at: string; from: string; to: string; reason: string }[] };
    assert.equal(machine.state, 'ready');
    assert.deepEqual(
      machine.transitions.map((x) => [x.from, x.to, x.reason]),
      [
        ['pending', 'waiting', 'RouteNotReady'],
        ['waiting', 'ready', 'ReconciliationSucceeded'],
      ],
    );
    assert.ok(machine.transitions.every((x) => !Number.isNaN(Date.parse(x.at))));

    const { describeResource } = await import('../src/cli/commands/describe.ts');
    const text = await describeResource(store, (await store.getResource('Fake', 'a'))!, st);
    assert.match(text, /^Machine State: +ready$/m);
    assert.match(text, /^ {2}\S+ +\S+ +pending +waiting +RouteNotReady$/m);
    assert.match(text, /^ {2}\S+ +\S+ +waiting +ready +ReconciliationSucceeded$/m);
    assert.doesNotMatch(text, /^Status:[\s\S]*transitions/m, 'the machine is not dumped again under Status');

    // A new engine (a restart) keeps the history.
    await engine.stop();
    const again = newEngine();
    try {
      fake.waitOver = false;
      await startAndSettle(again, ['Fake/a'], false);
      const m2 = (await store.getStatus('Fake', 'a'))?.fields.machine as typeof machine;
      assert.deepEqual(m2.transitions.map((x) => x.to), ['waiting', 'ready', 'waiting']);
    } finally {
      await again.stop();
    }
  } finally {
    await engine.stop();
  }
});

test('collectGarbage logs each line as a GarbageCollected event and never throws', async (t) => {
  const { store, fake, newEngine } = await harness(t);
  await put(store, 'a', { value: 'one' });
  const warnings: string[] = [];
  const engine = newEngine({ onWarning: (line) => warnings.push(line) });
  try {
    fake.garbage = ['removed netns qw-old'];
    assert.deepEqual(await engine.collectGarbage(), [], 'nothing before the store was read (an empty world would claim everything)');
    await engine.sync();
    assert.deepEqual(await engine.collectGarbage(), ['removed netns qw-old']);
    const events = await store.listEvents({ resource: 'controller' });
    assert.deepEqual(events.map((e) => [e.reason, e.message]), [['GarbageCollected', 'Fake: removed netns qw-old']]);
    fake.garbage = new Error('ip netns list failed');
    assert.deepEqual(await engine.collectGarbage(), []);
    assert.match(warnings.join('\n'), /garbage collection failed: ip netns list failed/);
  } finally {
    await engine.stop();
  }
});

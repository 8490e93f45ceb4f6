// The reconcile engine: one XState actor per resource, fed by a keyed work queue with backoff.
// Level-triggered: every pass starts by observing the host as it is; the store says what should be.
import { createActor, waitFor, type Actor } from 'xstate';
import { makeWorld, type Action, type AnyController, type World } from './contract.ts';
import { keyOf, type ObjectKey } from '../resources/keys.ts';
import type { Condition, ConditionPatch, StatusPatch, Store, StoredResource } from '../store/store.ts';
import { Batcher, fulfilled } from './batcher.ts';
import { WorkQueue, type QueueOptions } from './queue.ts';
import { SETTLED_STATES, TerminalError, resourceMachine, type SettledState } from './resource-machine.ts';

export type PassState = SettledState | 'waiting';

export interface PassResult {
  key: string;
  state: PassState;
  generation: number;
  applied: Action[];
  drifted: boolean;
  message: string;
}

export interface EngineOptions {
  store: Store;
  controllers: AnyController[];
  /** Resources reconciled at once. */
  concurrency?: number;
  queue?: QueueOptions;
  onSettled?: (result: PassResult) => void;
}

interface Entry {
  resource: StoredResource;
  controller: AnyController;
  actor: Actor<typeof resourceMachine>;
  /** Generation the stored status said was Ready when this process loaded the resource (0: not). */
  syncedAtStart: number;
  /** What the last pass observed, for the controller's status report. */
  lastActual?: unknown;
  /** The last status patch written (JSON), to skip writing the same again. */
  lastStatus?: string;
  /** Store writes started from inside the machine (drift records), awaited before status is written. */
  pendingWrites: Promise<unknown>[];
  /**
   * The store may hold open drift records of this resource: set when drift is recorded, and at first
   * (records from before a restart). A pass that ends in sync closes them, also when it healed nothing
   * itself (warn drift put right by hand, a heal whose retry found the host already fixed).
   */
  driftMayBeOpen: boolean;
}


export class Engine {
  readonly queue: WorkQueue<string>;
  /** The latest pass of each resource. */
  readonly last = new Map<string, PassResult>();
  private readonly entries = new Map<string, Entry>();
  private readonly controllers = new Map<string, AnyController>();
  private readonly observers = new Map<string, Batcher<StoredResource, unknown>>();
  private readonly appliers = new Map<string, Batcher<Action[], void>>();
  /** dependency key -> keys waiting for it to be ready */
  private readonly waiting = new Map<string, Set<string>>();
  private workers: Promise<void>[] = [];
  /** Passes whose outcome is still being written to the store (see work()). */
  private readonly finishing = new Set<Promise<void>>();
  private readonly store: Store;

  constructor(private readonly opts: EngineOptions) {
    this.store = opts.store;
    this.queue = new WorkQueue(opts.queue);
    for (const c of opts.controllers) this.controllers.set(c.kind, c);
  }

  /** Reads the store; creates, updates or drops actors. Returns the keys that changed. */
  async sync(): Promise<string[]> {
    const [resources, statuses] = await Promise.all([this.store.listResources(), this.store.listStatuses()]);
    const statusOf = new Map(statuses.map((s) => [`${s.kind}/${s.name}`, s]));
    const changed: string[] = [];
    const seen = new Set<string>();
    for (const r of resources) {
      const key = keyOf(r);
      seen.add(key);
      const entry = this.entries.get(key);
      if (!entry) {
        // A resource that was in sync at this generation (before a restart) counts as in sync, so
        // what differs now is drift, not a first apply.
        const st = statusOf.get(key);
        const synced = st && st.observedGeneration === r.generation && (st.phase === 'Ready' || st.phase === 'Drifted');
        const entry = this.createEntry(r, synced ? r.generation : 0);
        entry.syncedAtStart = st?.phase === 'Ready' && st.observedGeneration === r.generation ? r.generation : 0;
        this.entries.set(key, entry);
        changed.push(key);
        continue;
      }
      const before = entry.resource;
      entry.resource = r;
      if (r.generation !== before.generation) {
        entry.actor.send({ type: 'SPEC', generation: r.generation, driftPolicy: driftPolicyOf(r) });
        changed.push(key);
      }
      if (Boolean(r.suspended) !== Boolean(before.suspended)) {
        entry.actor.send({ type: r.suspended ? 'SUSPEND' : 'RESUME' });
        changed.push(key);
      }
      if (r.deletionRequestedAt && !before.deletionRequestedAt) changed.push(key);
    }
    for (const [key, entry] of this.entries) {
      if (!seen.has(key)) {
        entry.actor.stop();
        this.entries.delete(key);
      }
    }
    return [...new Set(changed)];
  }

  /** A snapshot of the desired state, for one pass. */
  world(): World {
    return makeWorld(this.resources());
  }

  /** Resources in the store, as last synced. */
  resources(kind?: string): StoredResource[] {
    return [...this.entries.values()].map((e) => e.resource).filter((r) => !kind || r.kind === kind);
  }

  /** Starts every controller's event sources; what they report is reconciled at once. */
  watch(): { close(): void } {
    const handles = [...this.controllers.values()].flatMap((c) => (c.watch ? [c.watch((keys: ObjectKey[]) => this.enqueue(keys), () => this.world())] : []));
    return { close: () => handles.forEach((h) => h.close()) };
  }

  enqueue(keys: Iterable<string>): void {
    for (const key of keys) this.queue.add(key);
  }

  enqueueAll(): void {
    this.enqueue(this.entries.keys());
  }

  start(): void {
    const n = this.opts.concurrency ?? 16;
    for (let i = 0; i < n; i++) this.workers.push(this.work());
  }

  async stop(): Promise<void> {
    this.queue.shutDown();
    await Promise.all(this.workers);
    this.workers = [];
    while (this.finishing.size > 0) await Promise.all(this.finishing);
    for (const e of this.entries.values()) e.actor.stop();
  }

  /**
   * Waits until every key has finished a pass (and, with untilConverged, reached a state that retrying
   * would not change: ready, drifted, stalled, suspended or deleted) or the timeout passes.
   */
  async settle(keys: string[], opts: { untilConverged: boolean; timeoutMs: number; since: number }): Promise<boolean> {
    const deadline = Date.now() + opts.timeoutMs;
    const done = (key: string) => {
      const r = this.last.get(key);
      if (!r || (r as PassResult & { at?: number }).at! < opts.since) return false;
      if (!opts.untilConverged) return r.state !== 'waiting' || !this.entries.has(key);
      return ['ready', 'drifted', 'stalled', 'suspended', 'deleted'].includes(r.state);
    };
    while (!keys.every(done)) {
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 25));
    }
    return true;
  }

  private createEntry(resource: StoredResource, syncedGeneration: number): Entry {
    const controller = this.controllers.get(resource.kind) ?? unsupported(resource.kind);
    const entry = { resource, controller, pendingWrites: [], driftMayBeOpen: true } as unknown as Entry;
    this.startActor(entry, syncedGeneration);
    return entry;
  }

  private startActor(entry: Entry, syncedGeneration: number): void {
    const { resource, controller } = entry;
    const key = keyOf(resource);
    entry.actor = createActor(resourceMachine, {
      input: {
        key,
        generation: resource.generation,
        syncedGeneration,
        driftPolicy: driftPolicyOf(resource),
        suspended: Boolean(resource.suspended),
        steps: {
          observe: () => this.observer(controller).load(entry.resource),
          plan: (actual) => {
            // Interim: a plan's hold becomes a blocked step (terminal when Stalled).
            const plan = controller.plan(entry.resource, actual, this.world());
            if (!plan.hold) return plan.actions;
            return [{ type: 'blocked', resource: key, describe: plan.hold.message, terminal: plan.hold.type === 'Stalled' } as Action];
          },
          apply: (actions) => this.applier(controller).load(actions),
          onDrift: (actual, _plan, healing) => {
            const policy = healing ? 'heal' : 'warn';
            entry.driftMayBeOpen = true;
            const diffs = controller.diff(entry.resource, actual, this.world());
            if (diffs.length) entry.pendingWrites.push(this.store.recordDrifts(key, diffs, policy));
          },
        },
      },
    });
    // An actor error must never take the process down; the machine handles its own failures.
    entry.actor.subscribe({ error: (err) => this.emit(key, entry.resource.generation, 'backoff', [], false, String(err)) });
    entry.actor.start();
    if (resource.suspended) entry.actor.send({ type: 'SUSPEND' });
  }

  private observer(controller: AnyController): Batcher<StoredResource, unknown> {
    let b = this.observers.get(controller.kind);
    if (!b) {
      b = new Batcher(async (resources) => {
        const found = await controller.observe(resources, this.world());
        return resources.map((r) => fulfilled(found.get(keyOf(r))));
      });
      this.observers.set(controller.kind, b);
    }
    return b;
  }

  /** Applies the plans of resources reconciling together in one batch. */
  private applier(controller: AnyController): Batcher<Action[], void> {
    let b = this.appliers.get(controller.kind);
    if (!b) {
      // A failed batch fails every resource in it: each retries on its own backoff and observes
      // the host again first, so nothing is applied twice on a partial failure.
      b = new Batcher<Action[], void>(async (plans) => {
        await controller.apply(plans.flat(), this.world());
        return plans.map(() => fulfilled(undefined));
      });
      this.appliers.set(controller.kind, b);
    }
    return b;
  }

  private async work(): Promise<void> {
    for (;;) {
      const key = await this.queue.get();
      if (key === undefined) return;
      const failed = (err: unknown) => {
        this.emit(key, this.entries.get(key)?.resource.generation ?? 0, 'backoff', [], false, String(err));
        this.queue.addRateLimited(key);
      };
      let finish: (() => Promise<void>) | undefined;
      try {
        finish = await this.reconcile(key);
      } catch (err) {
        failed(err);
        this.queue.done(key);
        continue;
      }
      // The worker takes its next key as soon as the host work of this pass is done, while the outcome
      // is written to the store (the key stays "processing" until then, so it never runs twice at once).
      // Awaiting the writes here made each worker leave at its own time, as store writes are serialized
      // by its lock, so after the first wave every observe/apply batch held one resource (50 resources
      // at concurrency 16 cost 70 observe calls instead of 8).
      const tracked: Promise<void> = (finish ? finish() : Promise.resolve()).catch(failed).finally(() => {
        this.finishing.delete(tracked);
        this.queue.done(key);
      });
      this.finishing.add(tracked);
    }
  }

  /** Runs the host work of one pass of key; returns what writes its outcome to the store (slower). */
  private async reconcile(key: string): Promise<(() => Promise<void>) | undefined> {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    const r = entry.resource;
    const deleting = Boolean(r.deletionRequestedAt);

    const blockers = this.blockers(entry, deleting);
    if (blockers.length > 0) {
      for (const b of blockers) {
        if (!this.waiting.has(b)) this.waiting.set(b, new Set());
        this.waiting.get(b)!.add(key);
      }
      const message = deleting ? `waiting for ${blockers.join(', ')} to be deleted first` : `waiting for ${blockers.join(', ')} to be ready`;
      await this.writeStatus(entry, {
        phase: deleting ? 'Deleting' : 'Pending',
        conditions: [
          { type: 'Ready', status: 'False', reason: 'DependencyNotReady', message },
          { type: 'Reconciling', status: 'True', reason: 'DependencyNotReady', message },
        ],
      });
      this.emit(key, r.generation, 'waiting', [], false, message);
      return undefined;
    }

    // An exception thrown inside the machine (a controller's plan or diff runs in XState actions) leaves
    // the actor in status 'error' for good: every later waitFor rejected at once without calling the
    // controller again, so the resource backed off forever even after the cause was gone. Start afresh,
    // keeping what was known to be in sync.
    if (entry.actor.getSnapshot().status === 'error') {
      const synced = entry.actor.getSnapshot().context.syncedGeneration;
      entry.actor.stop();
      this.startActor(entry, synced);
    }
    const actor = entry.actor;
    // sync() sends SUSPEND/RESUME when the store changes, but a SUSPEND arriving mid-pass is ignored by
    // the machine (and never sent again): make the machine agree with the store before each pass.
    const snap = actor.getSnapshot();
    if (!deleting && Boolean(r.suspended) !== snap.matches('suspended')) actor.send({ type: r.suspended ? 'SUSPEND' : 'RESUME' });
    actor.send(deleting ? { type: 'DELETE' } : { type: 'RECONCILE' });
    const snapshot = await waitFor(actor, (s) => (SETTLED_STATES as readonly string[]).includes(s.value as string) && !s.matches('pending'));
    return () => this.finish(entry, snapshot.value as SettledState, snapshot.context);
  }

  /** Writes the outcome of a pass and acts on it (retry, wake dependants, forget a deleted resource). */
  private async finish(entry: Entry, state: SettledState, ctx: { applied: Action[]; drifted: boolean; error?: { message: string }; actual?: unknown }): Promise<void> {
    const r = entry.resource;
    const key = keyOf(r);
    await Promise.all(entry.pendingWrites.splice(0));
    if (state === 'deleted') {
      // Gone from the store and the engine before the pass is reported and dependants are woken. It used
      // to be removed after waking them: a dependency being deleted then ran its blockers() check while
      // this entry still existed, found itself blocked again and was never woken (deleting two resources
      // where one depends on the other hung in "waiting for ... to be deleted first"); and settle() could
      // report 'deleted' while the resource was still in the store.
      await this.store.deleteResource(r.kind, r.metadata.name);
      entry.actor.stop();
      this.entries.delete(key);
    }
    entry.lastActual = ctx.actual;
    await this.record(entry, state, ctx.applied, ctx.drifted, ctx.error?.message);

    if (state === 'backoff') this.queue.addRateLimited(key);
    else this.queue.forget(key);
    if (state === 'ready' || state === 'deleted') {
      const waiters = this.waiting.get(key);
      this.waiting.delete(key);
      if (waiters) this.enqueue(waiters);
    }
    // A dependency the host changed under (healed drift) may have taken its dependants' state with it
    // (a VM's tap goes with its Route's netns): look at them again.
    if (state === 'ready' && ctx.drifted) this.enqueue(this.dependantsOf(key));
  }

  private dependantsOf(key: string): string[] {
    const all = this.resources();
    const world = this.world();
    return all.filter((o) => (this.controllers.get(o.kind)?.dependencies?.(o, world) ?? []).includes(key as ObjectKey)).map((o) => keyOf(o));
  }

  /** Dependencies not ready yet (or, when deleting, dependants not deleted yet). */
  private blockers(entry: Entry, deleting: boolean): string[] {
    const all = this.resources();
    const world = this.world();
    if (deleting) {
      const key = keyOf(entry.resource);
      return all
        .filter((o) => o.deletionRequestedAt && (this.controllers.get(o.kind)?.dependencies?.(o, world) ?? []).includes(key))
        .map((o) => keyOf(o));
    }
    const deps: ObjectKey[] = entry.controller.dependencies?.(entry.resource, world) ?? [];
    return deps.filter((dep) => {
      const other = this.entries.get(dep);
      if (!other || other.resource.deletionRequestedAt) return true;
      const last = this.last.get(dep);
      // Before this process has reconciled the dependency, its stored status speaks for it.
      if (!last) return other.syncedAtStart !== other.resource.generation;
      return last.state !== 'ready' || last.generation !== other.resource.generation;
    });
  }

  private async record(entry: Entry, state: SettledState, applied: Action[], drifted: boolean, error?: string): Promise<void> {
    const r = entry.resource;
    const key = keyOf(r);
    const conditions = (ready: [Condition['status'], string, string], reconciling: [Condition['status'], string, string], stalled: [Condition['status'], string, string]): ConditionPatch[] => [
      { type: 'Ready', status: ready[0], reason: ready[1], message: ready[2] },
      { type: 'Reconciling', status: reconciling[0], reason: reconciling[1], message: reconciling[2] },
      { type: 'Stalled', status: stalled[0], reason: stalled[1], message: stalled[2] },
    ];
    if (applied.length > 0) {
      await this.store.appendEvent({ resource: key, type: 'Normal', reason: drifted ? 'DriftHealed' : 'Applied', message: applied.map((a) => a.describe).join('; ') });
    }
    let message = '';
    switch (state) {
      case 'ready': {
        message = applied.length ? `applied ${applied.length} change(s)` : 'in sync';
        // In sync: no difference is open any more, whoever put the host right (see driftMayBeOpen).
        if (drifted || entry.driftMayBeOpen) {
          await this.store.resolveDrift(key);
          entry.driftMayBeOpen = false;
        }
        await this.writeStatus(entry, {
          phase: 'Ready',
          observedGeneration: r.generation,
          conditions: conditions(['True', 'ReconciliationSucceeded', message], ['False', 'ReconciliationSucceeded', ''], ['False', 'ReconciliationSucceeded', '']),
        });
        break;
      }
      case 'drifted': {
        const open = await this.store.listDrift({ state: 'open', resource: key });
        message = `host differs (${open.map((d) => d.field).join(', ')}); driftPolicy warn: not healed`;
        await this.store.appendEvent({ resource: key, type: 'Warning', reason: 'DriftDetected', message });
        await this.writeStatus(entry, {
          phase: 'Drifted',
          observedGeneration: r.generation,
          conditions: conditions(['False', 'DriftDetected', message], ['False', 'DriftDetected', ''], ['False', 'DriftDetected', '']),
        });
        break;
      }
      case 'backoff':
      case 'stalled': {
        message = error ?? 'reconcile failed';
        const stalled = state === 'stalled';
        const retry = stalled ? '' : ` (retry ${this.queue.failuresOf(key) + 1})`;
        await this.store.appendEvent({ resource: key, type: 'Warning', reason: stalled ? 'Stalled' : 'ReconcileFailed', message: message + retry });
        await this.writeStatus(entry, {
          phase: stalled ? 'Stalled' : 'Degraded',
          observedGeneration: r.generation,
          conditions: stalled
            ? conditions(['False', 'Stalled', message], ['False', 'Stalled', ''], ['True', 'ReconcileError', message])
            : conditions(['False', 'ReconcileFailed', message], ['True', 'ProgressingWithRetry', message + retry], ['False', 'ReconcileFailed', '']),
        });
        break;
      }
      case 'suspended':
        message = 'suspended: not reconciled until resumed';
        await this.writeStatus(entry, {
          phase: 'Suspended',
          conditions: [{ type: 'Reconciling', status: 'False', reason: 'Suspended', message }],
        });
        break;
      case 'deleted':
        message = 'deleted';
        await this.store.appendEvent({ resource: key, type: 'Normal', reason: 'Deleted', message: applied.length ? applied.map((a) => a.describe).join('; ') : 'nothing left on the host' });
        break;
      default:
        break;
    }
    this.emit(key, r.generation, state, applied, drifted, message);
  }

  /**
   * Writes a status patch unless it equals the last one this engine wrote for the resource: a quiet
   * resync of hundreds of resources then costs no store I/O (the store's lock serializes writes).
   */
  private async writeStatus(entry: Entry, base: StatusPatch): Promise<void> {
    // The controller's own conditions and fields (a VM's pid, RestartRequired, ...) ride along.
    const extra = entry.controller.report?.(entry.resource, entry.lastActual, this.world()) ?? {};
    const patch: StatusPatch = {
      ...base,
      ...(base.conditions || extra.conditions ? { conditions: [...(base.conditions ?? []), ...(extra.conditions ?? [])] } : {}),
      ...(extra.fields ? { fields: extra.fields } : {}),
    };
    const text = JSON.stringify(patch);
    if (entry.lastStatus === text) return;
    await this.store.updateStatus(entry.resource.kind, entry.resource.metadata.name, patch);
    entry.lastStatus = text;
  }

  private emit(key: string, generation: number, state: PassState, applied: Action[], drifted: boolean, message: string): void {
    const result = { key, state, generation, applied, drifted, message, at: Date.now() } as PassResult;
    this.last.set(key, result);
    this.opts.onSettled?.(result);
  }
}

function driftPolicyOf(r: StoredResource): 'heal' | 'warn' {
  return 'driftPolicy' in r.spec && r.spec.driftPolicy === 'warn' ? 'warn' : 'heal';
}

/** Kinds this host has no controller for yet: they stall with a clear reason instead of pretending. */
function unsupported(kind: string): AnyController {
  return {
    kind,
    observe: async () => {
      throw new TerminalError(`no ${kind} controller on this host yet: nothing was done`);
    },
    plan: () => ({ actions: [] }),
    diff: () => [],
    apply: async () => {},
  };
}

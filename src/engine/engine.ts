// The reconcile engine: one XState actor per resource (resource-machine.ts owns the whole pass), fed by a
// keyed work queue that de-duplicates and bounds concurrency. Level-triggered: every pass starts by
// observing the host as it is; the store says what should be. The engine gives the machines their steps
// (controller calls batched per kind across resources, the store writes batched under one lock) and
// passes RECONCILE/UPDATE events; it keeps no state of its own about where a resource is.
import { createActor, waitFor, type SnapshotFrom } from 'xstate';
import { OutcomeError, makeWorld, stalled, type Action, type AnyController, type World } from './contract.ts';
import { keyOf, type ObjectKey } from '../resources/keys.ts';
import type { ConditionPatch, ResourceStatus, StatusPatch, Store, StoreBatch, StoredResource } from '../store/store.ts';
import { Batcher, fulfilled } from './batcher.ts';
import { CONVERGED_PHASES, isPhase, type Phase } from './phase.ts';
import { WorkQueue, type QueueOptions } from './queue.ts';
import {
  resourceMachine,
  type MachineStatus,
  type PassEnd,
  type PassRecord,
  type RecordResult,
  type ResourceActor,
  type ResourceSteps,
  type Transition,
} from './resource-machine.ts';

export interface PassResult {
  key: ObjectKey;
  phase: Phase;
  /** The machine's rest state after the pass. */
  machineState: string;
  /** The condition reason the pass ended with. */
  reason: string;
  generation: number;
  applied: Action[];
  drifted: boolean;
  message: string;
  /** Dependencies (or dependants, when deleting) the resource waits for. */
  blockers: ObjectKey[];
  /** When the pass started (ms since the epoch), and when it ended. */
  startedAt: number;
  at: number;
}

export interface EngineOptions {
  store: Store;
  controllers: AnyController[];
  /** Resources reconciled at once. */
  concurrency?: number;
  queue?: QueueOptions;
  onSettled?: (result: PassResult) => void;
  /** Problems that are no resource's failure (a store write that failed); stderr by default. */
  onWarning?: (line: string) => void;
}

interface Entry {
  actor: ResourceActor;
  controller: AnyController;
}

type Snapshot = SnapshotFrom<typeof resourceMachine>;

export class Engine {
  readonly queue: WorkQueue<string>;
  /** The latest pass of each resource. */
  readonly last = new Map<string, PassResult>();
  private readonly entries = new Map<string, Entry>();
  private readonly controllers = new Map<string, AnyController>();
  private readonly observers = new Map<string, Batcher<StoredResource, unknown>>();
  private readonly appliers = new Map<string, Batcher<Action[], void>>();
  /** Writes the outcomes of passes finishing together under one store lock. */
  private readonly recorder: Batcher<PassRecord, RecordResult>;
  /** The last status patch written per resource (JSON), to skip writing the same again. */
  private readonly lastStatus = new Map<string, string>();
  /** The last warning per subject, so a failure that repeats is reported once. */
  private readonly warned = new Map<string, string>();
  private workers: Promise<void>[] = [];
  /** Passes whose outcome is still being written to the store (see work()). */
  private readonly finishing = new Set<Promise<void>>();
  private readonly store: Store;
  /** The store has been read: only then may garbage be collected (an empty world would claim all). */
  private synced = false;
  /** The indexed world of the records as last synced (see world()). */
  private snapshot?: World;

  constructor(private readonly opts: EngineOptions) {
    this.store = opts.store;
    this.queue = new WorkQueue(opts.queue);
    for (const c of opts.controllers) this.controllers.set(c.kind, c);
    this.recorder = new Batcher((passes) => this.writeAll(passes));
  }

  /** Reads the store; creates actors, hands them their new records, drops the gone. Returns the keys that changed. */
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
        this.entries.set(key, this.createEntry(r, statusOf.get(key)));
        changed.push(key);
        continue;
      }
      const before = resourceOf(entry);
      if (before === r) continue;
      entry.actor.send({ type: 'UPDATE', resource: r });
      if (
        r.generation !== before.generation ||
        r.appliedAt !== before.appliedAt ||
        Boolean(r.suspended) !== Boolean(before.suspended) ||
        r.deletionRequestedAt !== before.deletionRequestedAt
      ) {
        changed.push(key);
      }
    }
    for (const [key, entry] of this.entries) {
      if (!seen.has(key)) this.forget(key, entry);
    }
    this.snapshot = undefined;
    this.synced = true;
    return changed;
  }

  /**
   * A snapshot of the desired state, for one pass. The records change only in sync() and forget(), so the
   * indexed snapshot is kept until then; only `now` is taken afresh (plans time crash backoff by it).
   */
  world(): World {
    this.snapshot ??= makeWorld(this.resources());
    return { ...this.snapshot, now: Date.now() };
  }

  /** Resources in the store, as last synced. */
  resources(kind?: string): StoredResource[] {
    return [...this.entries.values()].map(resourceOf).filter((r) => !kind || r.kind === kind);
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

  /** The machine's state of a resource (e.g. 'backoff'), undefined when not known. */
  machineState(key: string): string | undefined {
    const actor = this.entries.get(key)?.actor;
    return actor ? String(actor.getSnapshot().value) : undefined;
  }

  /** Failed passes in a row (what the backoff grows with). */
  failuresOf(key: string): number {
    return this.entries.get(key)?.actor.getSnapshot().context.failures ?? 0;
  }

  /**
   * Waits until every key has finished a pass that started at or after `since` (the caller's write):
   * with untilConverged, one whose phase another pass would not change (Ready, Drifted, Stalled,
   * Suspended, Deleted); without, any but a wait for dependencies that are themselves still to settle.
   */
  async settle(keys: string[], opts: { untilConverged: boolean; timeoutMs: number; since: number }): Promise<boolean> {
    const deadline = Date.now() + opts.timeoutMs;
    const done = (key: string, seen: Set<string>): boolean => {
      const r = this.last.get(key);
      if (!r || r.startedAt < opts.since) return false;
      if (opts.untilConverged) return CONVERGED_PHASES.has(r.phase);
      if (r.phase !== 'Pending') return true;
      seen.add(key);
      return r.blockers.every((b) => seen.has(b) || done(b, seen));
    };
    while (!keys.every((k) => done(k, new Set()))) {
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 25));
    }
    return true;
  }

  /**
   * Runs every controller's collectGarbage with the current world (after a full resync): each line is
   * logged as a GarbageCollected event. Never throws; returns the lines.
   */
  async collectGarbage(): Promise<string[]> {
    if (!this.synced) return [];
    const world = this.world();
    const lines: string[] = [];
    for (const c of this.controllers.values()) {
      if (!c.collectGarbage) continue;
      try {
        const removed = await c.collectGarbage(world);
        if (removed.length === 0) continue;
        lines.push(...removed);
        await this.store.withLock(async () => {
          for (const line of removed) await this.store.appendEvent({ resource: 'controller', type: 'Normal', reason: 'GarbageCollected', message: `${c.kind}: ${line}` });
        });
      } catch (err) {
        this.warn(`gc:${c.kind}`, `${c.kind} garbage collection failed: ${firstLine(err)}`);
      }
    }
    return lines;
  }

  // ---- actors -----------------------------------------------------------------------------------

  private createEntry(resource: StoredResource, status: ResourceStatus | undefined): Entry {
    const controller = this.controllerOf(resource.kind);
    const key = keyOf(resource);
    const actor = createActor(resourceMachine, {
      input: {
        key,
        steps: this.steps,
        resource,
        phase: status && isPhase(status.phase) ? status.phase : 'Pending',
        observedGeneration: status?.observedGeneration ?? 0,
        transitions: transitionsOf(status),
      },
    });
    // Every step's failure is a transition of the machine; this only guards against a bug in it.
    actor.subscribe({ error: (err) => this.warn(key, `${key}: resource machine stopped: ${firstLine(err)}`) });
    actor.start();
    return { actor, controller };
  }

  /** What every resource's machine calls: its kind's controller (batched per kind) and the store. */
  private readonly steps: ResourceSteps = {
    blockers: (target) => this.blockers(keyOf(target), this.controllerOf(target.kind), target),
    observe: (target) => this.observer(this.controllerOf(target.kind)).load(target),
    plan: (target, actual) => this.controllerOf(target.kind).plan(target, actual, this.world()),
    diff: (target, actual) => this.controllerOf(target.kind).diff(target, actual, this.world()),
    apply: (target, actions) => this.applier(this.controllerOf(target.kind)).load(actions),
    record: (pass) => this.recorder.load(pass),
    writeFailed: (key, err) => this.warn(key, `${key}: could not write the outcome of its pass: ${firstLine(err)}`),
    requeue: (key) => this.queue.add(key),
    backoff: (failures) => this.queue.backoff(failures),
  };

  private controllerOf(kind: string): AnyController {
    let c = this.controllers.get(kind);
    if (!c) this.controllers.set(kind, (c = unsupported(kind)));
    return c;
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
      const entry = this.entries.get(key);
      if (!entry || entry.actor.getSnapshot().status !== 'active') {
        this.queue.done(key);
        continue;
      }
      const { actor } = entry;
      const passes = actor.getSnapshot().context.passes;
      actor.send({ type: 'RECONCILE' });
      // The worker takes its next key as soon as the host work of this pass is done, while the outcome
      // is written to the store (the key stays "processing" until then, so it never runs twice at once).
      // Awaiting the writes here made each worker leave at its own time, as store writes are serialized
      // by its lock, so after the first wave every observe/apply batch held one resource (50 resources
      // at concurrency 16 cost 70 observe calls instead of 8).
      await waitFor(actor, (s) => !s.hasTag('host')).catch(() => undefined);
      const tracked: Promise<void> = waitFor(actor, (s) => !s.hasTag('pass'))
        .then((snap) => {
          if (snap.context.passes !== passes) this.finished(key, entry, snap);
        })
        // A record removed from the store behind the engine stops its actor mid-pass: nothing to report.
        .catch((err: unknown) => {
          if (actor.getSnapshot().status !== 'stopped') this.warn(key, `${key}: ${firstLine(err)}`);
        })
        .finally(() => {
          this.finishing.delete(tracked);
          this.queue.done(key);
        });
      this.finishing.add(tracked);
    }
  }

  /** A pass ended: report it and wake whoever waited for it. */
  private finished(key: string, entry: Entry, snap: Snapshot): void {
    const ctx = snap.context;
    const end = ctx.end;
    if (!end) return;
    const deleted = snap.status === 'done';
    // Gone from the engine before dependants are woken: a dependency being deleted then finds no
    // dependant left to wait for.
    if (deleted) this.forget(key, entry);
    const phase: Phase = deleted ? 'Deleted' : ctx.phase;
    const result: PassResult = {
      key: ctx.key,
      phase,
      machineState: String(snap.value),
      reason: end.reason,
      generation: ctx.target.generation,
      applied: ctx.applied,
      drifted: ctx.drifted,
      message: messageOf(end, ctx.applied),
      blockers: ctx.blockers,
      startedAt: ctx.startedAt,
      at: Date.now(),
    };
    this.last.set(key, result);
    this.opts.onSettled?.(result);

    if (phase === 'Ready' || phase === 'Deleted') {
      for (const [other, e] of this.entries) {
        const s = e.actor.getSnapshot();
        if (s.matches('waitingForDependencies') && s.context.blockers.includes(ctx.key)) this.queue.add(other);
      }
    }
    // A dependency the host changed under (healed drift) may have taken its dependants' state with it
    // (a VM's tap goes with its Route's netns): look at them again.
    if (phase === 'Ready' && ctx.drifted) this.enqueue(this.dependantsOf(key));
    // Its blockers may have become ready while this pass recorded the wait: nobody would wake it.
    if (!deleted && snap.matches('waitingForDependencies') && this.blockersNow(key, entry).length === 0) this.queue.add(key);
  }

  private forget(key: string, entry: Entry): void {
    entry.actor.stop();
    this.entries.delete(key);
    this.snapshot = undefined;
    this.lastStatus.delete(key);
  }

  private dependantsOf(key: string): string[] {
    const world = this.world();
    return [...this.entries]
      .filter(([, e]) => {
        try {
          return (e.controller.dependencies?.(resourceOf(e), world) ?? []).includes(key as ObjectKey);
        } catch {
          return false;
        }
      })
      .map(([k]) => k);
  }

  private blockersNow(key: string, entry: Entry): ObjectKey[] {
    try {
      return this.blockers(key as ObjectKey, entry.controller, resourceOf(entry));
    } catch {
      return [];
    }
  }

  /** Dependencies not ready yet (or, for a record with a tombstone, dependants being deleted that are not gone). */
  private blockers(key: ObjectKey, controller: AnyController, target: StoredResource): ObjectKey[] {
    const world = this.world();
    if (target.deletionRequestedAt) {
      return [...this.entries]
        .filter(([k, e]) => k !== key && resourceOf(e).deletionRequestedAt && (e.controller.dependencies?.(resourceOf(e), world) ?? []).includes(key))
        .map(([k]) => k as ObjectKey);
    }
    return (controller.dependencies?.(target, world) ?? []).filter((dep: ObjectKey) => !this.isReady(dep));
  }

  /** Ready at its current generation, as its last pass (or, before one, its stored status) says. */
  private isReady(key: string): boolean {
    const entry = this.entries.get(key);
    if (!entry) return false;
    const ctx = entry.actor.getSnapshot().context;
    return !ctx.resource.deletionRequestedAt && ctx.phase === 'Ready' && ctx.observedGeneration === ctx.resource.generation;
  }

  // ---- recording --------------------------------------------------------------------------------

  /** Writes the outcome of one pass (called under the store lock, with the passes finishing with it). */
  /**
   * Writes the outcomes of passes that ended together with a few store calls whatever their number:
   * the records of deleted resources removed in one locked section, drift in one commit, then statuses
   * and events in one commit (one fsync per file and directory, one events.log append). Per-pass calls
   * cost a lock round and several fsyncs each: most of the time of 1,000 resources converging.
   */
  private async writeAll(passes: PassRecord[]): Promise<PromiseSettledResult<RecordResult>[]> {
    const results = new Array<PromiseSettledResult<RecordResult>>(passes.length);
    const settle = async (indexes: number[], write: () => Promise<RecordResult[]>) => {
      if (indexes.length === 0) return;
      try {
        const written = await write();
        indexes.forEach((i, j) => (results[i] = fulfilled(written[j]!)));
      } catch (reason) {
        for (const i of indexes) results[i] = { status: 'rejected', reason };
      }
    };
    const deleted = passes.flatMap((p, i) => (p.end.phase === 'Deleted' ? [i] : []));
    const kept = passes.flatMap((p, i) => (p.end.phase === 'Deleted' ? [] : [i]));

    await settle(deleted, async () => {
      const targets = deleted.map((i) => passes[i]!.target);
      // Only the tombstone each pass acted on: a record applied again meanwhile stays.
      const removed = await this.store.deleteResources(
        targets.map((t) => ({ kind: t.kind, name: t.metadata.name, ...(t.deletionRequestedAt ? { ifDeletionRequestedAt: t.deletionRequestedAt } : {}) })),
      );
      const events = deleted.flatMap((i, j) => {
        const { key, applied } = passes[i]!;
        if (!removed[j]) return [];
        this.lastStatus.delete(key);
        return [{ resource: key, type: 'Normal' as const, reason: 'Deleted', message: applied.length ? applied.map((a) => a.describe).join('; ') : 'nothing left on the host' }];
      });
      if (events.length) await this.store.commit({ events });
      return removed.map((r) => ({ removed: r }));
    });

    // Drift records are history: a failed drift write (a malformed file, a full disk) is reported and
    // the passes still record their outcomes.
    const resolving = kept.filter((i) => {
      const p = passes[i]!;
      return p.end.phase === 'Ready' && (p.drifted || p.driftMayBeOpen);
    });
    let driftClosed = false;
    const drifts = kept.flatMap((i) => {
      const p = passes[i]!;
      return p.diffs.length ? [{ resource: p.key, diffs: p.diffs, policy: p.end.phase === 'Drifted' ? ('warn' as const) : ('heal' as const) }] : [];
    });
    if (drifts.length || resolving.length) {
      try {
        // Recorded first, then healed: a pass that found drift and healed it leaves a healed record.
        if (drifts.length) await this.store.commit({ drifts });
        if (resolving.length) await this.store.commit({ resolveDrift: resolving.map((i) => ({ resource: passes[i]!.key })) });
        driftClosed = true;
      } catch (err) {
        for (const p of [...drifts.map((d) => d.resource), ...resolving.map((i) => passes[i]!.key)]) {
          this.warn(`drift:${p}`, `${p}: could not write its drift records: ${firstLine(err)}`);
        }
      }
    }

    await settle(kept, async () => {
      const events: NonNullable<StoreBatch['events']> = [];
      const statuses: NonNullable<StoreBatch['statuses']> = [];
      const texts = new Map<string, string>();
      for (const i of kept) {
        const pass = passes[i]!;
        const { key, target, end, applied, drifted } = pass;
        if (applied.length > 0) {
          events.push({ resource: key, type: 'Normal', reason: drifted ? 'DriftHealed' : 'Applied', message: applied.map((a) => a.describe).join('; ') });
        }
        const message = messageOf(end, applied);
        const event = eventOf(pass, message);
        if (event) events.push({ resource: key, ...event });
        const patch = this.statusPatch(key, pass, {
          phase: target.deletionRequestedAt ? 'Deleting' : end.phase,
          observedGeneration: target.generation,
          conditions: conditionsOf(end, message, pass.failures),
        });
        // The same patch as this engine wrote last: a quiet resync of hundreds of resources costs no I/O.
        const text = JSON.stringify(patch);
        if (this.lastStatus.get(key) === text) continue;
        statuses.push({ kind: target.kind, name: target.metadata.name, patch });
        texts.set(key, text);
      }
      if (events.length || statuses.length) await this.store.commit({ events, statuses });
      for (const [key, text] of texts) this.lastStatus.set(key, text);
      return kept.map((i) => (resolving.includes(i) && driftClosed ? { driftClosed: true } : {}));
    });
    return results;
  }

  /** A pass's status patch with its controller's own conditions and fields (a VM's pid, RestartRequired, ...). */
  private statusPatch(key: string, pass: PassRecord, base: StatusPatch): StatusPatch {
    let extra: { conditions?: ConditionPatch[]; fields?: Record<string, unknown> } = {};
    try {
      extra = this.entries.get(key)?.controller.report?.(pass.target, pass.actual, this.world()) ?? {};
    } catch (err) {
      this.warn(`report:${key}`, `${key}: its controller's status report failed: ${firstLine(err)}`);
    }
    const machine: MachineStatus = pass.machine;
    return {
      ...base,
      conditions: [...(base.conditions ?? []), ...(extra.conditions ?? [])],
      fields: { ...extra.fields, machine },
    };
  }

  /** Reports a problem that is no resource's failure, once until it changes. */
  private warn(subject: string, line: string): void {
    if (this.warned.get(subject) === line) return;
    this.warned.set(subject, line);
    if (this.opts.onWarning) this.opts.onWarning(line);
    else process.stderr.write(`warning: ${line}\n`);
  }
}

function resourceOf(entry: Entry): StoredResource {
  return entry.actor.getSnapshot().context.resource;
}

const firstLine = (err: unknown) => (err instanceof Error ? err.message : String(err)).split('\n')[0]!;

/** The event a pass's end is worth, if any (a failure every time; other ends when they change). */
function eventOf(pass: PassRecord, message: string): { type: 'Normal' | 'Warning'; reason: string; message: string } | undefined {
  const { end } = pass;
  switch (end.phase) {
    case 'Failed':
      return { type: 'Warning', reason: 'ReconcileFailed', message: `${end.reason}: ${message} (retry ${pass.failures})` };
    case 'Stalled':
      return pass.endChanged ? { type: 'Warning', reason: 'Stalled', message: `${end.reason}: ${message}` } : undefined;
    case 'Drifted':
      return pass.endChanged || pass.diffs.length ? { type: 'Warning', reason: 'DriftDetected', message } : undefined;
    case 'Waiting':
      return pass.endChanged ? { type: 'Normal', reason: end.reason, message } : undefined;
    default:
      return undefined;
  }
}

function messageOf(end: PassEnd, applied: Action[]): string {
  if (end.phase === 'Ready') return applied.length ? `applied ${applied.length} change(s)` : 'in sync';
  if (end.phase === 'Deleted') return 'deleted';
  return end.message;
}

/** Ready, Reconciling and Stalled for the end of a pass; the reason is the one the end carries. */
function conditionsOf(end: PassEnd, message: string, failures: number): ConditionPatch[] {
  const three = (ready: [boolean, string], reconciling: [boolean, string], stalled: [boolean, string]): ConditionPatch[] => [
    { type: 'Ready', status: ready[0] ? 'True' : 'False', reason: end.reason, message: ready[1] },
    { type: 'Reconciling', status: reconciling[0] ? 'True' : 'False', reason: reconciling[0] && end.phase === 'Failed' ? 'ProgressingWithRetry' : end.reason, message: reconciling[1] },
    { type: 'Stalled', status: stalled[0] ? 'True' : 'False', reason: end.reason, message: stalled[1] },
  ];
  switch (end.phase) {
    case 'Ready':
      return three([true, message], [false, ''], [false, '']);
    case 'Drifted':
      return three([false, message], [false, ''], [false, '']);
    case 'Waiting':
    case 'Pending':
      return three([false, message], [true, message], [false, '']);
    case 'Failed':
      return three([false, message], [true, `${message} (retry ${failures})`], [false, '']);
    case 'Stalled':
      return three([false, message], [false, ''], [true, message]);
    case 'Suspended':
      return [{ type: 'Reconciling', status: 'False', reason: 'Suspended', message }];
    default:
      return [];
  }
}

/** The transitions a previous run wrote (status.fields.machine), so history survives a restart. */
function transitionsOf(status: ResourceStatus | undefined): Transition[] {
  const machine = status?.fields.machine;
  if (!machine || typeof machine !== 'object' || !('transitions' in machine) || !Array.isArray(machine.transitions)) return [];
  return machine.transitions.filter(
    (t): t is Transition => typeof t === 'object' && t !== null && ['at', 'from', 'to', 'reason'].every((k) => typeof (t as Record<string, unknown>)[k] === 'string'),
  );
}

/** Kinds this host has no controller for yet: they stall with a clear reason instead of pretending. */
function unsupported(kind: string): AnyController {
  return {
    kind,
    observe: async () => {
      throw new OutcomeError(stalled('KindUnsupported', `no ${kind} controller on this host yet: nothing was done`));
    },
    plan: () => ({ actions: [] }),
    diff: () => [],
    apply: async () => {},
  };
}

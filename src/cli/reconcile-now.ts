// Reconciling after a CLI change: hand the work to a running daemon, or do it in this process. The
// two never reconcile the host at once: both take the reconciler lease.
import type { PassResult } from '../engine/engine.ts';
import { CONVERGED_PHASES, isPhase, type Phase } from '../engine/phase.ts';
import type { MachineStatus } from '../engine/resource-machine.ts';
import { parseKey } from '../resources/keys.ts';
import { DAEMON_LEASE, RECONCILER_LEASE, createEngine, waitForLease } from '../runtime.ts';
import type { Store } from '../store/store.ts';

export interface Outcome {
  key: string;
  /** How the last pass ended; Pending when none (that saw the caller's write) ended before the timeout. */
  phase: Phase;
  message: string;
}

export interface ReconcileReport {
  /** PID of the daemon the work was handed to, if one runs. */
  daemonPid?: number;
  outcomes: Map<string, Outcome>;
  timedOut: boolean;
}

const outcome = (key: string, phase: Phase, message: string): Outcome => ({ key, phase, message });

/** What a command wrote to a resource: a status older than this is not about that write. */
export interface WrittenAt {
  /** The generation it stored. */
  generation: number;
  /**
   * For a resource it created: when. A status written before (left from the resource's previous life)
   * may carry the same generation.
   */
  createdAt?: string;
}

export async function reconcileNow(
  store: Store,
  keys: string[],
  opts: {
    wait: boolean;
    timeoutMs: number;
    onSettled?: (r: PassResult) => void;
    /** Per key, what this command wrote: a status counts only if it is for that generation or later and written after it. */
    since?: Map<string, WrittenAt>;
  },
): Promise<ReconcileReport> {
  const daemon = await store.leaseHolder(DAEMON_LEASE);
  if (daemon) return waitForDaemon(store, keys, daemon.pid, opts);

  const lease = await waitForLease(store, RECONCILER_LEASE, opts.timeoutMs);
  if (!lease) {
    const holder = await store.leaseHolder(RECONCILER_LEASE);
    throw new Error(`another qwamos process (pid ${holder?.pid ?? '?'}) is reconciling this host; try again`);
  }
  const since = Date.now();
  const engine = createEngine(store, opts.onSettled ? { onSettled: opts.onSettled } : {});
  try {
    await engine.sync();
    // Level-triggered: one pass over everything, so dependencies are known and ordered.
    engine.enqueueAll();
    engine.start();
    let settled = await engine.settle(keys, { untilConverged: opts.wait, timeoutMs: opts.timeoutMs, since });
    // A pass may have stored resources itself (a GitSource applying a revision): read the store again and
    // reconcile what changed, a few rounds at most (a source's resources are stored in one round).
    for (let round = 0; round < 3 && settled; round++) {
      const changed = await engine.sync();
      if (changed.length === 0) break;
      engine.enqueue(changed);
      const left = opts.timeoutMs - (Date.now() - since);
      settled = left > 0 && (await engine.settle(changed, { untilConverged: opts.wait, timeoutMs: left, since: Date.now() - 1 }));
    }
    // Let the passes already queued finish (a resource woken because its dependency just became ready),
    // so none is left marked as waiting; retries on a backoff timer are left for the next run.
    await Promise.race([engine.queue.whenIdle(), new Promise((r) => setTimeout(r, Math.max(5_000, opts.timeoutMs / 4)).unref())]);
    const outcomes = new Map<string, Outcome>();
    for (const key of keys) {
      const r = engine.last.get(key);
      outcomes.set(key, r && r.startedAt >= since ? outcome(key, r.phase, r.message) : outcome(key, 'Pending', 'not reconciled before the timeout'));
    }
    // What no resource declares any more (after deletes, or a record lost) goes too; logged as events.
    await engine.sync().then(() => engine.collectGarbage(), () => []);
    return { outcomes, timedOut: !settled };
  } finally {
    await engine.stop();
    await lease.release();
  }
}

/**
 * The daemon reconciles; with wait, follow the store until each resource converged or the timeout. A
 * status counts only when its pass acted on the record as the caller wrote it (same generation and
 * appliedAt, no tombstone): a status written before the caller's apply is not the answer.
 */
async function waitForDaemon(
  store: Store,
  keys: string[],
  daemonPid: number,
  opts: { wait: boolean; timeoutMs: number; since?: Map<string, WrittenAt> },
): Promise<ReconcileReport> {
  const deadline = Date.now() + opts.timeoutMs;
  const outcomes = new Map<string, Outcome>();
  for (;;) {
    for (const key of keys) {
      const { kind, name } = parseKey(key);
      const r = await store.getResource(kind, name);
      const st = await store.getStatus(kind, name);
      if (!r) {
        outcomes.set(key, outcome(key, 'Deleted', 'deleted'));
        continue;
      }
      const machine = st?.fields.machine as Partial<MachineStatus> | undefined;
      // A status from before our write (the resource's previous life, before a delete) says nothing about it.
      const written = opts.since?.get(key);
      const fresh =
        !written ||
        (st !== undefined &&
          st.observedGeneration >= written.generation &&
          (written.createdAt === undefined || Date.parse(st.updatedAt) >= Date.parse(written.createdAt)));
      const current = st && !r.deletionRequestedAt && st.observedGeneration === r.generation && machine?.appliedAt === r.appliedAt && fresh;
      const ready = st?.conditions.find((c) => c.type === 'Ready');
      const stalled = st?.conditions.find((c) => c.type === 'Stalled' && c.status === 'True');
      const phase: Phase = current && isPhase(st.phase) ? st.phase : 'Pending';
      outcomes.set(key, outcome(key, phase, current ? (stalled?.message ?? ready?.message ?? '') : 'handed to the controller'));
    }
    const done = [...outcomes.values()].every((o) => CONVERGED_PHASES.has(o.phase));
    if (!opts.wait || done) return { daemonPid, outcomes, timedOut: opts.wait && !done };
    if (Date.now() > deadline) return { daemonPid, outcomes, timedOut: true };
    await new Promise((r) => setTimeout(r, 100));
  }
}

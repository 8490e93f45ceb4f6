// Reconciling after a CLI change: hand the work to a running daemon, or do it in this process. The
// two never reconcile the host at once: both take the reconciler lease.
import type { PassResult } from '../engine/engine.ts';
import { DAEMON_LEASE, RECONCILER_LEASE, createEngine, waitForLease } from '../runtime.ts';
import type { Store } from '../store/store.ts';

export interface Outcome {
  key: string;
  /** ready, drifted, backoff, stalled, suspended, deleted, waiting; 'pending' when not reached. */
  state: string;
  message: string;
}

export interface ReconcileReport {
  /** PID of the daemon the work was handed to, if one runs. */
  daemonPid?: number;
  outcomes: Map<string, Outcome>;
  timedOut: boolean;
}

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

const CONVERGED = new Set(['Ready', 'Drifted', 'Stalled', 'Suspended']);

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
    const settled = await engine.settle(keys, { untilConverged: opts.wait, timeoutMs: opts.timeoutMs, since });
    // Let the passes already queued finish (a resource woken because its dependency just became ready),
    // so none is left marked as waiting; retries on a backoff timer are left for the next run.
    await Promise.race([engine.queue.whenIdle(), new Promise((r) => setTimeout(r, Math.max(5_000, opts.timeoutMs / 4)).unref())]);
    const outcomes = new Map<string, Outcome>();
    for (const key of keys) {
      const r = engine.last.get(key);
      outcomes.set(key, { key, state: r?.state ?? 'pending', message: r?.message ?? 'not reconciled before the timeout' });
    }
    return { outcomes, timedOut: !settled };
  } finally {
    await engine.stop();
    await lease.release();
  }
}

/** The daemon reconciles; with wait, follow the store until each resource converged or the timeout. */
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
      const [kind, name] = key.split('/') as [string, string];
      const r = await store.getResource(kind, name);
      const st = await store.getStatus(kind, name);
      if (!r) {
        outcomes.set(key, { key, state: 'deleted', message: 'deleted' });
        continue;
      }
      // A status from before our write (the resource's previous life, before a delete) says nothing about it.
      const written = opts.since?.get(key);
      const fresh =
        !written ||
        (st !== undefined &&
          st.observedGeneration >= written.generation &&
          (written.createdAt === undefined || Date.parse(st.updatedAt) >= Date.parse(written.createdAt)));
      const current = st && st.observedGeneration === r.generation && !r.deletionRequestedAt && fresh;
      const ready = st?.conditions.find((c) => c.type === 'Ready');
      const stalled = st?.conditions.find((c) => c.type === 'Stalled' && c.status === 'True');
      const state = current && CONVERGED.has(st.phase) ? st.phase.toLowerCase() : 'pending';
      outcomes.set(key, { key, state, message: stalled?.message ?? ready?.message ?? 'handed to the controller' });
    }
    const done = [...outcomes.values()].every((o) => o.state !== 'pending');
    if (!opts.wait || done) return { daemonPid, outcomes, timedOut: opts.wait && !done };
    if (Date.now() > deadline) return { daemonPid, outcomes, timedOut: true };
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Wires the store, the controllers and the engine for this host, as configured by the environment.
import { loadConfig } from './config.ts';
import { createControllers } from './controllers/index.ts';
import { Engine, type PassResult } from './engine/engine.ts';
import type { QueueOptions } from './engine/queue.ts';
import { Store, type Lease } from './store/store.ts';
import type { ClusterVmView } from './cluster/view.ts';

/** Held by whoever reconciles the host right now (the daemon, or an in-process CLI run). */
export const RECONCILER_LEASE = 'reconciler';
/** Held by the daemon for as long as it runs: the CLI hands work to it instead of reconciling itself. */
export const DAEMON_LEASE = 'controller';

export async function openStore(env: NodeJS.ProcessEnv = process.env): Promise<Store> {
  return Store.open(loadConfig(env).stateDir);
}

export function createEngine(
  store: Store,
  opts: {
    onSettled?: (r: PassResult) => void;
    onWarning?: (line: string) => void;
    concurrency?: number;
    queue?: QueueOptions;
    env?: NodeJS.ProcessEnv;
    /** The cluster this node joined (the daemon with --etcd). */
    cluster?: ClusterVmView;
  } = {},
): Engine {
  const config = loadConfig(opts.env ?? process.env);
  return new Engine({
    store,
    controllers: createControllers(config, store, opts.cluster ? { cluster: opts.cluster } : {}),
    // Host work is batched per kind, so a wide pass is cheap; controllers limit heavy work themselves.
    concurrency: opts.concurrency ?? config.concurrency,
    ...(opts.queue ? { queue: opts.queue } : {}),
    ...(opts.onSettled ? { onSettled: opts.onSettled } : {}),
    ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
  });
}

/** Waits for the reconciler lease (another CLI run may hold it briefly); null after the timeout. */
export async function waitForLease(store: Store, name: string, timeoutMs: number): Promise<Lease | null> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const lease = await store.acquireLease(name);
    if (lease || Date.now() > deadline) return lease;
    await new Promise((r) => setTimeout(r, 100));
  }
}

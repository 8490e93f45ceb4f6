// Wires the store, the controllers and the engine for this host, as configured by the environment.
import { hostPrefix, imageRoot, stateDir } from './config.ts';
import { createControllers } from './controllers/index.ts';
import type { NetLayout } from './drivers/netns.ts';
import { Engine, type PassResult } from './engine/engine.ts';
import type { QueueOptions } from './engine/queue.ts';
import { Store, type Lease } from './store/store.ts';

/** Held by whoever reconciles the host right now (the daemon, or an in-process CLI run). */
export const RECONCILER_LEASE = 'reconciler';
/** Held by the daemon for as long as it runs: the CLI hands work to it instead of reconciling itself. */
export const DAEMON_LEASE = 'controller';

export function hostLayout(env: NodeJS.ProcessEnv = process.env): NetLayout {
  const hostNetns = env.QWAMOS_HOST_NETNS || undefined;
  return { prefix: hostPrefix(env), ...(hostNetns ? { hostNetns } : {}) };
}

export async function openStore(env: NodeJS.ProcessEnv = process.env): Promise<Store> {
  return Store.open(stateDir(env));
}

export function createEngine(
  store: Store,
  opts: { onSettled?: (r: PassResult) => void; concurrency?: number; queue?: QueueOptions; env?: NodeJS.ProcessEnv } = {},
): Engine {
  const env = opts.env ?? process.env;
  let engine: Engine | undefined;
  const controllers = createControllers({
    layout: hostLayout(env),
    stateDir: stateDir(env),
    imageRoot: imageRoot(env),
    desired: (kind) => engine?.resources(kind) ?? [],
    env,
  });
  engine = new Engine({
    store,
    controllers,
    // Host work is batched per kind, so a wide pass is cheap; controllers limit heavy work themselves.
    concurrency: opts.concurrency ?? Number(env.QWAMOS_CONCURRENCY || 256),
    ...(opts.queue ? { queue: opts.queue } : {}),
    ...(opts.onSettled ? { onSettled: opts.onSettled } : {}),
  });
  return engine;
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

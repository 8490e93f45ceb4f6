// The controller daemon: holds the reconciler lease, reconciles every resource, follows the store
// (changes from `qwamos apply`), the host's network events and a periodic resync with jitter. It stops
// cleanly on SIGTERM without touching what runs on the host.
import fs from 'node:fs/promises';
import net from 'node:net';
import { keyOf } from './resources/keys.ts';
import path from 'node:path';
import { watch as watchFiles } from 'chokidar';
import { UserError, oneLine } from './errors.ts';
import type { PassResult } from './engine/engine.ts';
import { notifySocketPath } from './git/notify.ts';
import { readWebhookSecret, startWebhookServer, type WebhookServer } from './git/webhook.ts';
import { MAX_SOCKET_PATH } from './names.ts';
import { oneWaiting } from './concurrency.ts';
import { DAEMON_LEASE, RECONCILER_LEASE, createEngine, openStore, waitForLease } from './runtime.ts';
import { joinCluster, type ClusterMember, type ClusterOptions } from './cluster/node.ts';
import { superviseFencer, type FencerSupervisor } from './cluster/fencer-supervisor.ts';

export interface DaemonOptions {
  resyncMs: number;
  log: (line: string) => void;
  /** Resolves when the daemon should stop (e.g. on SIGTERM). */
  stopSignal: Promise<void>;
  /** The loopback HTTP webhook (off without it): its port on 127.0.0.1 and its 0600 secret file. */
  webhook?: { port: number; secretFile: string };
  /** Join this etcd cluster as this node: its VMs run only where placement puts them and claimed (run/<vm>). */
  cluster?: ClusterOptions;
}

export async function runDaemon(opts: DaemonOptions): Promise<void> {
  // A webhook asked for but not possible stops the daemon before it starts: better than running deaf.
  const webhookSecret = opts.webhook ? await readWebhookSecret(opts.webhook.secretFile) : undefined;
  const store = await openStore();
  const daemonLease = await store.acquireLease(DAEMON_LEASE);
  if (!daemonLease) {
    const holder = await store.leaseHolder(DAEMON_LEASE);
    throw new UserError(`another qwamos controller runs (pid ${holder?.pid ?? '?'})`);
  }
  let stopping = false;
  void opts.stopSignal.then(() => (stopping = true));
  const reconcilerLease = await (async () => {
    for (;;) {
      const lease = await waitForLease(store, RECONCILER_LEASE, 1000);
      if (lease || stopping) return lease;
      opts.log(`waiting for the reconciler lease (held by pid ${(await store.leaseHolder(RECONCILER_LEASE))?.pid ?? '?'})`);
    }
  })();
  if (!reconcilerLease) {
    await daemonLease.release();
    return;
  }

  let cluster: ClusterMember | undefined;
  if (opts.cluster) {
    try {
      cluster = await joinCluster(store, opts.cluster, opts.log);
    } catch (err) {
      await reconcilerLease.release();
      await daemonLease.release();
      throw new UserError(`cannot join the cluster at ${opts.cluster.endpoints.join(',')} as node ${opts.cluster.node}: ${oneLine(err)}`);
    }
  }
  // The fencer guards this node's VMs (they outlive the daemon): up before any VM starts; left running on stop.
  let fencer: FencerSupervisor | undefined;
  if (opts.cluster?.fencerCommand) {
    fencer = await superviseFencer({ stateDir: store.dir, command: opts.cluster.fencerCommand, log: opts.log });
    if (!(await fencer.ready(20_000))) opts.log('the fencer has not come up yet (see cluster/fencer.log); still trying');
  }

  const lastState = new Map<string, string>();
  const onSettled = (r: PassResult) => {
    // Log what changed, not every quiet resync.
    if (r.applied.length === 0 && lastState.get(r.key) === r.phase) return;
    lastState.set(r.key, r.phase);
    const what = r.applied.length ? `${r.drifted ? 'healed drift' : 'applied'}: ${r.applied.map((a) => a.describe).join('; ')}` : r.message;
    opts.log(`${r.key} ${r.phase}${what ? `: ${what}` : ''}`);
  };
  const engine = createEngine(store, { onSettled, onWarning: opts.log, ...(cluster ? { cluster: cluster.view } : {}) });
  await engine.sync();
  engine.enqueueAll();
  engine.start();
  // Notifications (a post-receive hook, `qwamos notify`): they only ask for a git source pass. Listening
  // before the started line, so whoever waits for that line can notify at once.
  const notifier = await startNotifySocket(store.dir, (name) => {
    const sources = engine.resources('GitSource').map((r) => `GitSource/${r.metadata.name}`);
    const named = name !== undefined ? sources.filter((k) => k === `GitSource/${name}`) : [];
    engine.enqueue(named.length ? named : sources);
  }, opts.log).catch((err: unknown) => {
    opts.log(`notification socket disabled: ${oneLine(err)}`);
    return undefined;
  });

  let webhook: WebhookServer | undefined;
  if (opts.webhook && webhookSecret) {
    const onNotify = (name: string) => {
      const known = engine.resources('GitSource').some((r) => r.metadata.name === name);
      if (known) engine.enqueue([`GitSource/${name}`]);
      return known;
    };
    try {
      webhook = await startWebhookServer({ port: opts.webhook.port, secret: webhookSecret, onNotify, log: opts.log });
      opts.log(`webhook listening on http://127.0.0.1:${webhook.port}/hooks/gitsource/NAME`);
    } catch (err) {
      await notifier?.close();
      await engine.stop();
      await reconcilerLease.release();
      await daemonLease.release();
      throw err;
    }
  }

  opts.log(`controller started (pid ${process.pid}), ${engine.resources().length} resources, resync every ${Math.round(opts.resyncMs / 1000)}s`);

  // Store changes: re-read it, reconcile what changed, and serve reconcile requests. At most one run waits
  // behind the one in progress (asked again meanwhile, it only widens to a full resync): a full resync
  // slower than the interval (garbage collection observes every netns) must not pile up a backlog that
  // grows memory and that stopping would have to work through.
  let syncing = Promise.resolve();
  const syncStore = oneWaiting(async (all) => {
    try {
      const changed = await engine.sync();
      engine.enqueue(changed);
      for (const keys of await store.takeRequests()) engine.enqueue(keys.length ? keys : engine.resources().map((r) => keyOf(r)));
      if (all) {
        await cluster?.refresh().catch((err: unknown) => opts.log(`cluster: cannot publish the revision: ${oneLine(err)}`));
        engine.enqueueAll();
        // What qwamos created and nothing declares any more (a record lost by hand or by a crash).
        await engine.collectGarbage();
      }
    } catch (err) {
      opts.log(`error reading the store: ${oneLine(err)}`);
    }
  });
  const resync = (all: boolean) => (syncing = syncStore(all));
  let storeTimer: NodeJS.Timeout | undefined;
  const watcher = watchFiles([path.join(store.dir, 'resources'), path.join(store.dir, 'requests')], {
    ignoreInitial: true,
    ignored: (p) => path.basename(p).startsWith('.'),
  });
  watcher.on('all', () => {
    clearTimeout(storeTimer);
    storeTimer = setTimeout(() => void resync(false), 30);
  });
  watcher.on('error', (err) => opts.log(`store watch error: ${oneLine(err)}`));

  // Host events (ip monitor, QMP sockets closing, ...): what they name is re-checked at once.
  const watches = engine.watch();

  // Periodic resync with ±10% jitter, so many hosts do not observe in lockstep.
  let resyncTimer: NodeJS.Timeout | undefined;
  const scheduleResync = () => {
    resyncTimer = setTimeout(() => {
      void resync(true);
      scheduleResync();
    }, opts.resyncMs * (0.9 + 0.2 * Math.random()));
  };
  scheduleResync();

  await opts.stopSignal;
  opts.log('stopping: finishing the passes in flight; VMs and namespaces are left as they are');
  clearTimeout(resyncTimer);
  clearTimeout(storeTimer);
  watches.close();
  await notifier?.close();
  await webhook?.close();
  await watcher.close();
  await syncing;
  await engine.stop();
  await fencer?.stop();
  // The etcd lease is kept: a restart within its TTL re-attaches to it without touching the VMs.
  await cluster?.stop();
  await reconcilerLease.release();
  await daemonLease.release();
  opts.log('controller stopped');
}

/** Longest notification read; anything past it is ignored. */
const MAX_NOTIFICATION = 512;

/**
 * Serves STATE/notify.sock. A line `reconcile gitsource/NAME` asks for a pass of that source; anything
 * else (any bytes, a forge's payload) asks for a pass of every source. The payload is never trusted
 * beyond picking a name: a pass fetches and verifies the repository itself.
 */
async function startNotifySocket(
  stateDir: string,
  onNotify: (name: string | undefined) => void,
  log: (line: string) => void,
): Promise<{ close(): Promise<void> } | undefined> {
  const file = notifySocketPath(stateDir);
  if (Buffer.byteLength(file) > MAX_SOCKET_PATH) {
    log(`notification socket disabled: ${file} is longer than ${MAX_SOCKET_PATH} bytes`);
    return undefined;
  }
  // A socket left by a daemon killed with -9 (we hold the daemon lease: no other daemon serves it).
  await fs.rm(file, { force: true });
  const server = net.createServer((conn) => {
    let data = '';
    let answered = false;
    const answer = () => {
      if (answered) return;
      answered = true;
      const m = /^reconcile gitsource\/([a-z0-9]([-a-z0-9]*[a-z0-9])?)\s*$/.exec(data.split('\n')[0] ?? '');
      onNotify(m?.[1]);
      conn.end(`ok ${m ? `gitsource/${m[1]}` : 'all gitsources'}\n`);
    };
    conn.setEncoding('latin1');
    conn.setTimeout(2000, () => conn.destroy());
    conn.on('data', (chunk: string) => {
      data = (data + chunk).slice(0, MAX_NOTIFICATION);
      if (data.includes('\n') || data.length >= MAX_NOTIFICATION) answer();
    });
    conn.on('end', answer);
    conn.on('error', () => undefined);
  });
  const oldMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(file, () => resolve());
    });
  } finally {
    process.umask(oldMask);
  }
  await fs.chmod(file, 0o600);
  server.on('error', (err) => log(`notification socket: ${oneLine(err)}`));
  return {
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await fs.rm(file, { force: true });
    },
  };
}

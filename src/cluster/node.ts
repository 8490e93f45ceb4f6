// Joining the daemon to a cluster: what this node publishes (from its ClusterNode declaration when the
// store has one, else the host's own size), and keeping its revision up to date.
import os from 'node:os';
import { UsageError } from '../errors.ts';
import { isDnsLabel } from '../names.ts';
import { sizeMiB } from '../resources/checks.ts';
import type { Store } from '../store/store.ts';
import type { NodeRecord } from './keys.ts';
import type { Membership } from './membership.ts';
import type { ClusterView } from './view.ts';

export interface ClusterOptions {
  node: string;
  endpoints: string[];
  /** GPU trust levels this node can provide (the ClusterNode schema has no field for them yet). */
  gpuLevels: string[];
  /** How to run `qwamos fencer` (program and arguments); the daemon starts and supervises it. */
  fencerCommand?: readonly string[];
}

export interface ClusterMember {
  membership: Membership;
  /** The node set and run/ claims as the VM controller uses them, kept current by an etcd watch. */
  view: ClusterView;
  /** Re-reads the applied revision from the store and publishes it when it changed. */
  refresh(): Promise<void>;
  /** Stops keeping the lease alive, hands it to the fencer for a restart (which re-attaches); closes the client. */
  stop(): Promise<void>;
}

/** Checks --node / --etcd / --gpu-levels; throws a one-line UsageError. */
export function parseClusterFlags(flags: { node?: string; etcd?: string; gpuLevels?: string }): ClusterOptions | undefined {
  if (flags.etcd === undefined) {
    if (flags.node !== undefined || flags.gpuLevels !== undefined) throw new UsageError('--node and --gpu-levels need --etcd URL[,URL...]');
    return undefined;
  }
  if (flags.node === undefined) throw new UsageError('--etcd needs --node NAME (this node\'s name in the cluster)');
  if (!isDnsLabel(flags.node)) throw new UsageError(`--node ${JSON.stringify(flags.node)} is not a valid name (a lowercase DNS label)`);
  const endpoints = parseEndpoints(flags.etcd);
  const gpuLevels = (flags.gpuLevels ?? '').split(',').map((g) => g.trim()).filter(Boolean);
  for (const g of gpuLevels) if (!isDnsLabel(g)) throw new UsageError(`--gpu-levels: ${JSON.stringify(g)} is not a GPU trust level name`);
  return { node: flags.node, endpoints, gpuLevels };
}

/** --etcd URL[,URL...]: etcd client URLs; throws a one-line UsageError. */
export function parseEndpoints(value: string): string[] {
  const endpoints = value.split(',').map((u) => u.trim()).filter(Boolean);
  if (endpoints.length === 0) throw new UsageError('--etcd needs at least one URL');
  for (const url of endpoints) {
    if (!/^https?:\/\/[^/\s]+:\d+\/?$/.test(url)) throw new UsageError(`--etcd ${JSON.stringify(url)} is not an etcd client URL such as http://127.0.0.1:2379`);
  }
  return endpoints;
}

/** What this node publishes: its ClusterNode declaration if the store has one, else the host's size. */
export async function nodeRecordOf(store: Store, opts: ClusterOptions): Promise<Omit<NodeRecord, 'joinedAt'>> {
  const declared = await store.getResource('ClusterNode', opts.node);
  const spec = declared?.kind === 'ClusterNode' ? declared.spec : undefined;
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(spec?.labels ?? {})) if (v !== undefined) labels[k] = v;
  const revision = await appliedRevision(store);
  return {
    name: opts.node,
    role: spec?.role ?? 'worker',
    capacity: {
      cpus: spec?.capacity?.cpus ?? os.availableParallelism(),
      memoryMiB: spec?.capacity?.memory ? sizeMiB(spec.capacity.memory) : Math.floor(os.totalmem() / 2 ** 20),
    },
    labels,
    gpuLevels: opts.gpuLevels,
    ...(revision !== undefined ? { revision } : {}),
  };
}

/** The revisions this node's git sources applied ('name@rev', sorted), or undefined without any. */
export async function appliedRevision(store: Store): Promise<string | undefined> {
  const revisions = (await store.listStatuses('GitSource'))
    .map((s) => (typeof s.fields.lastAppliedRevision === 'string' ? `${s.name}@${s.fields.lastAppliedRevision}` : undefined))
    .filter((r): r is string => r !== undefined)
    .sort();
  return revisions.length ? revisions.join(',') : undefined;
}

export async function joinCluster(store: Store, opts: ClusterOptions, log: (line: string) => void): Promise<ClusterMember> {
  // Loaded only here: the etcd client (gRPC) costs start-up time and memory a single host never needs.
  const [{ EtcdClient }, { Membership }, { ClusterView }] = await Promise.all([import('../drivers/etcd.ts'), import('./membership.ts'), import('./view.ts')]);
  const client = new EtcdClient(opts.endpoints);
  let membership: Membership | undefined;
  let view: ClusterView;
  try {
    membership = await Membership.join({ client, record: await nodeRecordOf(store, opts), stateDir: store.dir, log });
    view = await ClusterView.open({ client, membership, log });
  } catch (err) {
    await membership?.stop().catch(() => {}); // no handover: this daemon never ran
    client.close();
    throw err;
  }
  return {
    membership,
    view,
    refresh: async () => membership.setRevision(await appliedRevision(store)),
    stop: async () => {
      await view.close();
      await membership.stop({ handover: true });
      client.close();
    },
  };
}

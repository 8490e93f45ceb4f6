// ClusterNode controller: on a host that joined a cluster (`qwamos controller --node --etcd`), each declared
// node is Ready while its lease in etcd lives, and its status tells the lease, the last keepalive, the
// fence, the drain mark, what its VMs take and which they are. Without a cluster, a ClusterNode is a
// declaration (Ready once stored) and says so in its Joined condition.
import { type Controller, type StatusReport, type World } from '../../engine/contract.ts';
import type { EtcdClient } from '../../drivers/etcd.ts';
import { keyOf, makeKey, type ObjectKey } from '../../resources/keys.ts';
import type { StoredResource } from '../../store/store.ts';
import { observeLocal, observeNodes, type ClusterNodeActual } from './observe.ts';
import { planClusterNode, reportClusterNode } from './plan.ts';

/** How often the status of declared nodes is refreshed while this host is in a cluster (ms). */
const REFRESH_MS = 5000;

export class ClusterNodeController implements Controller<'ClusterNode', ClusterNodeActual> {
  readonly kind = 'ClusterNode' as const;
  private client: { endpoints: string; client: EtcdClient } | undefined;

  constructor(private readonly opts: { stateDir: string }) {}

  async observe(resources: StoredResource<'ClusterNode'>[]): Promise<Map<ObjectKey, ClusterNodeActual>> {
    const local = await observeLocal(this.opts.stateDir);
    const names = resources.map((r) => r.metadata.name);
    const byName = await observeNodes((endpoints) => this.clientFor(endpoints), local, names);
    return new Map(resources.map((r) => [keyOf(r), byName.get(r.metadata.name) ?? { joined: false }]));
  }

  plan(r: StoredResource<'ClusterNode'>, actual: ClusterNodeActual | undefined) {
    return planClusterNode(r, actual);
  }

  diff() {
    return [];
  }

  async apply(): Promise<void> {}

  report(r: StoredResource<'ClusterNode'>, actual: ClusterNodeActual | undefined, world: World): StatusReport {
    return reportClusterNode(r, actual, world);
  }

  /** Keepalives and claims change in etcd, not in the store: look again every few seconds while in a cluster. */
  watch(notify: (keys: ObjectKey[]) => void, world: () => World): { close(): void } {
    const timer = setInterval(() => {
      if (!this.client) return; // in no cluster (yet): nothing changes behind the store's back
      const keys = world().list('ClusterNode').map((r) => makeKey('ClusterNode', r.metadata.name));
      if (keys.length) notify(keys);
    }, REFRESH_MS);
    timer.unref();
    return { close: () => clearInterval(timer) };
  }

  private async clientFor(endpoints: readonly string[]): Promise<EtcdClient> {
    const key = endpoints.join(',');
    if (this.client?.endpoints === key) return this.client.client;
    this.client?.client.close();
    const { EtcdClient } = await import('../../drivers/etcd.ts'); // gRPC: loaded only in a cluster
    const client = new EtcdClient(endpoints, { callTimeoutMs: 2000 });
    this.client = { endpoints: key, client };
    return client;
  }
}

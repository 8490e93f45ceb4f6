// The Route controller: a network namespace per VM (the VM's cable), a veth pair to the host side, and
// for `direct` Routes forwarding plus NAT out of the uplink. Observe is one `ip` process and one `nft`
// process for all Routes; plan is pure (plan.ts); apply batches host changes (apply.ts); garbage
// collection removes what lost Routes left behind (gc.ts).
import { watchHostNetwork } from '../../drivers/monitor.ts';
import type { NetLayout } from '../../drivers/netns.ts';
import type { Controller, FieldDiff, Plan, World } from '../../engine/contract.ts';
import { keyOf, makeKey, type ObjectKey } from '../../resources/keys.ts';
import type { StoredResource } from '../../store/store.ts';
import { applyRouteActions } from './apply.ts';
import { collectRouteGarbage } from './gc.ts';
import { observeRouteHost, type RouteActual } from './observe.ts';
import { diffRoute, planRoute, type RouteAction } from './plan.ts';

export type { RouteActual } from './observe.ts';
export type { RouteAction } from './plan.ts';

export class RouteController implements Controller<'Route', RouteActual, RouteAction> {
  readonly kind = 'Route';

  /**
   * @param layout prefix and host netns of everything this controller owns
   * @param uplink the configured uplink (QWAMOS_UPLINK); else the host's default route's interface
   */
  constructor(
    private readonly layout: NetLayout,
    private readonly uplink?: string,
  ) {}

  async observe(resources: StoredResource<'Route'>[]): Promise<Map<ObjectKey, RouteActual>> {
    const host = await observeRouteHost(this.layout, resources.map((r) => r.spec.vm), this.uplink);
    const found = new Map<ObjectKey, RouteActual>();
    for (const r of resources) {
      const net = host.nets.get(r.spec.vm);
      found.set(keyOf(r), { ...(net ? { net } : {}), nat: host.nat, ...(host.uplink ? { uplink: host.uplink } : {}) });
    }
    return found;
  }

  plan(resource: StoredResource<'Route'>, actual: RouteActual | undefined, world: World): Plan<RouteAction> {
    return planRoute(this.layout.prefix, resource, actual, world);
  }

  diff(resource: StoredResource<'Route'>, actual: RouteActual | undefined, world: World): FieldDiff[] {
    return diffRoute(this.layout.prefix, resource, actual, world);
  }

  async apply(actions: RouteAction[], world: World): Promise<void> {
    await applyRouteActions(this.layout, actions, world, this.uplink);
  }

  collectGarbage(world: World): Promise<string[]> {
    return collectRouteGarbage(this.layout, world, this.uplink);
  }

  /** `ip monitor` and /run/netns: a route whose links or namespace change is re-checked at once. */
  watch(notify: (keys: ObjectKey[]) => void, world: () => World): { close(): void } {
    return watchHostNetwork(this.layout, (vms) => {
      const routes = world().list('Route').filter((r) => vms === 'all' || vms.has(r.spec.vm));
      notify(routes.map((r) => makeKey('Route', r.metadata.name)));
    });
  }
}

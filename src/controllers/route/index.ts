// The Route controller: a network namespace per VM (the VM's cable), a veth pair to the host side, and
// for `direct` Routes forwarding plus NAT out of the uplink. Observe is one `ip` process and one `nft`
// process for all Routes; plan is pure (plan.ts); apply batches host changes (apply.ts); garbage
// collection removes what lost Routes left behind (gc.ts).
import { watchHostNetwork } from '../../drivers/monitor.ts';
import type { NetLayout } from '../../drivers/netns.ts';
import type { Controller, FieldDiff, Plan, World } from '../../engine/contract.ts';
import { keyOf, makeKey, type ObjectKey } from '../../resources/keys.ts';
import type { StoredResource } from '../../store/store.ts';
import { applyRouteActions, type RouteGateways } from './apply.ts';
import { reportRouteFirewall } from './firewall.ts';
import { observeBackstops } from '../../drivers/policyroute.ts';
import { GATEWAY_WATCH_MS, backstopOf, gatewayAlive, gatewayMode, observeGateway } from './gateway.ts';
import type { StatusReport } from '../../engine/contract.ts';
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
    /** qwamos' firewall and the tor/i2p gateways; without, tor and i2p Routes stall (fail closed). */
    private readonly gateways?: RouteGateways,
  ) {}

  async observe(resources: StoredResource<'Route'>[], world?: World): Promise<Map<ObjectKey, RouteActual>> {
    const g = this.gateways;
    const [host, fw] = await Promise.all([
      observeRouteHost(this.layout, resources.map((r) => r.spec.vm), this.uplink),
      g && world ? g.firewall.observe(world) : undefined,
    ]);
    // The backstop and the gateway process of tor/i2p Routes (and of any Route being deleted); the
    // backstops of all of them read at once.
    const gatewaySide = g ? resources.filter((r) => gatewayMode(r.spec.mode) || r.deletionRequestedAt) : [];
    const [backstops, gateways] = g
      ? await Promise.all([
          observeBackstops(this.layout, gatewaySide.map((r) => backstopOf(this.layout.prefix, r.spec.vm))),
          Promise.all(gatewaySide.map((r) => observeGateway(g.settings, r))),
        ])
      : [[], []];
    const sideOf = new Map(gatewaySide.map((r, i) => [keyOf(r), { backstop: backstops[i], gateway: gateways[i] }]));
    const found = new Map<ObjectKey, RouteActual>();
    for (const r of resources) {
      const net = host.nets.get(r.spec.vm);
      const { backstop, gateway } = sideOf.get(keyOf(r)) ?? {};
      found.set(keyOf(r), {
        ...(net ? { net } : {}),
        nat: host.nat,
        ...(host.uplink ? { uplink: host.uplink } : {}),
        ...(fw ? { fw } : {}),
        ...(backstop ? { backstop } : {}),
        ...(gateway ? { gateway } : {}),
      });
    }
    return found;
  }

  report(resource: StoredResource<'Route'>, actual: RouteActual | undefined): StatusReport {
    return this.gateways ? { fields: reportRouteFirewall(resource, actual) } : {};
  }

  plan(resource: StoredResource<'Route'>, actual: RouteActual | undefined, world: World): Plan<RouteAction> {
    return planRoute(this.layout.prefix, resource, actual, world);
  }

  diff(resource: StoredResource<'Route'>, actual: RouteActual | undefined, world: World): FieldDiff[] {
    return diffRoute(this.layout.prefix, resource, actual, world);
  }

  async apply(actions: RouteAction[], world: World): Promise<void> {
    await applyRouteActions(this.layout, actions, world, this.uplink, this.gateways);
  }

  collectGarbage(world: World): Promise<string[]> {
    return collectRouteGarbage(this.layout, world, this.uplink, this.gateways);
  }

  /** `ip monitor` and /run/netns: a route whose links or namespace change is re-checked at once. */
  watch(notify: (keys: ObjectKey[]) => void, world: () => World): { close(): void } {
    const net = watchHostNetwork(this.layout, (vms) => {
      const routes = world().list('Route').filter((r) => vms === 'all' || vms.has(r.spec.vm));
      notify(routes.map((r) => makeKey('Route', r.metadata.name)));
    });
    // A tor/i2pd process that died (crashed, killed) is seen within GATEWAY_WATCH_MS and restarted.
    const g = this.gateways;
    let checking = false;
    const timer = g
      ? setInterval(() => {
          if (checking) return;
          checking = true;
          const routes = world().list('Route').filter((r) => gatewayMode(r.spec.mode));
          Promise.all(routes.map(async (r) => ((await gatewayAlive(g.settings, r)) ? [] : [keyOf(r)])))
            .then((dead) => dead.flat().length && notify(dead.flat()))
            .catch(() => undefined)
            .finally(() => (checking = false));
        }, GATEWAY_WATCH_MS)
      : undefined;
    timer?.unref();
    return {
      close() {
        net.close();
        if (timer) clearInterval(timer);
      },
    };
  }
}

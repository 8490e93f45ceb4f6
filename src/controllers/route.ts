// The Route controller: a network namespace per VM, a veth pair to the host side, and for `direct`
// routes forwarding plus NAT out of the uplink. Observe is one `ip` round and one `nft` round for all
// Routes; plan is pure; apply batches host changes.
import { diffRouteNet, observeRouteNets, planRouteNet, applyNetActions, ipOf, type NetAction, type NetLayout, type ObservedRouteNet, type RouteNet } from '../drivers/netns.ts';
import { watchHostNetwork } from '../drivers/monitor.ts';
import { observeNat, resolveUplink, syncNat, type ObservedNat } from '../drivers/nft.ts';
import type { ObjectKey } from '../resources/keys.ts';
import type { StoredResource } from '../store/store.ts';
import { stalled, waiting, type Action, type Controller, type FieldDiff, type Plan, type World } from '../engine/contract.ts';

export interface RouteActual {
  net?: ObservedRouteNet;
  nat: ObservedNat;
  uplink?: string;
}

type NatAction = Action & { type: 'sync-nat' };
type RouteAction = NetAction | NatAction;

/** Modes whose traffic policy (Tor redirect, I2P-only) is not built yet: refused rather than left open. */
const UNSUPPORTED_MODES = new Set(['tor', 'i2p']);

export class RouteController implements Controller<'Route', RouteActual, RouteAction> {
  readonly kind = 'Route';

  /**
   * @param layout prefix and host netns of everything this controller owns
   * @param routes all Routes currently desired (for the NAT table, which holds every direct route)
   */
  constructor(
    private readonly layout: NetLayout,
    private readonly uplink?: string,
  ) {}

  async observe(resources: StoredResource<'Route'>[]): Promise<Map<ObjectKey, RouteActual>> {
    const [nets, nat, uplink] = await Promise.all([
      observeRouteNets(this.layout, resources.map((r) => r.spec.vm)),
      observeNat(this.layout),
      resolveUplink(this.layout.hostNetns, this.uplink),
    ]);
    const found = new Map<ObjectKey, RouteActual>();
    for (const r of resources) {
      const net = nets.get(r.spec.vm);
      found.set(`Route/${r.metadata.name}`, { ...(net ? { net } : {}), nat, ...(uplink ? { uplink } : {}) });
    }
    return found;
  }

  plan(resource: StoredResource<'Route'>, actual: RouteActual | undefined): Plan<RouteAction> {
    const key: ObjectKey = `Route/${resource.metadata.name}`;
    const deleting = Boolean(resource.deletionRequestedAt);
    const spec = resource.spec;
    if (!deleting && UNSUPPORTED_MODES.has(spec.mode)) {
      return { actions: [], hold: stalled('ModeUnsupported', `mode ${spec.mode} is not supported on this host yet: nothing was created (fail closed)`) };
    }
    const actions: RouteAction[] = planRouteNet(this.layout, deleting ? undefined : toRouteNet(resource), actual?.net, key);
    const ip = spec.address ? ipOf(spec.address) : undefined;
    const wantNat = !deleting && spec.mode === 'direct';
    const haveNat = ip !== undefined && actual?.nat.masquerade.has(ip) === true;
    if (wantNat && !actual?.uplink) {
      return { actions: [], hold: waiting('NoUplink', 'no uplink for direct traffic: the host has no default route and QWAMOS_UPLINK is not set', 10_000) };
    }
    if (wantNat !== haveNat || (wantNat && !actual?.nat.forwarding)) {
      const describe = wantNat ? `forward and masquerade ${ip} out of ${actual?.uplink}` : `remove masquerade for ${ip}`;
      actions.push({ type: 'sync-nat', resource: key, describe });
    }
    return { actions };
  }

  diff(resource: StoredResource<'Route'>, actual: RouteActual | undefined): FieldDiff[] {
    const spec = resource.spec;
    const diffs = diffRouteNet(this.layout, toRouteNet(resource), actual?.net);
    if (spec.mode === 'direct' && spec.address) {
      const ip = ipOf(spec.address);
      const have = actual?.nat.masquerade.has(ip) ? 'masquerade' : '(none)';
      if (have !== 'masquerade') diffs.push({ field: 'nat', desired: `masquerade ${ip}`, actual: have });
    }
    return diffs;
  }

  async apply(actions: RouteAction[], world: World): Promise<void> {
    const net = actions.filter((a): a is NetAction => a.type !== 'sync-nat');
    if (net.length > 0) await applyNetActions(this.layout, net);
    if (actions.some((a) => a.type === 'sync-nat')) {
      const uplink = await resolveUplink(this.layout.hostNetns, this.uplink);
      if (!uplink) throw new Error('no uplink for direct traffic: the host has no default route and QWAMOS_UPLINK is not set');
      await syncNat({ ...this.layout, uplink }, directAddresses(world));
    }
  }

  /** `ip monitor` and /run/netns: a route whose links or namespace change is re-checked at once. */
  watch(notify: (keys: ObjectKey[]) => void, world: () => World): { close(): void } {
    return watchHostNetwork(this.layout, (vms) => {
      const routes = world().list('Route').filter((r) => vms === 'all' || vms.has(r.spec.vm));
      notify(routes.map((r) => `Route/${r.metadata.name}` as const));
    });
  }
}

/** Every direct Route that is desired now: the NAT table is rewritten whole from this list. */
function directAddresses(world: World): { resource: string; ip: string }[] {
  return world
    .list('Route')
    .filter((r) => r.spec.mode === 'direct' && r.spec.address)
    .map((r) => ({ resource: `Route/${r.metadata.name}`, ip: ipOf(r.spec.address!) }));
}

function toRouteNet(r: StoredResource<'Route'>): RouteNet {
  const spec = r.spec;
  return {
    vm: spec.vm,
    mode: spec.mode,
    ...(spec.address ? { address: spec.address } : {}),
    ...(spec.gateway ? { gateway: spec.gateway } : {}),
    resource: `Route/${r.metadata.name}`,
  };
}

// The Route controller: a network namespace per VM, a veth pair to the host side, and for `direct`
// routes forwarding plus NAT out of the uplink. Observe is one `ip` round and one `nft` round for all
// Routes; plan is pure; apply batches host changes.
import { diffRouteNet, observeRouteNets, planRouteNet, applyNetActions, ipOf, type NetAction, type NetLayout, type ObservedRouteNet, type RouteNet } from '../drivers/netns.ts';
import { watchHostNetwork } from '../drivers/monitor.ts';
import { observeNat, resolveUplink, syncNat, type ObservedNat } from '../drivers/nft.ts';
import type { RouteSpec } from '../resources/generated.ts';
import type { StoredResource } from '../store/store.ts';
import { blocked, type Action, type Controller, type FieldDiff } from './contract.ts';

export interface RouteActual {
  net?: ObservedRouteNet;
  nat: ObservedNat;
  uplink?: string;
}

type NatAction = Action & { type: 'sync-nat' };
type RouteAction = NetAction | NatAction | ReturnType<typeof blocked>;

/** Modes whose traffic policy (Tor redirect, I2P-only) is not built yet: refused rather than left open. */
const UNSUPPORTED_MODES = new Set(['tor', 'i2p']);

export class RouteController implements Controller<RouteActual, RouteAction> {
  readonly kind = 'Route';

  /**
   * @param layout prefix and host netns of everything this controller owns
   * @param routes all Routes currently desired (for the NAT table, which holds every direct route)
   */
  constructor(
    private readonly layout: NetLayout,
    private readonly routes: () => StoredResource[],
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {}

  async observe(resources: StoredResource[]): Promise<Map<string, RouteActual>> {
    const [nets, nat, uplink] = await Promise.all([
      observeRouteNets(this.layout, resources.map((r) => specOf(r).vm)),
      observeNat(this.layout),
      resolveUplink(this.layout.hostNetns, this.env),
    ]);
    const found = new Map<string, RouteActual>();
    for (const r of resources) {
      const net = nets.get(specOf(r).vm);
      found.set(`Route/${r.metadata.name}`, { ...(net ? { net } : {}), nat, ...(uplink ? { uplink } : {}) });
    }
    return found;
  }

  plan(resource: StoredResource, actual: RouteActual | undefined, deleting: boolean): RouteAction[] {
    const key = `Route/${resource.metadata.name}`;
    const spec = specOf(resource);
    if (!deleting && UNSUPPORTED_MODES.has(spec.mode)) {
      return [blocked(key, `mode ${spec.mode} is not supported on this host yet: nothing was created (fail closed)`)];
    }
    const actions: RouteAction[] = planRouteNet(this.layout, deleting ? undefined : toRouteNet(resource), actual?.net, key);
    const ip = spec.address ? ipOf(spec.address) : undefined;
    const wantNat = !deleting && spec.mode === 'direct';
    const haveNat = ip !== undefined && actual?.nat.masquerade.has(ip) === true;
    if (wantNat && !actual?.uplink) {
      return [blocked(key, 'no uplink for direct traffic: the host has no default route and QWAMOS_UPLINK is not set', false)];
    }
    if (wantNat !== haveNat || (wantNat && !actual?.nat.forwarding)) {
      const describe = wantNat ? `forward and masquerade ${ip} out of ${actual?.uplink}` : `remove masquerade for ${ip}`;
      actions.push({ type: 'sync-nat', resource: key, describe });
    }
    return actions;
  }

  diff(resource: StoredResource, actual: RouteActual | undefined): FieldDiff[] {
    const spec = specOf(resource);
    const diffs = diffRouteNet(this.layout, toRouteNet(resource), actual?.net);
    if (spec.mode === 'direct' && spec.address) {
      const ip = ipOf(spec.address);
      const have = actual?.nat.masquerade.has(ip) ? 'masquerade' : '(none)';
      if (have !== 'masquerade') diffs.push({ field: 'nat', desired: `masquerade ${ip}`, actual: have });
    }
    return diffs;
  }

  async apply(actions: RouteAction[]): Promise<void> {
    const net = actions.filter((a): a is NetAction => a.type !== 'sync-nat' && a.type !== 'blocked');
    if (net.length > 0) await applyNetActions(this.layout, net);
    if (actions.some((a) => a.type === 'sync-nat')) {
      const uplink = await resolveUplink(this.layout.hostNetns, this.env);
      if (!uplink) throw new Error('no uplink for direct traffic: the host has no default route and QWAMOS_UPLINK is not set');
      await syncNat({ ...this.layout, uplink }, this.directAddresses());
    }
  }

  /** `ip monitor` and /run/netns: a route whose links or namespace change is re-checked at once. */
  watch(notify: (keys: string[]) => void): { close(): void } {
    return watchHostNetwork(this.layout, (vms) => {
      const routes = this.routes().filter((r) => vms === 'all' || vms.has(specOf(r).vm));
      notify(routes.map((r) => `Route/${r.metadata.name}`));
    });
  }

  /** Every direct Route that is desired now: the NAT table is rewritten whole from this list. */
  private directAddresses(): { resource: string; ip: string }[] {
    return this.routes()
      .filter((r) => !r.deletionRequestedAt && specOf(r).mode === 'direct' && specOf(r).address)
      .map((r) => ({ resource: `Route/${r.metadata.name}`, ip: ipOf(specOf(r).address!) }));
  }
}

function specOf(r: StoredResource): RouteSpec {
  return r.spec as unknown as RouteSpec;
}

function toRouteNet(r: StoredResource): RouteNet {
  const spec = specOf(r);
  return {
    vm: spec.vm,
    mode: spec.mode,
    ...(spec.address ? { address: spec.address } : {}),
    ...(spec.gateway ? { gateway: spec.gateway } : {}),
    resource: `Route/${r.metadata.name}`,
  };
}

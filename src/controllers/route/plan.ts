// Route plan and diff: pure. From the declaration, what observe saw and the world, the ordered host
// changes, and how the pass ends when it cannot be Ready.
//
// Layout of a Route for VM `vm` under prefix P (the host side is `hostNetns` in tests, the machine's
// own namespace in production). The VM netns is the VM's "cable", not an endpoint: the guest (QEMU, on
// a tap there) owns the VM's address, so the netns holds no address and no route:
//   VM netns  P-vm   lo up, IPv6 disabled (all + default), bridge Pb-vm up, no address, no route
//             Pv-vm  the veth's VM end, master Pb-vm, up (not for `isolated`)
//             Pt-vm  the tap, master Pb-vm, up: created by the VM controller, never planned
//   host      Ph-vm = GATEWAY/32, up, route ADDRESS/32 dev Ph-vm
//   nft       table ip P_qwamos: one masquerade rule per direct Route (see nat.ts), forwarding on
// The host reaches the guest by ARP across the veth and the bridge; the guest's ARP for the gateway is
// answered by Ph-vm. `isolated` is the VM netns with its bridge alone: no veth, nothing can leave.
// Any other port of the bridge is a way in or out the Route did not declare: it is released. The
// bridge and Ph-vm carry the mark `qwamos:P:Route/<name>` (their ifalias), so garbage collection
// knows what qwamos made and for which Route.
import { derivedNames, normCidr, type ObservedLink, type ObservedRoute } from '../../drivers/netns.ts';
import { stalled, waiting, type Action, type FieldDiff, type Plan, type World } from '../../engine/contract.ts';
import { keyOf, type ObjectKey } from '../../resources/keys.ts';
import type { StoredResource } from '../../store/store.ts';
import { ipOf, natProblems } from './nat.ts';
import type { ObservedRouteNet, RouteActual } from './observe.ts';
import { planRouteFirewall, type FirewallAction } from './firewall.ts';

/** Where a link lives: the host side, or the VM's netns. */
export type Side = 'host' | 'vm';

interface Base<T extends string> extends Action {
  type: T;
}
export type NetAction =
  | (Base<'create-netns'> & { netns: string })
  /** hostIf: the paired host-side veth, which the kernel removes shortly after; apply waits for it. */
  | (Base<'delete-netns'> & { netns: string; hostIf?: string })
  /** net.ipv6.conf.{all,default}.disable_ipv6=1 inside the VM netns, so nothing autoconfigures there. */
  | (Base<'disable-ipv6'> & { netns: string })
  | (Base<'create-bridge'> & { netns: string; bridge: string })
  | (Base<'create-veth'> & { hostIf: string; vmIf: string; netns: string })
  /** Enslave a VM-side link to the bridge. */
  | (Base<'set-master'> & { netns: string; link: string; bridge: string })
  /** Take a foreign port off the bridge (`nomaster`). */
  | (Base<'release-port'> & { netns: string; link: string })
  /** Mark a link as the Route's (its ifalias). netns is set when side = 'vm'. */
  | (Base<'set-mark'> & { side: Side; link: string; mark: string; netns?: string })
  | (Base<'delete-link'> & { side: Side; link: string; netns?: string })
  | (Base<'link-up'> & { side: Side; link: string; netns?: string })
  | (Base<'add-address'> & { side: Side; link: string; cidr: string; netns?: string })
  | (Base<'delete-address'> & { side: Side; link: string; cidr: string; netns?: string })
  /** A stray route inside the VM netns. */
  | (Base<'delete-vm-route'> & { netns: string; route: ObservedRoute })
  | (Base<'add-host-route'> & { dst: string; link: string })
  | (Base<'delete-host-route'> & { dst: string; link: string });

/** Rewrite qwamos' nft table whole from the world (and forwarding on): it differs for this Route. */
export type NatAction = Base<'sync-nat'>;
export type RouteAction = NetAction | NatAction | FirewallAction;

/** What one Route wants of the host network. */
export interface RouteNet {
  vm: string;
  mode: 'isolated' | 'direct' | 'tor' | 'i2p';
  /** The VM's address, CIDR (e.g. 10.8.0.2/24). Required unless `isolated`. */
  address?: string;
  /** The host-side gateway address (e.g. 10.8.0.1). Required unless `isolated`. */
  gateway?: string;
}

/** Modes that need qwamos' firewall and a gateway: refused (fail closed) by a controller built without them. */
const GATEWAY_MODES = new Set(['tor', 'i2p']);
export const NO_UPLINK = 'no uplink for direct traffic: the host has no default route and QWAMOS_UPLINK is not set';

/** The mark (ifalias) of what qwamos creates for a Route: `qwamos:<prefix>:Route/<name>`. */
export function routeMark(prefix: string, key: ObjectKey<'Route'>): string {
  return `qwamos:${prefix}:${key}`;
}

/** The Route name a mark names under this prefix, or undefined when it is not one of ours. */
export function markedRoute(prefix: string, alias: string | undefined): string | undefined {
  const head = `qwamos:${prefix}:Route/`;
  return alias?.startsWith(head) ? alias.slice(head.length) : undefined;
}

export function routeNetOf(r: StoredResource<'Route'>): RouteNet {
  const { vm, mode, address, gateway } = r.spec;
  return { vm, mode, ...(address ? { address } : {}), ...(gateway ? { gateway } : {}) };
}

function hostCidr(ip: string): string {
  return ip.includes(':') ? `${ip}/128` : `${ip}/32`;
}

/**
 * Routes inside the VM netns that plan removes: every main-table route on lo, on no link (unreachable,
 * blackhole) or on one of `links` (the Route's links that stay), except the kernel's routes of an
 * address, which go with the address. Routes on links that are not the Route's are left alone.
 */
function strayVmRoutes(a: ObservedRouteNet, links: ReadonlySet<string>): ObservedRoute[] {
  return (a.vmRoutes ?? []).filter((rt) => rt.protocol !== 'kernel' && (rt.dev === undefined || rt.dev === 'lo' || links.has(rt.dev)));
}

function describeVmRoute(rt: ObservedRoute): string {
  return [rt.type, rt.dst, rt.dev ? `dev ${rt.dev}` : '', rt.metric !== undefined ? `metric ${rt.metric}` : ''].filter(Boolean).join(' ');
}

/**
 * Pure: the ordered ip changes that turn `actual` into `desired` (undefined = remove everything of the
 * VM's network). Empty when in sync. Handles partial states (netns without bridge or veth, veth not
 * enslaved, bridge down or of the wrong kind, IPv6 on, stray addresses and routes in the VM netns,
 * foreign bridge ports, missing marks, leftover host veth, wrong host addresses, missing host routes).
 * Never plans anything for the VM's tap.
 */
export function planRouteNet(prefix: string, key: ObjectKey<'Route'>, desired: RouteNet | undefined, actual: ObservedRouteNet | undefined): NetAction[] {
  const vm = desired?.vm ?? actual?.vm;
  if (vm === undefined) return [];
  if (desired && actual && desired.vm !== actual.vm) throw new Error(`planRouteNet: desired ${desired.vm} vs actual ${actual.vm}`);
  const res = key;
  const n = derivedNames(prefix, vm);
  const mark = routeMark(prefix, key);
  const a: ObservedRouteNet = actual ?? { vm, netnsExists: false, paired: false, hostRoutes: [] };
  const acts: NetAction[] = [];
  const inNs = n.netns;

  // --- delete. Deleting the netns destroys a paired veth (the kernel does it in batches, far faster than
  // one `link del` each), the bridge and the tap; an unpaired host-side leftover is deleted explicitly.
  if (!desired) {
    const pairedAway = a.netnsExists && a.paired && !!a.hostIf;
    if (a.hostIf && !pairedAway) acts.push({ type: 'delete-link', resource: res, side: 'host', link: n.hostIf, describe: `delete link ${n.hostIf}` });
    if (a.netnsExists) {
      acts.push({
        type: 'delete-netns',
        resource: res,
        netns: inNs,
        ...(pairedAway ? { hostIf: n.hostIf } : {}),
        describe: pairedAway ? `delete netns ${inNs} (and veth ${n.hostIf})` : `delete netns ${inNs}`,
      });
    }
    return acts;
  }

  const wantsVeth = desired.mode !== 'isolated';
  if (wantsVeth && (!desired.address || !desired.gateway)) throw new Error(`${res}: mode ${desired.mode} needs an address and a gateway`);

  // What of the VM netns survives this plan (a new netns has nothing in it).
  const ns = a.netnsExists;
  const vmLinks = new Set<string>();

  // --- the VM netns: lo up, IPv6 off
  if (!ns) acts.push({ type: 'create-netns', resource: res, netns: inNs, describe: `create netns ${inNs}` });
  if (!(ns && a.loUp === true)) acts.push({ type: 'link-up', resource: res, side: 'vm', netns: inNs, link: 'lo', describe: `set lo up in ${inNs}` });
  if (!(ns && a.ipv6Disabled === true)) acts.push({ type: 'disable-ipv6', resource: res, netns: inNs, describe: `disable IPv6 in ${inNs}` });

  // --- the bridge (a link of another kind under its name is replaced), marked as the Route's
  const bridgeOk = ns && a.bridge?.kind === 'bridge';
  if (ns && a.bridge && !bridgeOk) {
    acts.push({ type: 'delete-link', resource: res, side: 'vm', netns: inNs, link: n.bridge, describe: `delete link ${n.bridge} in ${inNs} (not a bridge)` });
  }
  if (!bridgeOk) acts.push({ type: 'create-bridge', resource: res, netns: inNs, bridge: n.bridge, describe: `create bridge ${n.bridge} in ${inNs}` });
  else vmLinks.add(n.bridge);
  if (!(bridgeOk && a.bridge!.alias === mark)) {
    acts.push({ type: 'set-mark', resource: res, side: 'vm', netns: inNs, link: n.bridge, mark, describe: `mark ${n.bridge} in ${inNs} as ${key}` });
  }
  if (!(bridgeOk && a.bridge!.up)) acts.push({ type: 'link-up', resource: res, side: 'vm', netns: inNs, link: n.bridge, describe: `set ${n.bridge} up in ${inNs}` });
  // --- no port but the veth end and the tap
  if (bridgeOk) {
    for (const port of a.foreignPorts ?? []) {
      if (port === n.vmIf) continue;
      acts.push({ type: 'release-port', resource: res, netns: inNs, link: port, describe: `release foreign port ${port} from ${n.bridge} in ${inNs}` });
    }
  }

  // --- the veth pair (isolated: none)
  const vmIfPresent = ns && !!a.vmIf;
  let vethIntact = false;
  if (!wantsVeth) {
    if (a.hostIf) acts.push({ type: 'delete-link', resource: res, side: 'host', link: n.hostIf, describe: `delete link ${n.hostIf}` });
    if (vmIfPresent && !(a.hostIf && a.paired)) {
      acts.push({ type: 'delete-link', resource: res, side: 'vm', netns: inNs, link: n.vmIf, describe: `delete link ${n.vmIf} in ${inNs}` });
    }
  } else {
    vethIntact = ns && a.paired && !!a.hostIf && !!a.vmIf;
    if (!vethIntact) {
      if (a.hostIf) acts.push({ type: 'delete-link', resource: res, side: 'host', link: n.hostIf, describe: `delete link ${n.hostIf}` });
      if (vmIfPresent) acts.push({ type: 'delete-link', resource: res, side: 'vm', netns: inNs, link: n.vmIf, describe: `delete link ${n.vmIf} in ${inNs}` });
      acts.push({ type: 'create-veth', resource: res, hostIf: n.hostIf, vmIf: n.vmIf, netns: inNs, describe: `create veth ${n.hostIf} <-> ${n.vmIf} in ${inNs}` });
    } else vmLinks.add(n.vmIf);
    const vmIf = vethIntact ? a.vmIf : undefined;
    // A new bridge has no ports: the veth is enslaved again.
    if (!(vmIf && bridgeOk && vmIf.master === n.bridge)) {
      acts.push({ type: 'set-master', resource: res, netns: inNs, link: n.vmIf, bridge: n.bridge, describe: `enslave ${n.vmIf} to ${n.bridge} in ${inNs}` });
    }
    if (!vmIf?.up) acts.push({ type: 'link-up', resource: res, side: 'vm', netns: inNs, link: n.vmIf, describe: `set ${n.vmIf} up in ${inNs}` });
  }

  // --- nothing in the VM netns has an address or a route: the guest owns the VM's address
  const strays: { link: string; cidr: string }[] = [];
  if (ns) for (const cidr of a.loAddresses ?? []) strays.push({ link: 'lo', cidr });
  if (vmLinks.has(n.bridge)) for (const cidr of a.bridge!.addresses) strays.push({ link: n.bridge, cidr });
  if (vmLinks.has(n.vmIf)) for (const cidr of a.vmIf!.addresses) strays.push({ link: n.vmIf, cidr });
  for (const { link, cidr } of strays) {
    acts.push({ type: 'delete-address', resource: res, side: 'vm', netns: inNs, link, cidr, describe: `delete address ${cidr} from ${link} in ${inNs}` });
  }
  if (ns) {
    for (const route of strayVmRoutes(a, vmLinks)) {
      acts.push({ type: 'delete-vm-route', resource: res, netns: inNs, route, describe: `delete route ${describeVmRoute(route)} in ${inNs}` });
    }
  }
  if (!wantsVeth) return acts;

  const vmIp = ipOf(normCidr(desired.address!));
  const gwCidr = hostCidr(desired.gateway!.toLowerCase());

  // --- host side: marked, up, exactly the gateway address, exactly the route to the VM
  const hostIf: ObservedLink | undefined = vethIntact ? a.hostIf : undefined;
  if (hostIf?.alias !== mark) acts.push({ type: 'set-mark', resource: res, side: 'host', link: n.hostIf, mark, describe: `mark ${n.hostIf} as ${key}` });
  if (!hostIf?.up) acts.push({ type: 'link-up', resource: res, side: 'host', link: n.hostIf, describe: `set ${n.hostIf} up` });
  const hostAddrs = hostIf?.addresses ?? [];
  let hostAddrChanged = false;
  for (const c of hostAddrs) {
    if (c !== gwCidr) {
      acts.push({ type: 'delete-address', resource: res, side: 'host', link: n.hostIf, cidr: c, describe: `delete address ${c} from ${n.hostIf}` });
      hostAddrChanged = true;
    }
  }
  if (!hostAddrs.includes(gwCidr)) {
    acts.push({ type: 'add-address', resource: res, side: 'host', link: n.hostIf, cidr: gwCidr, describe: `add address ${gwCidr} to ${n.hostIf}` });
    hostAddrChanged = true;
  }
  const routes = hostIf ? a.hostRoutes : [];
  for (const dst of routes) {
    if (dst !== vmIp) acts.push({ type: 'delete-host-route', resource: res, dst, link: n.hostIf, describe: `delete route ${dst} dev ${n.hostIf}` });
  }
  // Removing an interface's addresses can flush its routes: set the route again after any address change.
  if (!routes.includes(vmIp) || hostAddrChanged) {
    acts.push({ type: 'add-host-route', resource: res, dst: vmIp, link: n.hostIf, describe: `route ${vmIp} dev ${n.hostIf}` });
  }
  return acts;
}

/** Pure: the Route's plan (see the contract): its ip changes, a NAT rewrite when NAT differs, holds. */
export function planRoute(prefix: string, resource: StoredResource<'Route'>, actual: RouteActual | undefined, world: World): Plan<RouteAction> {
  const key = keyOf(resource);
  const deleting = Boolean(resource.deletionRequestedAt);
  const spec = resource.spec;
  if (!deleting && GATEWAY_MODES.has(spec.mode) && !actual?.fw) {
    return { actions: [], hold: stalled('ModeUnsupported', `mode ${spec.mode} needs qwamos' firewall, which this controller was built without: nothing was created (fail closed)`) };
  }
  // The backstop and the VM's chains first (closed before the host link is up), the gateway last.
  const fw = planRouteFirewall(prefix, resource, actual, world);
  const actions: RouteAction[] = [...fw.pre, ...planRouteNet(prefix, key, deleting ? undefined : routeNetOf(resource), actual?.net)];
  const wantNat = !deleting && spec.mode === 'direct';
  if (wantNat && !actual?.uplink) return { actions: [...actions, ...fw.post], hold: waiting('NoUplink', NO_UPLINK, 10_000) };
  const nat = natProblems(resource, actual?.nat ?? { forwarding: false }, actual?.uplink, world.all);
  if (nat.length > 0) {
    const describe = wantNat ? `rewrite nft table: ${nat.join('; ')}` : `remove masquerade for ${key}`;
    actions.push({ type: 'sync-nat', resource: key, describe });
  }
  actions.push(...fw.post);
  return fw.hold ? { actions, hold: fw.hold } : { actions };
}

/** Pure: field-level differences, for drift records. */
export function diffRoute(prefix: string, resource: StoredResource<'Route'>, actual: RouteActual | undefined, world: World): FieldDiff[] {
  const desired = routeNetOf(resource);
  const key = keyOf(resource);
  const n = derivedNames(prefix, desired.vm);
  const mark = routeMark(prefix, key);
  const a = actual?.net;
  const d: FieldDiff[] = [];
  const push = (field: string, want: string, have: string) => {
    if (want !== have) d.push({ field, desired: want, actual: have });
  };
  const ns = !!a?.netnsExists;
  push('netns', n.netns, ns ? n.netns : '(none)');
  if (ns) {
    push('lo', 'up', a!.loUp ? 'up' : 'down');
    push('ipv6', 'disabled', a!.ipv6Disabled === undefined ? 'unknown' : a!.ipv6Disabled ? 'disabled' : 'enabled');
  }
  const br = ns ? a!.bridge : undefined;
  push('bridge', 'up', !br ? '(none)' : br.kind !== 'bridge' ? `not a bridge (${br.kind ?? 'unknown kind'})` : br.up ? 'up' : 'down');
  if (br) push('bridge.mark', mark, br.alias ?? '(none)');
  if (ns) push('bridge.ports', '(none foreign)', (a!.foreignPorts ?? []).filter((p) => p !== n.vmIf).join(',') || '(none foreign)');
  const wantsVeth = desired.mode !== 'isolated';
  const vethState = a?.hostIf && a.vmIf ? (a.paired ? 'paired' : 'unpaired') : a?.hostIf || a?.vmIf ? 'partial' : '(none)';
  push('veth', wantsVeth ? 'paired' : '(none)', vethState);
  if (ns && a) {
    const links = new Set([n.bridge, n.vmIf]);
    const addrs = [
      ...(a.loAddresses ?? []).map((c) => `lo ${c}`),
      ...(a.bridge?.addresses ?? []).map((c) => `${n.bridge} ${c}`),
      ...(a.vmIf?.addresses ?? []).map((c) => `${n.vmIf} ${c}`),
    ];
    push('vmns.addresses', '(none)', addrs.join(',') || '(none)');
    push('vmns.routes', '(none)', strayVmRoutes(a, links).map(describeVmRoute).join(',') || '(none)');
  }
  if (wantsVeth && desired.address && desired.gateway) {
    push('vmIf.master', n.bridge, a?.vmIf?.master ?? '(none)');
    push('vmIf.up', 'true', String(!!a?.vmIf?.up));
    push('hostIf.up', 'true', String(!!a?.hostIf?.up));
    if (a?.hostIf) push('hostIf.mark', mark, a.hostIf.alias ?? '(none)');
    push('hostIf.addresses', hostCidr(desired.gateway.toLowerCase()), (a?.hostIf?.addresses ?? []).join(',') || '(none)');
    push('hostRoutes', ipOf(normCidr(desired.address)), (a?.hostRoutes ?? []).join(',') || '(none)');
  }
  if (desired.mode === 'direct' && actual?.uplink) {
    const nat = natProblems(resource, actual.nat, actual.uplink, world.all);
    if (nat.length) d.push({ field: 'nat', desired: `masquerade ${ipOf(desired.address ?? '')} via ${actual.uplink}, table as compiled`, actual: nat.join('; ') });
  }
  d.push(...planRouteFirewall(prefix, resource, actual, world).diff);
  return d;
}

// The ip driver for Routes: one network namespace per VM, a veth pair to the host side, Qubes-style
// point-to-point addressing. Observe is one process for the whole host, plan is pure, apply is batched.
//
// The VM netns is the VM's "cable", not an endpoint: the guest (QEMU, on a tap in that netns) owns the
// VM's address itself, so the netns holds no address and no route at all, only a bridge joining the
// veth's VM end and the tap. Layout of a Route for VM `vm` under prefix P (the host side lives in
// `hostNetns` when one is configured, in tests; in production it is the machine's own namespace):
//   VM netns  P-vm   lo up, IPv6 disabled (all + default), bridge Pb-vm up, no IPv4 address, no route
//             Pv-vm  the veth's VM end, master Pb-vm, up (not for `isolated`)
//             Pt-vm  the tap, master Pb-vm, up: created by the VM controller (createTap), never planned
//   host      Ph-vm = GATEWAY/32, up, route ADDRESS/32 dev Ph-vm
// The host reaches the guest by ARP across the veth and the bridge; the guest's ARP for the gateway is
// answered by Ph-vm. `isolated` is the VM netns with its bridge alone: no veth, nothing can leave.
// Any other bridge port or link in the VM netns (a tap, a test's fake guest) is ignored.
import { CommandError, run, runResult } from './exec.ts';
import { IFNAME_MAX as IFNAMSIZ, derivedNames as namesOf, maxVmNameLength, tooLongDerivedName, type DerivedNames } from '../names.ts';

// Interim (the Route controller's plan moves out of this driver): the shapes the engine contract uses.
interface Action {
  type: string;
  resource: `Route/${string}`;
  describe: string;
}
interface FieldDiff {
  field: string;
  desired: string;
  actual: string;
}

export type { DerivedNames };

export type RouteMode = 'isolated' | 'direct' | 'tor' | 'i2p';

export interface RouteNet {
  vm: string;
  mode: RouteMode;
  /** The VM's address, CIDR (e.g. 10.8.0.2/24). Required unless `isolated`. */
  address?: string;
  /** The host-side gateway address (e.g. 10.8.0.1). Required unless `isolated`. */
  gateway?: string;
  /** For actions and messages, e.g. 'Route/browser'. Default `Route/<vm>`. */
  resource?: string;
}

export interface NetLayout {
  /** Prefix of every owned name (2-4 chars, see hostPrefix()). */
  prefix: string;
  /** Named netns that plays the host side (tests). Undefined = the machine's own namespace. */
  hostNetns?: string;
}

export interface ObservedLink {
  name: string;
  ifindex: number;
  /** Administratively up (IFF_UP). */
  up: boolean;
  /** CIDRs, IPv4 and non-link-local IPv6. */
  addresses: string[];
  /** linkinfo.info_kind, e.g. 'veth', 'tun', 'bridge'. */
  kind?: string;
  /** For a veth: the peer's ifindex (in the peer's namespace). */
  peerIfindex?: number;
  /** The link's master (a bridge port's bridge), by name. */
  master?: string;
}

/** A main-table IPv4 route inside the VM netns, as `ip -j route show` prints it. */
export interface ObservedVmRoute {
  dst: string;
  dev?: string;
  /** Set when not unicast ('unreachable', 'blackhole', ...). */
  type?: string;
  metric?: number;
  /** 'kernel' for the routes the kernel adds with an address (they go with it). */
  protocol?: string;
}

export interface ObservedRouteNet {
  vm: string;
  netnsExists: boolean;
  /** lo up inside the VM netns. */
  loUp?: boolean;
  /** Addresses on lo other than its own 127.0.0.1/8 and ::1/128 (drift). */
  loAddresses?: string[];
  /**
   * net.ipv6.conf.all and .default disable_ipv6 are both 1 inside the VM netns (also true when the
   * kernel has no IPv6). Undefined when it could not be read.
   */
  ipv6Disabled?: boolean;
  /** Pb-vm inside the VM netns. */
  bridge?: ObservedLink;
  /** Pv-vm inside the VM netns. */
  vmIf?: ObservedLink;
  /** Ph-vm in the host netns. */
  hostIf?: ObservedLink;
  /** vmIf and hostIf are both veths and each other's peer. */
  paired: boolean;
  /** Main-table routes inside the VM netns (there should be none). */
  vmRoutes?: ObservedVmRoute[];
  /** Destinations of main-table routes via hostIf in the host netns ('10.8.0.2', '10.9.0.0/24'). */
  hostRoutes: string[];
  /** Pt-vm exists inside the VM netns (created by the VM controller; never planned for). */
  tap?: { name: string; up: boolean; master?: string };
}

/** Where a link lives: the host netns, or the VM's netns. */
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
  /** netns is set when side = 'vm'. */
  | (Base<'delete-link'> & { side: Side; link: string; netns?: string })
  | (Base<'link-up'> & { side: Side; link: string; netns?: string })
  | (Base<'add-address'> & { side: Side; link: string; cidr: string; netns?: string })
  | (Base<'delete-address'> & { side: Side; link: string; cidr: string; netns?: string })
  /** A stray route inside the VM netns. */
  | (Base<'delete-vm-route'> & { netns: string; route: ObservedVmRoute })
  | (Base<'add-host-route'> & { dst: string; link: string })
  | (Base<'delete-host-route'> & { dst: string; link: string });

export type NetActionType = NetAction['type'];

// ---------------------------------------------------------------------------------------------- names

const PREFIX_RE = /^[a-z][a-z0-9]{1,3}$/;
const VM_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
const NETNS_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

function checkLayout(layout: NetLayout): void {
  if (!PREFIX_RE.test(layout.prefix)) throw new Error(`invalid qwamos prefix ${JSON.stringify(layout.prefix)}`);
  if (layout.hostNetns !== undefined && !NETNS_RE.test(layout.hostNetns)) {
    throw new Error(`invalid host netns name ${JSON.stringify(layout.hostNetns)}`);
  }
}

/** Names qwamos derives for a VM (see resources/names.ts). Throws when they cannot be valid interface names. */
export function derivedNames(prefix: string, vm: string): DerivedNames {
  if (!PREFIX_RE.test(prefix)) throw new Error(`invalid qwamos prefix ${JSON.stringify(prefix)}`);
  if (!VM_RE.test(vm)) throw new Error(`invalid VM name ${JSON.stringify(vm)}`);
  const tooLong = tooLongDerivedName(prefix, vm);
  if (tooLong) throw new Error(`VM name ${JSON.stringify(vm)} is too long: interface ${tooLong} exceeds ${IFNAMSIZ} bytes`);
  return namesOf(prefix, vm);
}

export { maxVmNameLength };

/** The IP of a CIDR ('10.8.0.2/24' -> '10.8.0.2'). */
export function ipOf(cidr: string): string {
  return cidr.split('/')[0]!;
}

function hostCidr(ip: string): string {
  return ip.includes(':') ? `${ip}/128` : `${ip}/32`;
}

function normCidr(cidr: string): string {
  const [ip, len] = cidr.split('/');
  const host = ip!.toLowerCase();
  return `${host}/${len ?? (host.includes(':') ? '128' : '32')}`;
}

/** Route destinations as `ip route` prints them: host routes without the /32 (/128). */
function normDst(dst: string): string {
  const d = dst.toLowerCase();
  return d.endsWith('/32') || d.endsWith('/128') ? ipOf(d) : d;
}

// -------------------------------------------------------------------------------------------- observe

interface IpAddrInfo {
  family?: string;
  local?: string;
  prefixlen?: number;
  scope?: string;
}
interface IpLink {
  ifindex?: number;
  link_index?: number;
  ifname?: string;
  flags?: string[];
  master?: string;
  linkinfo?: { info_kind?: string };
  addr_info?: IpAddrInfo[];
}
interface IpRoute {
  dst?: string;
  gateway?: string;
  dev?: string;
  table?: string;
  type?: string;
  metric?: number;
  protocol?: string;
}

function toLink(raw: IpLink): ObservedLink {
  const addresses: string[] = [];
  for (const a of raw.addr_info ?? []) {
    if (!a.local || a.prefixlen === undefined) continue;
    if (a.family === 'inet6' && (a.scope === 'link' || a.local.toLowerCase().startsWith('fe80:'))) continue;
    if (a.family !== 'inet' && a.family !== 'inet6') continue;
    addresses.push(normCidr(`${a.local}/${a.prefixlen}`));
  }
  const link: ObservedLink = {
    name: raw.ifname ?? '',
    ifindex: raw.ifindex ?? -1,
    up: (raw.flags ?? []).includes('UP'),
    addresses,
  };
  if (raw.linkinfo?.info_kind) link.kind = raw.linkinfo.info_kind;
  if (raw.link_index !== undefined) link.peerIfindex = raw.link_index;
  if (raw.master) link.master = raw.master;
  return link;
}

// One process for everything: the host netns's links+addresses and routes, then for every VM netns
// (found by prefix in /run/netns) its disable_ipv6 sysctls (all, default; "@@ipv6 A B", or "@@ipv6 none"
// without kernel IPv6) and its links+addresses and routes, as `ip -d -j -batch` (one JSON array per line),
// between marker lines. Inside a VM netns it is one process chain per netns: nsenter (or `ip netns exec`
// where there is none) -> sh reading the sysctls with the `read` builtin -> exec ip. Names arrive as
// arguments, never inside the script text.
const OBSERVE_SCRIPT = `
p=$1 h=$2
shift 2
v6=; [ -d /proc/sys/net/ipv6/conf ] && v6=1
if command -v nsenter >/dev/null 2>&1; then
  inns() { f=$1; shift; nsenter --net="/run/netns/$f" "$@"; }
else
  inns() { f=$1; shift; ip netns exec "$f" "$@"; }
fi
echo "@@host"
if [ -n "$h" ]; then hostopt="-n $h"; else hostopt=""; fi
ip -d -j $hostopt -batch - <<'EOB' || echo "@@fail"
addr show
route show
EOB
# The VM netns asked for by name, or all of the prefix's.
if [ $# -eq 0 ]; then set -- /run/netns/"$p"-*; else for n; do shift; set -- "$@" /run/netns/"$p-$n"; done; fi
for f; do
  [ -e "$f" ] || continue
  ns=\${f##*/}
  echo "@@ns $ns"
  inns "$ns" sh -c '
if [ -n "$1" ]; then
  a= b=
  read a < /proc/sys/net/ipv6/conf/all/disable_ipv6
  read b < /proc/sys/net/ipv6/conf/default/disable_ipv6
  echo "@@ipv6 $a $b"
else
  echo "@@ipv6 none"
fi
exec ip -d -j -batch -' qwamos-ns "$v6" 2>/dev/null <<'EOB' || echo "@@fail"
addr show
route show
EOB
done
echo "@@end"
`;

interface Section {
  links: IpLink[];
  routes: IpRoute[];
  /** JSON arrays seen (2 when complete). */
  arrays: number;
  failed: boolean;
  /** disable_ipv6 (all, default) as read; ['none'] without kernel IPv6; undefined when not read. */
  ipv6?: string[];
}

function parseObserveOutput(stdout: string): { host?: Section; netns: Map<string, Section>; complete: boolean } {
  const netns = new Map<string, Section>();
  let host: Section | undefined;
  let current: Section | undefined;
  let complete = false;
  for (const line of stdout.split('\n')) {
    const t = line.trim();
    if (t === '') continue;
    if (t.startsWith('@@')) {
      if (t === '@@host') {
        host = current = { links: [], routes: [], arrays: 0, failed: false };
      } else if (t.startsWith('@@ns ')) {
        current = { links: [], routes: [], arrays: 0, failed: false };
        netns.set(t.slice(5), current);
      } else if (t === '@@ipv6' || t.startsWith('@@ipv6 ')) {
        if (current) current.ipv6 = t.slice(6).trim().split(/\s+/).filter(Boolean);
      } else if (t === '@@fail') {
        if (current) current.failed = true;
      } else if (t === '@@end') {
        complete = true;
        current = undefined;
      }
      continue;
    }
    if (!current) continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(t);
    } catch {
      current.failed = true;
      continue;
    }
    if (!Array.isArray(parsed)) {
      current.failed = true;
      continue;
    }
    if (current.arrays === 0) current.links = parsed as IpLink[];
    else if (current.arrays === 1) current.routes = parsed as IpRoute[];
    current.arrays++;
  }
  // A section that did not print both arrays is incomplete.
  for (const s of [host, ...netns.values()]) if (s && s.arrays < 2) s.failed = true;
  return { host, netns, complete };
}

/**
 * Everything qwamos owns for Routes under the layout's prefix, found by name (VM netns `P-*` and host
 * links `Ph-*`), declared or not. Spawns one process regardless of the number of Routes.
 */
/**
 * @param only VM names whose netns to look into (the host side is always read whole); all of the
 *   prefix's when omitted. Scoping keeps a one-route heal cheap on a host with hundreds of routes.
 */
export async function observeRouteNets(layout: NetLayout, only?: readonly string[]): Promise<Map<string, ObservedRouteNet>> {
  checkLayout(layout);
  const { prefix } = layout;
  for (const vm of only ?? []) if (!VM_RE.test(vm)) throw new Error(`invalid VM name ${JSON.stringify(vm)}`);
  const r = await runResult(['sh', '-c', OBSERVE_SCRIPT, 'qwamos-observe', prefix, layout.hostNetns ?? '', ...(only ?? [])]);
  const out = parseObserveOutput(r.stdout);
  if (!out.complete || !out.host || out.host.failed) {
    const why = r.stderr.split('\n').find((l) => l.trim()) ?? `exit code ${r.exitCode}`;
    const where = layout.hostNetns ? `host netns ${layout.hostNetns}` : 'host';
    throw new CommandError(`observe routes in ${where}: ${why.trim()}`, ['sh', '-c', 'qwamos-observe'], r.exitCode, r.stderr, r.stdout);
  }

  const result = new Map<string, ObservedRouteNet>();
  const entry = (vm: string): ObservedRouteNet => {
    let e = result.get(vm);
    if (!e) {
      e = { vm, netnsExists: false, paired: false, hostRoutes: [] };
      result.set(vm, e);
    }
    return e;
  };
  const vmOf = (name: string, marker: string): string | undefined => {
    if (!name.startsWith(marker)) return undefined;
    const vm = name.slice(marker.length);
    return VM_RE.test(vm) ? vm : undefined;
  };

  // Host side: Ph-<vm> links and routes through them.
  const hostLinks = new Map<string, ObservedLink>();
  for (const raw of out.host.links) {
    const vm = vmOf(raw.ifname ?? '', `${prefix}h-`);
    if (vm === undefined) continue;
    const link = toLink(raw);
    hostLinks.set(link.name, link);
    entry(vm).hostIf = link;
  }
  for (const rt of out.host.routes) {
    if (!rt.dev || !rt.dst || rt.dst === 'default') continue;
    const vm = vmOf(rt.dev, `${prefix}h-`);
    if (vm === undefined) continue;
    entry(vm).hostRoutes.push(normDst(rt.dst));
  }

  // VM netns.
  for (const [ns, section] of out.netns) {
    const vm = vmOf(ns, `${prefix}-`);
    if (vm === undefined) continue;
    const e = entry(vm);
    e.netnsExists = true;
    if (section.failed) continue; // vanished while we looked, or unreadable: nothing more is known
    const names = derivedNames(prefix, vm);
    for (const raw of section.links) {
      if (raw.ifname === 'lo') {
        e.loUp = (raw.flags ?? []).includes('UP');
        e.loAddresses = toLink(raw).addresses.filter((c) => c !== '127.0.0.1/8' && c !== '::1/128');
      } else if (raw.ifname === names.bridge) e.bridge = toLink(raw);
      else if (raw.ifname === names.vmIf) e.vmIf = toLink(raw);
      else if (raw.ifname === names.tap) {
        e.tap = { name: names.tap, up: (raw.flags ?? []).includes('UP'), ...(raw.master ? { master: raw.master } : {}) };
      }
      // Anything else (another bridge port, a test's fake guest) is not the Route's.
    }
    e.vmRoutes = section.routes
      .filter((rt) => rt.dst && (rt.table === undefined || rt.table === 'main'))
      .map((rt) => ({
        dst: normDst(rt.dst!),
        ...(rt.dev ? { dev: rt.dev } : {}),
        ...(rt.type && rt.type !== 'unicast' ? { type: rt.type } : {}),
        ...(rt.metric !== undefined ? { metric: rt.metric } : {}),
        ...(rt.protocol ? { protocol: rt.protocol } : {}),
      }));
    const v6 = section.ipv6;
    if (v6?.[0] === 'none') e.ipv6Disabled = true;
    else if (v6 && v6.length === 2) e.ipv6Disabled = v6.every((x) => x === '1');
  }

  for (const e of result.values()) {
    const h = e.hostIf;
    const v = e.vmIf;
    e.paired = !!(
      h &&
      v &&
      h.kind === 'veth' &&
      v.kind === 'veth' &&
      h.peerIfindex === v.ifindex &&
      v.peerIfindex === h.ifindex
    );
  }
  return result;
}

// ----------------------------------------------------------------------------------------------- plan

/**
 * Routes inside the VM netns that plan removes: every main-table route on lo, on no link (unreachable,
 * blackhole) or on one of `links` (the Route's links that stay), except the kernel's routes of an
 * address, which go with the address. Routes on links that are not the Route's are left alone.
 */
function strayVmRoutes(a: ObservedRouteNet, links: ReadonlySet<string>): ObservedVmRoute[] {
  return (a.vmRoutes ?? []).filter((rt) => rt.protocol !== 'kernel' && (rt.dev === undefined || rt.dev === 'lo' || links.has(rt.dev)));
}

function describeVmRoute(rt: ObservedVmRoute): string {
  return [rt.type, rt.dst, rt.dev ? `dev ${rt.dev}` : '', rt.metric !== undefined ? `metric ${rt.metric}` : ''].filter(Boolean).join(' ');
}

/**
 * Pure: the ordered actions that turn `actual` into `desired` (undefined = remove everything the VM's
 * Route created). Empty when in sync. Handles partial states (netns without bridge or veth, veth not
 * enslaved, bridge down or of the wrong kind, IPv6 on, stray addresses and routes in the VM netns,
 * leftover host veth, wrong host addresses, missing host routes). Never plans anything for the tap or
 * any other link in the VM netns that is not the Route's.
 */
export function planRouteNet(
  layout: NetLayout,
  desired: RouteNet | undefined,
  actual: ObservedRouteNet | undefined,
  resource?: string,
): NetAction[] {
  const vm = desired?.vm ?? actual?.vm;
  if (vm === undefined) return [];
  if (desired && actual && desired.vm !== actual.vm) throw new Error(`planRouteNet: desired ${desired.vm} vs actual ${actual.vm}`);
  const res = (resource ?? desired?.resource ?? `Route/${vm}`) as Action["resource"];
  const n = derivedNames(layout.prefix, vm);
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
  if (wantsVeth && (!desired.address || !desired.gateway)) {
    throw new Error(`${res}: mode ${desired.mode} needs an address and a gateway`);
  }

  // What of the VM netns survives this plan (a new netns has nothing in it).
  const ns = a.netnsExists;
  const vmLinks = new Set<string>();

  // --- the VM netns: lo up, IPv6 off
  if (!ns) acts.push({ type: 'create-netns', resource: res, netns: inNs, describe: `create netns ${inNs}` });
  if (!(ns && a.loUp === true)) acts.push({ type: 'link-up', resource: res, side: 'vm', netns: inNs, link: 'lo', describe: `set lo up in ${inNs}` });
  if (!(ns && a.ipv6Disabled === true)) acts.push({ type: 'disable-ipv6', resource: res, netns: inNs, describe: `disable IPv6 in ${inNs}` });

  // --- the bridge (a link of another kind under its name is replaced)
  const bridgeOk = ns && a.bridge?.kind === 'bridge';
  if (ns && a.bridge && !bridgeOk) {
    acts.push({ type: 'delete-link', resource: res, side: 'vm', netns: inNs, link: n.bridge, describe: `delete link ${n.bridge} in ${inNs} (not a bridge)` });
  }
  if (!bridgeOk) acts.push({ type: 'create-bridge', resource: res, netns: inNs, bridge: n.bridge, describe: `create bridge ${n.bridge} in ${inNs}` });
  else vmLinks.add(n.bridge);
  if (!(bridgeOk && a.bridge!.up)) acts.push({ type: 'link-up', resource: res, side: 'vm', netns: inNs, link: n.bridge, describe: `set ${n.bridge} up in ${inNs}` });

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
  const gw = desired.gateway!.toLowerCase();
  const gwCidr = hostCidr(gw);

  // --- host side: up, exactly the gateway address, exactly the route to the VM
  const hostIf: ObservedLink | undefined = vethIntact ? a.hostIf : undefined;
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

/** Pure: field-level differences for drift records. */
export function diffRouteNet(layout: NetLayout, desired: RouteNet, actual: ObservedRouteNet | undefined): FieldDiff[] {
  const n = derivedNames(layout.prefix, desired.vm);
  const a = actual;
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
  if (!wantsVeth || !desired.address || !desired.gateway) return d;
  push('vmIf.master', n.bridge, a?.vmIf?.master ?? '(none)');
  push('vmIf.up', 'true', String(!!a?.vmIf?.up));
  push('hostIf.up', 'true', String(!!a?.hostIf?.up));
  push('hostIf.addresses', hostCidr(desired.gateway.toLowerCase()), (a?.hostIf?.addresses ?? []).join(',') || '(none)');
  push('hostRoutes', ipOf(normCidr(desired.address)), (a?.hostRoutes ?? []).join(',') || '(none)');
  return d;
}

/** True when `plan` would be empty. */
export function routeNetInSync(layout: NetLayout, desired: RouteNet, actual: ObservedRouteNet | undefined): boolean {
  return planRouteNet(layout, desired, actual).length === 0;
}

// ---------------------------------------------------------------------------------------------- apply

interface BatchLine {
  cmd: string;
  /** Failure is fine if stderr says the thing is already gone. */
  tolerant?: boolean;
}

const GONE_RE = /Cannot find device|No such file or directory|No such process|Cannot assign requested address|does not exist/i;

function hostIpArgs(layout: NetLayout): string[] {
  return layout.hostNetns ? ['ip', '-n', layout.hostNetns] : ['ip'];
}

/**
 * Run `ip ... -force -batch -` and fail unless every failing line is tolerant and failed because its
 * object is already gone. ip prints each failure's message followed by "Command failed -:N".
 */
async function runBatch(ipArgs: string[], lines: BatchLine[]): Promise<void> {
  if (lines.length === 0) return;
  const argv = [...ipArgs, '-force', '-batch', '-'];
  const r = await runResult(argv, { input: lines.map((l) => l.cmd).join('\n') + '\n' });
  if (r.exitCode === 0) return;
  const errors = batchErrors(lines, r.stderr, r.exitCode);
  if (errors.length > 0) {
    const more = errors.length > 1 ? ` (and ${errors.length - 1} more)` : '';
    throw new CommandError(`${argv.join(' ')}: ${errors[0]}${more}`, argv, r.exitCode, r.stderr, r.stdout);
  }
}

/** The failures of an `ip -force -batch` run that matter (not tolerant deletions of what is gone). */
function batchErrors(lines: BatchLine[], stderr: string, exitCode: number): string[] {
  if (exitCode === 0) return [];
  const errors: string[] = [];
  let pending: string[] = [];
  let sawMarker = false;
  for (const raw of stderr.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    const m = /^Command failed -:(\d+)$/.exec(line);
    if (!m) {
      pending.push(line);
      continue;
    }
    sawMarker = true;
    const idx = Number(m[1]) - 1;
    const text = pending.join(' ');
    pending = [];
    const bl = lines[idx];
    if (bl?.tolerant && GONE_RE.test(text)) continue;
    errors.push(`${bl ? `"${bl.cmd}"` : `line ${idx + 1}`}: ${text || 'failed'}`);
  }
  if (!sawMarker) {
    // ip could not even start the batch (e.g. the netns is gone): fine only if every line was a deletion.
    const text = pending.join(' ');
    if (!(lines.every((l) => l.tolerant) && GONE_RE.test(text))) errors.push(pending[0] ?? `exit code ${exitCode}`);
  }
  return errors;
}

// Runs `ip -force -n NS -batch -` for many namespaces in ONE spawned process. stdin: "@@ns NAME" lines,
// each followed by that namespace's batch lines, and "@@ipv6-off" to disable IPv6 in it first (before
// any link there comes up, so nothing autoconfigures; written inside the netns through nsenter, or
// `ip netns exec` where there is none). stdout: "@@ns NAME", then "@@sysrc N" after the sysctl writes,
// ip's messages, "@@rc N".
const MULTI_BATCH_SCRIPT = `
if command -v nsenter >/dev/null 2>&1; then
  inns() { f=$1; shift; nsenter --net="/run/netns/$f" "$@"; }
else
  inns() { f=$1; shift; ip netns exec "$f" "$@"; }
fi
run() {
  [ -n "$ns" ] || return 0
  echo "@@ns $ns"
  if [ -n "$v6off" ]; then
    inns "$ns" sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6' </dev/null 2>&1
    echo "@@sysrc $?"
  fi
  if [ -n "$buf" ]; then
    ip -force -n "$ns" -batch - 2>&1 <<EOB
$buf
EOB
    echo "@@rc $?"
  else
    echo "@@rc 0"
  fi
}
ns= buf= v6off=
while IFS= read -r line; do
  case $line in
    "@@ns "*) run; ns=\${line#@@ns }; buf= v6off= ;;
    "@@ipv6-off") v6off=1 ;;
    *) buf="$buf$line
" ;;
  esac
done
run
echo "@@end"
`;

/**
 * One `ip -n NS -batch` per namespace, all from one spawned shell, in order; IPv6 disabled first in the
 * namespaces of `ipv6Off`. Throws on the first real failure.
 */
async function runNetnsBatches(batches: Map<string, BatchLine[]>, ipv6Off: ReadonlySet<string> = new Set()): Promise<void> {
  const names = [...new Set([...batches.keys(), ...ipv6Off])];
  const todo = names.filter((ns) => (batches.get(ns)?.length ?? 0) > 0 || ipv6Off.has(ns));
  if (todo.length === 0) return;
  const input = todo
    .map((ns) => [`@@ns ${ns}`, ...(ipv6Off.has(ns) ? ['@@ipv6-off'] : []), ...(batches.get(ns) ?? []).map((l) => l.cmd)].join('\n') + '\n')
    .join('');
  const argv = ['sh', '-c', MULTI_BATCH_SCRIPT, 'qwamos-batch'];
  const r = await runResult(argv, { input });
  const failures: string[] = [];
  const seen = new Set<string>();
  let ns: string | undefined;
  let text: string[] = [];
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('@@ns ')) {
      ns = line.slice(5);
      text = [];
    } else if (line.startsWith('@@sysrc ') && ns !== undefined) {
      if (line !== '@@sysrc 0') failures.push(`disable IPv6 in ${ns}: ${text.join(' ').trim() || `exit code ${line.slice(8)}`}`);
      text = [];
    } else if (line.startsWith('@@rc ') && ns !== undefined) {
      seen.add(ns);
      const errs = batchErrors(batches.get(ns) ?? [], text.join('\n'), Number(line.slice(5)));
      for (const e of errs) failures.push(`ip -n ${ns} -batch: ${e}`);
      ns = undefined;
    } else if (ns !== undefined) text.push(line);
  }
  if (!r.stdout.includes('@@end') || todo.some((n) => !seen.has(n))) {
    const why = r.stderr.split('\n').find((l) => l.trim()) ?? `exit code ${r.exitCode}`;
    failures.unshift(`ip -n NS -batch (${todo.length} netns): ${why.trim()}`);
  }
  if (failures.length > 0) {
    const more = failures.length > 1 ? ` (and ${failures.length - 1} more)` : '';
    throw new CommandError(`${failures[0]}${more}`, argv, r.exitCode, r.stderr, r.stdout);
  }
}

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

/**
 * Carry out actions (from any number of Routes) in batches:
 *   1. host deletions          one `ip [-n HOST] -batch -`
 *   2. VM-side link deletions  one shell running `ip -n VMNS -batch -` per netns that has any (rare)
 *   3. netns del/add           one `ip -batch -`
 *   (  wait until the host ends of deleted netns' veths are gone: a few `ip -o link show` polls)
 *   4. host creations          one `ip [-n HOST] -batch -`
 *   5. VM-side configuration   one shell: per changed netns, IPv6 off (nsenter) when needed,
 *                              then `ip -n VMNS -batch -` (bridge, enslaving, links up, stray removal)
 * So a pass spawns at most ~5 processes from Node whatever the number of Routes.
 * Deletions tolerate objects that are already gone. Errors name the failing command.
 */
export async function applyNetActions(layout: NetLayout, actions: readonly NetAction[]): Promise<void> {
  checkLayout(layout);
  const hostDel: BatchLine[] = [];
  const vmDel = new Map<string, BatchLine[]>();
  const netnsLines: BatchLine[] = [];
  const hostAdd: BatchLine[] = [];
  const vmAdd = new Map<string, BatchLine[]>();
  const ipv6Off = new Set<string>();
  const vanishing: string[] = [];
  const nsOf = (x: { netns?: string }): string => {
    if (!x.netns || !NETNS_RE.test(x.netns)) throw new Error(`action without a valid netns: ${JSON.stringify(x)}`);
    return x.netns;
  };

  for (const act of actions) {
    switch (act.type) {
      case 'create-netns':
        netnsLines.push({ cmd: `netns add ${nsOf(act)}` });
        break;
      case 'delete-netns':
        netnsLines.push({ cmd: `netns del ${nsOf(act)}`, tolerant: true });
        if (act.hostIf) vanishing.push(act.hostIf);
        break;
      case 'disable-ipv6':
        ipv6Off.add(nsOf(act));
        break;
      case 'create-bridge':
        push(vmAdd, nsOf(act), { cmd: `link add ${act.bridge} type bridge forward_delay 0` });
        break;
      case 'set-master':
        push(vmAdd, nsOf(act), { cmd: `link set ${act.link} master ${act.bridge}` });
        break;
      case 'delete-vm-route': {
        const rt = act.route;
        const words = ['route del', rt.type, rt.dst, rt.dev ? `dev ${rt.dev}` : '', rt.metric !== undefined ? `metric ${rt.metric}` : '', 'table main'];
        push(vmAdd, nsOf(act), { cmd: words.filter(Boolean).join(' '), tolerant: true });
        break;
      }
      case 'create-veth':
        hostAdd.push({ cmd: `link add ${act.hostIf} type veth peer name ${act.vmIf} netns ${nsOf(act)}` });
        break;
      case 'delete-link':
        if (act.side === 'host') hostDel.push({ cmd: `link del ${act.link}`, tolerant: true });
        else push(vmDel, nsOf(act), { cmd: `link del ${act.link}`, tolerant: true });
        break;
      case 'link-up':
        if (act.side === 'host') hostAdd.push({ cmd: `link set ${act.link} up` });
        else push(vmAdd, nsOf(act), { cmd: `link set ${act.link} up` });
        break;
      case 'add-address':
        if (act.side === 'host') hostAdd.push({ cmd: `addr replace ${act.cidr} dev ${act.link}` });
        else push(vmAdd, nsOf(act), { cmd: `addr replace ${act.cidr} dev ${act.link}` });
        break;
      case 'delete-address':
        if (act.side === 'host') hostDel.push({ cmd: `addr del ${act.cidr} dev ${act.link}`, tolerant: true });
        else push(vmAdd, nsOf(act), { cmd: `addr del ${act.cidr} dev ${act.link}`, tolerant: true });
        break;
      case 'add-host-route':
        hostAdd.push({ cmd: `route replace ${act.dst} dev ${act.link}` });
        break;
      case 'delete-host-route':
        hostDel.push({ cmd: `route del ${act.dst} dev ${act.link}`, tolerant: true });
        break;
      default: {
        const never: never = act;
        throw new Error(`unknown net action ${JSON.stringify(never)}`);
      }
    }
  }
  // Safety net against injection through names: every token must be a plain word.
  for (const l of [...hostDel, ...netnsLines, ...hostAdd, ...[...vmDel.values(), ...vmAdd.values()].flat()]) {
    if (!/^[A-Za-z0-9 _.:/-]+$/.test(l.cmd)) throw new Error(`refusing ip batch line ${JSON.stringify(l.cmd)}`);
  }

  // VM-side lines in the order the kernel needs: lo, stray addresses and routes, the bridge, its ports,
  // links up.
  const rank = (cmd: string): number =>
    cmd.startsWith('link set lo ')
      ? 0
      : cmd.startsWith('addr del')
        ? 1
        : cmd.startsWith('route del')
          ? 2
          : cmd.startsWith('link add')
            ? 3
            : / master /.test(cmd)
              ? 4
              : cmd.startsWith('addr')
                ? 5
                : cmd.startsWith('link set')
                  ? 6
                  : 7;
  const hostRank = (cmd: string): number =>
    cmd.startsWith('link add') ? 0 : cmd.startsWith('link set') ? 1 : cmd.startsWith('addr') ? 2 : 3;

  const host = hostIpArgs(layout);
  await runBatch(host, hostDel);
  await runNetnsBatches(vmDel);
  // Deletions first so a name can be reused within the same batch.
  netnsLines.sort((x, y) => Number(!x.cmd.startsWith('netns del')) - Number(!y.cmd.startsWith('netns del')));
  await runBatch(['ip'], netnsLines);
  if (vanishing.length) await waitLinksGone(layout, vanishing);
  await runBatch(host, stableSort(hostAdd, hostRank));
  await runNetnsBatches(new Map([...vmAdd].map(([ns, lines]) => [ns, stableSort(lines, rank)])), ipv6Off);
}

/**
 * `ip netns del` returns before the kernel has destroyed the namespace's veths (~20 ms, batched): poll
 * the host netns until the named links are gone, so the caller sees the final state.
 */
async function waitLinksGone(layout: NetLayout, names: string[], timeoutMs = 5000): Promise<void> {
  const want = new Set(names);
  const deadline = Date.now() + timeoutMs;
  let delay = 10;
  for (;;) {
    await new Promise((r) => setTimeout(r, delay));
    const out = await run([...hostIpArgs(layout), '-o', 'link', 'show']);
    const left = out
      .split('\n')
      .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
      .filter((x): x is string => !!x && want.has(x));
    if (left.length === 0) return;
    if (Date.now() > deadline) throw new Error(`host links still present ${timeoutMs} ms after their netns was deleted: ${left.slice(0, 5).join(', ')}`);
    delay = Math.min(delay * 2, 100);
  }
}

function stableSort(lines: BatchLine[], rank: (cmd: string) => number): BatchLine[] {
  return lines
    .map((l, i) => ({ l, i, r: rank(l.cmd) }))
    .sort((a, b) => a.r - b.r || a.i - b.i)
    .map((x) => x.l);
}

/** Observe, plan and apply for a set of Routes; prunes every owned VM netns that is not declared. */
export async function reconcileRouteNets(layout: NetLayout, desired: readonly RouteNet[]): Promise<NetAction[]> {
  const actual = await observeRouteNets(layout);
  const want = new Map(desired.map((d) => [d.vm, d]));
  const actions: NetAction[] = [];
  for (const vm of new Set([...want.keys(), ...actual.keys()])) actions.push(...planRouteNet(layout, want.get(vm), actual.get(vm)));
  if (actions.length) await applyNetActions(layout, actions);
  return actions;
}

// ------------------------------------------------------------------------------------------------ tap

export interface TapSpec {
  /** The VM netns QEMU runs in (`ip netns exec <netns> qemu ...`). */
  netns: string;
  /** The tap's name, for `-netdev tap,ifname=<tap>,script=no,downscript=no`. */
  tap: string;
  /** The bridge in the VM netns the tap is a port of (the Route creates it). */
  bridge: string;
  /** `ip -n <netns> -batch` lines that create the tap as a port of the bridge, up. */
  create: string[];
  /** `ip -n <netns> -batch` lines that remove it. */
  delete: string[];
}

/** Pure: where and how the VM's tap lives. Throws when the names cannot be valid. */
export function tapSpec(prefix: string, vm: string): TapSpec {
  const n = derivedNames(prefix, vm);
  return {
    netns: n.netns,
    tap: n.tap,
    bridge: n.bridge,
    create: [`tuntap add dev ${n.tap} mode tap`, `link set ${n.tap} master ${n.bridge} up`],
    delete: [`link del ${n.tap}`],
  };
}

/** Make an existing tap a port of the VM's bridge, up (after the bridge was recreated, or a reused tap). */
export async function plugTap(layout: NetLayout, vm: string): Promise<void> {
  checkLayout(layout);
  const t = tapSpec(layout.prefix, vm);
  await run(['ip', '-n', t.netns, 'link', 'set', t.tap, 'master', t.bridge, 'up']);
}

/**
 * Create the VM's tap (owned by the VM controller) inside its netns, as a port of the Route's bridge,
 * up. Fails when the Route's netns or bridge does not exist yet, or the tap exists already.
 */
export async function createTap(layout: NetLayout, vm: string): Promise<string> {
  checkLayout(layout);
  const t = tapSpec(layout.prefix, vm);
  await runBatch(['ip', '-n', t.netns], t.create.map((cmd) => ({ cmd })));
  return t.tap;
}

/** Remove the VM's tap; fine if it is already gone. */
export async function deleteTap(layout: NetLayout, vm: string): Promise<void> {
  checkLayout(layout);
  const t = tapSpec(layout.prefix, vm);
  await runBatch(['ip', '-n', t.netns], t.delete.map((cmd) => ({ cmd, tolerant: true })));
}

/** Names of all netns in /run/netns (one `ip -j netns list`). */
export async function listNetns(): Promise<string[]> {
  const out = await run(['ip', '-j', 'netns', 'list']);
  if (!out.trim()) return [];
  return (JSON.parse(out) as { name: string }[]).map((x) => x.name);
}

// The ip driver for Routes: one network namespace per VM, a veth pair to the host side, Qubes-style
// point-to-point addressing. Observe is one process for the whole host, plan is pure, apply is batched.
//
// Layout of a Route for VM `vm` under prefix P (the host side lives in `hostNetns` when one is configured,
// in tests; in production it is the machine's own namespace):
//   VM netns  P-vm   with lo up, and (not for `isolated`) Pv-vm = ADDRESS/len, up, default via GATEWAY
//   host      Ph-vm = GATEWAY/32, up, route ADDRESS/32 dev Ph-vm
//   tap       Pt-vm  inside the VM netns, created by the VM controller (helpers below)
// `isolated` is the VM netns alone: no veth at all, nothing can leave.
import type { Action, FieldDiff } from '../controllers/contract.ts';
import { CommandError, run, runResult } from './exec.ts';
import { IFNAME_MAX as IFNAMSIZ, derivedNames as namesOf, maxVmNameLength, tooLongDerivedName, type DerivedNames } from '../resources/names.ts';

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
  /** linkinfo.info_kind, e.g. 'veth', 'tun'. */
  kind?: string;
  /** For a veth: the peer's ifindex (in the peer's namespace). */
  peerIfindex?: number;
}

export interface ObservedRouteNet {
  vm: string;
  netnsExists: boolean;
  /** lo up inside the VM netns. */
  loUp?: boolean;
  /** Pv-vm inside the VM netns. */
  vmIf?: ObservedLink;
  /** Ph-vm in the host netns. */
  hostIf?: ObservedLink;
  /** vmIf and hostIf are both veths and each other's peer. */
  paired: boolean;
  /** Default route inside the VM netns. */
  defaultGateway?: string;
  defaultDev?: string;
  /** Destinations of main-table routes via hostIf in the host netns ('10.8.0.2', '10.9.0.0/24'). */
  hostRoutes: string[];
  /** Pt-vm exists inside the VM netns (created by the VM controller). */
  tap?: { name: string; up: boolean };
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
  | (Base<'create-veth'> & { hostIf: string; vmIf: string; netns: string })
  /** netns is set when side = 'vm'. */
  | (Base<'delete-link'> & { side: Side; link: string; netns?: string })
  | (Base<'link-up'> & { side: Side; link: string; netns?: string })
  | (Base<'add-address'> & { side: Side; link: string; cidr: string; netns?: string })
  | (Base<'delete-address'> & { side: Side; link: string; cidr: string; netns?: string })
  | (Base<'set-default-route'> & { netns: string; gateway: string; link: string })
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
  linkinfo?: { info_kind?: string };
  addr_info?: IpAddrInfo[];
}
interface IpRoute {
  dst?: string;
  gateway?: string;
  dev?: string;
  table?: string;
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
  return link;
}

// One process for everything: the host netns's links+addresses and routes, then for every VM netns
// (found by prefix in /run/netns) its links+addresses and routes, as `ip -d -j -batch` (one JSON array
// per line) between marker lines. Names arrive as arguments, never inside the script text.
const OBSERVE_SCRIPT = `
p=$1 h=$2
shift 2
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
  ip -d -j -n "$ns" -batch - 2>/dev/null <<'EOB' || echo "@@fail"
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
      if (raw.ifname === 'lo') e.loUp = (raw.flags ?? []).includes('UP');
      else if (raw.ifname === names.vmIf) e.vmIf = toLink(raw);
      else if (raw.ifname === names.tap) e.tap = { name: names.tap, up: (raw.flags ?? []).includes('UP') };
    }
    const def = section.routes.find((rt) => rt.dst === 'default');
    if (def?.gateway) e.defaultGateway = def.gateway;
    if (def?.dev) e.defaultDev = def.dev;
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
 * Pure: the ordered actions that turn `actual` into `desired` (undefined = remove everything the VM's
 * Route created). Empty when in sync. Handles partial states (netns without veth, leftover host veth,
 * wrong addresses, links down, missing routes).
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
  const res = resource ?? desired?.resource ?? `Route/${vm}`;
  const n = derivedNames(layout.prefix, vm);
  const a: ObservedRouteNet = actual ?? { vm, netnsExists: false, paired: false, hostRoutes: [] };
  const acts: NetAction[] = [];
  const inNs = n.netns;

  // --- delete. Deleting the netns destroys a paired veth (the kernel does it in batches, far faster than
  // one `link del` each); an unpaired host-side leftover is deleted explicitly.
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

  // --- the VM netns
  let loUp = a.loUp === true;
  if (!a.netnsExists) {
    acts.push({ type: 'create-netns', resource: res, netns: inNs, describe: `create netns ${inNs}` });
    loUp = false;
  }
  if (!loUp) acts.push({ type: 'link-up', resource: res, side: 'vm', netns: inNs, link: 'lo', describe: `set lo up in ${inNs}` });

  const wantsVeth = desired.mode !== 'isolated';
  const vmIfPresent = a.netnsExists && !!a.vmIf;

  if (!wantsVeth) {
    if (a.hostIf) acts.push({ type: 'delete-link', resource: res, side: 'host', link: n.hostIf, describe: `delete link ${n.hostIf}` });
    if (vmIfPresent && !(a.hostIf && a.paired)) {
      acts.push({ type: 'delete-link', resource: res, side: 'vm', netns: inNs, link: n.vmIf, describe: `delete link ${n.vmIf} in ${inNs}` });
    }
    return acts;
  }

  if (!desired.address || !desired.gateway) {
    throw new Error(`${res}: mode ${desired.mode} needs an address and a gateway`);
  }
  const vmCidr = normCidr(desired.address);
  const vmIp = ipOf(vmCidr);
  const gw = desired.gateway.toLowerCase();
  const gwCidr = hostCidr(gw);

  // --- the veth pair
  const intact = a.netnsExists && a.paired && !!a.hostIf && !!a.vmIf;
  if (!intact) {
    if (a.hostIf) acts.push({ type: 'delete-link', resource: res, side: 'host', link: n.hostIf, describe: `delete link ${n.hostIf}` });
    if (vmIfPresent) acts.push({ type: 'delete-link', resource: res, side: 'vm', netns: inNs, link: n.vmIf, describe: `delete link ${n.vmIf} in ${inNs}` });
    acts.push({ type: 'create-veth', resource: res, hostIf: n.hostIf, vmIf: n.vmIf, netns: inNs, describe: `create veth ${n.hostIf} <-> ${n.vmIf} in ${inNs}` });
  }
  const hostIf: ObservedLink | undefined = intact ? a.hostIf : undefined;
  const vmIf: ObservedLink | undefined = intact ? a.vmIf : undefined;

  // --- host side: up, exactly the gateway address, exactly the route to the VM
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

  // --- VM side: up, exactly the address, default route via the gateway
  const vmAddrs = vmIf?.addresses ?? [];
  let vmAddrChanged = false;
  for (const c of vmAddrs) {
    if (c !== vmCidr) {
      acts.push({ type: 'delete-address', resource: res, side: 'vm', netns: inNs, link: n.vmIf, cidr: c, describe: `delete address ${c} from ${n.vmIf} in ${inNs}` });
      vmAddrChanged = true;
    }
  }
  if (!vmAddrs.includes(vmCidr)) {
    acts.push({ type: 'add-address', resource: res, side: 'vm', netns: inNs, link: n.vmIf, cidr: vmCidr, describe: `add address ${vmCidr} to ${n.vmIf} in ${inNs}` });
    vmAddrChanged = true;
  }
  if (!vmIf?.up) acts.push({ type: 'link-up', resource: res, side: 'vm', netns: inNs, link: n.vmIf, describe: `set ${n.vmIf} up in ${inNs}` });
  const defaultOk = !!vmIf && a.defaultGateway?.toLowerCase() === gw && a.defaultDev === n.vmIf;
  if (!defaultOk || vmAddrChanged || !vmIf?.up) {
    acts.push({ type: 'set-default-route', resource: res, netns: inNs, gateway: gw, link: n.vmIf, describe: `default route via ${gw} dev ${n.vmIf} in ${inNs}` });
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
  push('netns', n.netns, a?.netnsExists ? n.netns : '(none)');
  if (a?.netnsExists) push('lo', 'up', a.loUp ? 'up' : 'down');
  const wantsVeth = desired.mode !== 'isolated';
  const vethState = a?.hostIf && a.vmIf ? (a.paired ? 'paired' : 'unpaired') : a?.hostIf || a?.vmIf ? 'partial' : '(none)';
  push('veth', wantsVeth ? 'paired' : '(none)', vethState);
  if (!wantsVeth || !desired.address || !desired.gateway) return d;
  push('vmIf.up', 'true', String(!!a?.vmIf?.up));
  push('vmIf.addresses', normCidr(desired.address), (a?.vmIf?.addresses ?? []).join(',') || '(none)');
  push('hostIf.up', 'true', String(!!a?.hostIf?.up));
  push('hostIf.addresses', hostCidr(desired.gateway.toLowerCase()), (a?.hostIf?.addresses ?? []).join(',') || '(none)');
  push('defaultRoute', `via ${desired.gateway.toLowerCase()} dev ${n.vmIf}`, a?.defaultGateway ? `via ${a.defaultGateway} dev ${a.defaultDev ?? '?'}` : '(none)');
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
// each followed by that namespace's batch lines. stdout: "@@ns NAME", ip's messages, "@@rc N".
const MULTI_BATCH_SCRIPT = `
run() {
  [ -n "$ns" ] || return 0
  echo "@@ns $ns"
  ip -force -n "$ns" -batch - 2>&1 <<EOB
$buf
EOB
  echo "@@rc $?"
}
ns= buf=
while IFS= read -r line; do
  case $line in
    "@@ns "*) run; ns=\${line#@@ns }; buf= ;;
    *) buf="$buf$line
" ;;
  esac
done
run
echo "@@end"
`;

/** One `ip -n NS -batch` per namespace, all from one spawned shell, in order. Throws on the first real failure. */
async function runNetnsBatches(batches: Map<string, BatchLine[]>): Promise<void> {
  const todo = [...batches].filter(([, lines]) => lines.length > 0);
  if (todo.length === 0) return;
  const input = todo.map(([ns, lines]) => `@@ns ${ns}\n${lines.map((l) => l.cmd).join('\n')}\n`).join('');
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
    } else if (line.startsWith('@@rc ') && ns !== undefined) {
      seen.add(ns);
      const errs = batchErrors(batches.get(ns) ?? [], text.join('\n'), Number(line.slice(5)));
      for (const e of errs) failures.push(`ip -n ${ns} -batch: ${e}`);
      ns = undefined;
    } else if (ns !== undefined) text.push(line);
  }
  if (!r.stdout.includes('@@end') || todo.some(([n]) => !seen.has(n))) {
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
 *   5. VM-side configuration   one shell running `ip -n VMNS -batch -` per changed netns
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
      case 'set-default-route':
        push(vmAdd, nsOf(act), { cmd: `route replace default via ${act.gateway} dev ${act.link} onlink` });
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

  // VM-side lines in the order the kernel needs: lo, deletions, addresses, links up, routes.
  const rank = (cmd: string): number =>
    cmd.startsWith('link set lo') ? 0 : cmd.startsWith('addr del') ? 1 : cmd.startsWith('addr') ? 2 : cmd.startsWith('link set') ? 3 : 4;
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
  await runNetnsBatches(new Map([...vmAdd].map(([ns, lines]) => [ns, stableSort(lines, rank)])));
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

/** Create the VM's tap (owned by the VM controller) inside its netns, up. */
export async function createTap(layout: NetLayout, vm: string): Promise<string> {
  const n = derivedNames(layout.prefix, vm);
  await runBatch(['ip', '-n', n.netns], [{ cmd: `tuntap add dev ${n.tap} mode tap` }, { cmd: `link set ${n.tap} up` }]);
  return n.tap;
}

/** Remove the VM's tap; fine if it is already gone. */
export async function deleteTap(layout: NetLayout, vm: string): Promise<void> {
  const n = derivedNames(layout.prefix, vm);
  await runBatch(['ip', '-n', n.netns], [{ cmd: `link del ${n.tap}`, tolerant: true }]);
}

/** Names of all netns in /run/netns (one `ip -j netns list`). */
export async function listNetns(): Promise<string[]> {
  const out = await run(['ip', '-j', 'netns', 'list']);
  if (!out.trim()) return [];
  return (JSON.parse(out) as { name: string }[]).map((x) => x.name);
}

// The ip driver: runs `ip` and parses its output, generic over names and addresses. It knows network
// namespaces, links, addresses and routes; it knows nothing of Routes, resources or actions (the Route
// controller, src/controllers/route/, decides what to create; this driver carries it out in batches).
//
//   observeNetworks()  one process: the host netns' links and routes, and every named netns' links,
//                      routes and disable_ipv6 sysctls
//   applyIpChanges()   a few processes for any number of namespaces: host deletions, per-netns
//                      deletions, netns del/add, host creations, per-netns configuration
//   tap helpers        the VM's tap in its netns (used by the VM controller)
import { CommandError, run, runResult, type RunResult } from './exec.ts';
import { NETLINK_OBSERVE_PERL } from './netlink-observe.ts';
import { IFNAME_MAX as IFNAMSIZ, NETNS_RE, PREFIX_RE, derivedNames as namesOf, maxVmNameLength, tooLongDerivedName, type DerivedNames } from '../names.ts';

export type { DerivedNames };
export { maxVmNameLength };

export interface NetLayout {
  /** Prefix of every owned name (2-4 chars, see names.ts PREFIX_RE). */
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
  /** The link's ifalias (`ip link set X alias TEXT`), which survives anything but deletion. */
  alias?: string;
}

/** A main-table route, as `ip -j route show` prints it (host routes without /32, /128). */
export interface ObservedRoute {
  dst: string;
  dev?: string;
  /** Set when not unicast ('unreachable', 'blackhole', ...). */
  type?: string;
  metric?: number;
  /** 'kernel' for the routes the kernel adds with an address (they go with it). */
  protocol?: string;
}

/** What one network namespace holds. */
export interface NetnsView {
  links: ObservedLink[];
  routes: ObservedRoute[];
  /**
   * net.ipv6.conf.all and .default disable_ipv6 are both 1 (also true when the kernel has no IPv6).
   * Undefined when not read (the host side) or unreadable.
   */
  ipv6Disabled?: boolean;
}

export interface NetworkView {
  /** The host side (layout.hostNetns, or the machine's own namespace). */
  host: NetnsView;
  /** Each netns looked into, by name; undefined = it exists but could not be read (vanished meanwhile). */
  netns: Map<string, NetnsView | undefined>;
}

// ---------------------------------------------------------------------------------------------- names

const VM_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

function checkHostNetns(hostNetns: string | undefined): void {
  if (hostNetns !== undefined && !NETNS_RE.test(hostNetns)) throw new Error(`invalid host netns name ${JSON.stringify(hostNetns)}`);
}

function checkLayout(layout: NetLayout): void {
  if (!PREFIX_RE.test(layout.prefix)) throw new Error(`invalid qwamos prefix ${JSON.stringify(layout.prefix)}`);
  checkHostNetns(layout.hostNetns);
}

/** Names qwamos derives for a VM (see names.ts). Throws when they cannot be valid interface names. */
export function derivedNames(prefix: string, vm: string): DerivedNames {
  if (!PREFIX_RE.test(prefix)) throw new Error(`invalid qwamos prefix ${JSON.stringify(prefix)}`);
  if (!VM_RE.test(vm)) throw new Error(`invalid VM name ${JSON.stringify(vm)}`);
  const tooLong = tooLongDerivedName(prefix, vm);
  if (tooLong) throw new Error(`VM name ${JSON.stringify(vm)} is too long: interface ${tooLong} exceeds ${IFNAMSIZ} bytes`);
  return namesOf(prefix, vm);
}

/** A CIDR in the form `ip` prints it: lowercase, with a prefix length. */
export function normCidr(cidr: string): string {
  const [ip, len] = cidr.split('/');
  const host = ip!.toLowerCase();
  return `${host}/${len ?? (host.includes(':') ? '128' : '32')}`;
}

/** Route destinations as `ip route` prints them: host routes without the /32 (/128). */
function normDst(dst: string): string {
  const d = dst.toLowerCase();
  return d.endsWith('/32') || d.endsWith('/128') ? d.split('/')[0]! : d;
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
  ifalias?: string;
  linkinfo?: { info_kind?: string };
  addr_info?: IpAddrInfo[];
}
interface IpRoute {
  dst?: string;
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
  const link: ObservedLink = { name: raw.ifname ?? '', ifindex: raw.ifindex ?? -1, up: (raw.flags ?? []).includes('UP'), addresses };
  if (raw.linkinfo?.info_kind) link.kind = raw.linkinfo.info_kind;
  if (raw.link_index !== undefined) link.peerIfindex = raw.link_index;
  if (raw.master) link.master = raw.master;
  if (raw.ifalias) link.alias = raw.ifalias;
  return link;
}

function toRoutes(raw: IpRoute[]): ObservedRoute[] {
  return raw
    .filter((rt) => rt.dst && (rt.table === undefined || rt.table === 'main'))
    .map((rt) => ({
      dst: normDst(rt.dst!),
      ...(rt.dev ? { dev: rt.dev } : {}),
      ...(rt.type && rt.type !== 'unicast' ? { type: rt.type } : {}),
      ...(rt.metric !== undefined ? { metric: rt.metric } : {}),
      ...(rt.protocol ? { protocol: rt.protocol } : {}),
    }));
}

// The fallback observer (where perl or setns(2) is missing; netlink-observe.ts is the usual one, printing
// the same): the host netns' links+addresses and routes, then for every netns asked for (by name, or
// every /run/netns entry starting with a given text) its disable_ipv6 sysctls (all, default; "@@ipv6 A
// B", or "@@ipv6 none" without kernel IPv6) and its links+addresses and routes, as `ip -d -j -batch` (one
// JSON array per line), between marker lines. Inside a netns it is one process chain per netns: nsenter
// (or `ip netns exec` where there is none) -> sh reading the sysctls with the `read` builtin -> exec ip.
// Names arrive as arguments, never inside the script text.
const OBSERVE_SCRIPT = `
h=$1 glob=$2
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
if [ -n "$glob" ]; then set -- /run/netns/"$glob"*; else for n; do shift; set -- "$@" /run/netns/"$n"; done; fi
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

function toView(s: Section): NetnsView {
  const view: NetnsView = { links: s.links.map(toLink), routes: toRoutes(s.routes) };
  const v6 = s.ipv6;
  if (v6?.[0] === 'none') view.ipv6Disabled = true;
  else if (v6 && v6.length === 2) view.ipv6Disabled = v6.every((x) => x === '1');
  return view;
}

export interface ObserveTarget {
  /** The host side's netns (tests); undefined = the machine's own namespace. */
  hostNetns?: string;
  /** Look into every netns whose name starts with this text (e.g. 'qw-')... */
  netnsStartingWith?: string;
  /** ...or into exactly these (missing ones are left out of the result). */
  netns?: readonly string[];
}

/** 'netlink': one perl process entering every netns itself; 'ip': one sh, with nsenter + ip per netns. */
export type Observer = 'netlink' | 'ip';

/** Whether perl could run the netlink observer here (undefined until first tried). */
let netlinkObserverWorks: boolean | undefined;

/** The observe output for [hostNetns, start, ...names]: netlink where it runs, else the ip script. */
async function runObserver(args: string[], wanted: Observer | undefined): Promise<RunResult> {
  if (wanted !== 'ip' && netlinkObserverWorks !== false) {
    try {
      const r = await runResult(['perl', '-e', NETLINK_OBSERVE_PERL, ...args]);
      if (!r.stdout.startsWith('@@unsupported')) {
        netlinkObserverWorks = true;
        return r;
      }
    } catch (err) {
      // Only a missing perl falls back; anything else (a timeout) is the observation's failure.
      if (!(err instanceof CommandError && err.exitCode === undefined && /ENOENT/.test(err.message))) throw err;
    }
    if (wanted === 'netlink') throw new Error('the netlink observer cannot run here (no perl, or no setns for this architecture)');
    netlinkObserverWorks = false;
  }
  return runResult(['sh', '-c', OBSERVE_SCRIPT, 'qwamos-observe', ...args]);
}

/**
 * One look at the host side and the chosen namespaces, in ONE spawned process whatever their number.
 * Throws when the host side cannot be read; a namespace that vanishes meanwhile maps to undefined.
 */
export async function observeNetworks(target: ObserveTarget, opts: { observer?: Observer } = {}): Promise<NetworkView> {
  checkHostNetns(target.hostNetns);
  const glob = target.netnsStartingWith ?? '';
  if (glob && !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(glob)) throw new Error(`invalid netns name start ${JSON.stringify(glob)}`);
  const names = glob ? [] : [...(target.netns ?? [])];
  for (const n of names) if (!NETNS_RE.test(n)) throw new Error(`invalid netns name ${JSON.stringify(n)}`);
  if (!glob && names.length === 0 && target.netns === undefined) throw new Error('observeNetworks: say which namespaces to look into');
  const r = await runObserver([target.hostNetns ?? '', glob, ...names], opts.observer);
  const out = parseObserveOutput(r.stdout);
  if (!out.complete || !out.host || out.host.failed) {
    const why = r.stderr.split('\n').find((l) => l.trim()) ?? `exit code ${r.exitCode}`;
    const where = target.hostNetns ? `host netns ${target.hostNetns}` : 'host';
    throw new CommandError(`observe network in ${where}: ${why.trim()}`, ['qwamos-observe'], r.exitCode, r.stderr, r.stdout);
  }
  const netns = new Map<string, NetnsView | undefined>();
  for (const [name, section] of out.netns) netns.set(name, section.failed ? undefined : toView(section));
  return { host: toView(out.host), netns };
}

/** The interface of a namespace's default route (lowest metric), if any. */
export function defaultRouteDev(view: NetnsView): string | undefined {
  const best = view.routes.filter((r) => r.dst === 'default' && r.dev && !r.type).sort((a, b) => (a.metric ?? 0) - (b.metric ?? 0))[0];
  return best?.dev;
}

/** The interface of the host netns' default route (lowest metric), if any. */
export async function detectUplink(hostNetns?: string): Promise<string | undefined> {
  checkHostNetns(hostNetns);
  const out = await run(['ip', '-j', ...(hostNetns ? ['-n', hostNetns] : []), 'route', 'show', 'default']);
  if (!out.trim()) return undefined;
  const routes = JSON.parse(out) as { dev?: string; metric?: number }[];
  const best = routes.filter((r) => r.dev).sort((a, b) => (a.metric ?? 0) - (b.metric ?? 0))[0];
  return best?.dev;
}

const IFNAME_RE = /^[A-Za-z0-9_.@-]{1,15}$/;

/** A configured uplink, checked. */
export function checkedUplink(configured: string): string {
  if (!IFNAME_RE.test(configured)) throw new Error(`invalid uplink interface name ${JSON.stringify(configured)}`);
  return configured;
}

/** The configured uplink, else the default route's. */
export async function resolveUplink(hostNetns?: string, configured?: string): Promise<string | undefined> {
  return configured ? checkedUplink(configured) : detectUplink(hostNetns);
}

// ---------------------------------------------------------------------------------------------- apply

/** One line of an `ip -batch` input. */
export interface IpLine {
  cmd: string;
  /** Failure is fine if stderr says the thing is already gone (deletions). */
  tolerant?: boolean;
}

/**
 * Host changes in the order they are carried out, each step one spawned process:
 *   1. hostDelete       `ip [-n HOST] -force -batch -`
 *   2. netnsDelete      per netns `ip -n NS -force -batch -`, all from one shell
 *   3. netns            `ip -force -batch -` (netns del before netns add, so a name can be reused)
 *   (  waitGone: poll until these host links are gone: a deleted netns' veth ends go ~20 ms later)
 *   4. hostCreate       `ip [-n HOST] -force -batch -`
 *   5. netnsCreate      per netns, from one shell: IPv6 off first for those in ipv6Off (before any
 *                       link there comes up), then `ip -n NS -force -batch -`
 * Lines run in the order given. Throws on the first step with a real failure, naming the line.
 */
export interface IpChanges {
  hostDelete?: IpLine[];
  netnsDelete?: Map<string, IpLine[]>;
  netns?: IpLine[];
  waitGone?: string[];
  hostCreate?: IpLine[];
  netnsCreate?: Map<string, IpLine[]>;
  ipv6Off?: ReadonlySet<string>;
}

const GONE_RE = /Cannot find device|No such file or directory|No such process|Cannot assign requested address|does not exist/i;
const SAFE_LINE_RE = /^[A-Za-z0-9 _.:/-]+$/;

export async function applyIpChanges(hostNetns: string | undefined, changes: IpChanges): Promise<void> {
  checkHostNetns(hostNetns);
  const perNetns = [...(changes.netnsDelete ?? new Map()).entries(), ...(changes.netnsCreate ?? new Map()).entries()];
  for (const [ns] of perNetns) if (!NETNS_RE.test(ns)) throw new Error(`invalid netns name ${JSON.stringify(ns)}`);
  for (const ns of changes.ipv6Off ?? []) if (!NETNS_RE.test(ns)) throw new Error(`invalid netns name ${JSON.stringify(ns)}`);
  // Safety net against injection through names: every token must be a plain word.
  for (const l of [...(changes.hostDelete ?? []), ...(changes.netns ?? []), ...(changes.hostCreate ?? []), ...perNetns.flatMap(([, lines]) => lines)]) {
    if (!SAFE_LINE_RE.test(l.cmd)) throw new Error(`refusing ip batch line ${JSON.stringify(l.cmd)}`);
  }
  const host = hostNetns ? ['ip', '-n', hostNetns] : ['ip'];
  await runBatch(host, changes.hostDelete ?? []);
  await runNetnsBatches(changes.netnsDelete ?? new Map());
  const netnsLines = [...(changes.netns ?? [])].sort((x, y) => Number(!x.cmd.startsWith('netns del')) - Number(!y.cmd.startsWith('netns del')));
  await runBatch(['ip'], netnsLines);
  if (changes.waitGone?.length) await waitLinksGone(hostNetns, changes.waitGone);
  await runBatch(host, changes.hostCreate ?? []);
  await runNetnsBatches(changes.netnsCreate ?? new Map(), changes.ipv6Off);
}

/** Run `ip ... -force -batch -` and fail unless every failing line is tolerant and its object gone. */
async function runBatch(ipArgs: string[], lines: IpLine[]): Promise<void> {
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

/** The failures of an `ip -force -batch` run that matter. ip prints each failure's message, then "Command failed -:N". */
function batchErrors(lines: IpLine[], stderr: string, exitCode: number): string[] {
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
// each followed by that namespace's batch lines, and "@@ipv6-off" to disable IPv6 in it first (written
// inside the netns through nsenter, or `ip netns exec` where there is none; with batch lines too, the same
// process chain then execs ip there). stdout: "@@ns NAME", then "@@sysrc N" after the sysctl writes,
// ip's messages, "@@rc N".
const MULTI_BATCH_SCRIPT = `
V6OFF='echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6'
if command -v nsenter >/dev/null 2>&1; then
  inns() { f=$1; shift; nsenter --net="/run/netns/$f" "$@"; }
else
  inns() { f=$1; shift; ip netns exec "$f" "$@"; }
fi
run() {
  [ -n "$ns" ] || return 0
  echo "@@ns $ns"
  if [ -n "$v6off" ] && [ -n "$buf" ]; then
    # One process chain for both: the sysctls, then exec ip inside the same netns.
    inns "$ns" sh -c "$V6OFF"'; echo "@@sysrc $?"; exec ip -force -batch -' 2>&1 <<EOB
$buf
EOB
    echo "@@rc $?"
    return 0
  fi
  if [ -n "$v6off" ]; then
    inns "$ns" sh -c "$V6OFF" </dev/null 2>&1
    echo "@@sysrc $?"
  fi
  if [ -n "$buf" ]; then
    # Through nsenter, not ip -n: ip -n copies the mount table (every /run/netns mount) into a new mount
    # namespace each time, which grows with the number of netns.
    inns "$ns" ip -force -batch - 2>&1 <<EOB
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

async function runNetnsBatches(batches: Map<string, IpLine[]>, ipv6Off: ReadonlySet<string> = new Set()): Promise<void> {
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

/**
 * `ip netns del` returns before the kernel has destroyed the namespace's veths (~20 ms, batched): poll
 * the host netns until the named links are gone, so the caller sees the final state.
 */
async function waitLinksGone(hostNetns: string | undefined, names: string[], timeoutMs = 5000): Promise<void> {
  const want = new Set(names);
  const deadline = Date.now() + timeoutMs;
  let delay = 10;
  for (;;) {
    await new Promise((r) => setTimeout(r, delay));
    const out = await run(['ip', ...(hostNetns ? ['-n', hostNetns] : []), '-o', 'link', 'show']);
    const left = out
      .split('\n')
      .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
      .filter((x): x is string => !!x && want.has(x));
    if (left.length === 0) return;
    if (Date.now() > deadline) throw new Error(`host links still present ${timeoutMs} ms after their netns was deleted: ${left.slice(0, 5).join(', ')}`);
    delay = Math.min(delay * 2, 100);
  }
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

/** What the VM controller reads of a VM's netns: whether it exists, and its tap. */
export interface ObservedVmCable {
  vm: string;
  netnsExists: boolean;
  /** The tap `<prefix>t-<vm>` inside the VM netns, if there. */
  tap?: { name: string; up: boolean; master?: string };
}

/**
 * The VMs' netns and taps (for the VM controller), in one process. Keyed by VM name; VMs whose netns
 * does not exist are left out.
 */
export async function observeRouteNets(layout: NetLayout, vms: readonly string[]): Promise<Map<string, ObservedVmCable>> {
  checkLayout(layout);
  const names = vms.map((vm) => derivedNames(layout.prefix, vm));
  const view = await observeNetworks({ ...(layout.hostNetns ? { hostNetns: layout.hostNetns } : {}), netns: names.map((n) => n.netns) });
  const out = new Map<string, ObservedVmCable>();
  vms.forEach((vm, i) => {
    const n = names[i]!;
    if (!view.netns.has(n.netns)) return;
    const tap = view.netns.get(n.netns)?.links.find((l) => l.name === n.tap);
    out.set(vm, { vm, netnsExists: true, ...(tap ? { tap: { name: tap.name, up: tap.up, ...(tap.master ? { master: tap.master } : {}) } } : {}) });
  });
  return out;
}

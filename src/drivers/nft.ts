// The nft driver for the `direct` mode: IPv4 forwarding on the host side and one masquerade rule per
// direct Route, in a table qwamos owns (`table ip <prefix>_qwamos`, `qwamos` for the default prefix).
// The table's content is replaced in ONE `nft -f -` transaction; no other table is ever touched.
import { readFile, writeFile } from 'node:fs/promises';
import { CommandError, run, runResult } from './exec.ts';
import type { NetLayout } from './netns.ts';

export interface NatLayout extends NetLayout {
  /** The interface direct traffic leaves by (env QWAMOS_UPLINK, or detectUplink()). */
  uplink: string;
}

export interface DirectAddress {
  /** 'Route/<name>', written as the rule's comment. */
  resource: string;
  /** The VM's IPv4 address (no prefix length). */
  ip: string;
}

export interface ObservedNatRule {
  chain: string;
  handle: number;
  ip?: string;
  oifname?: string;
  comment?: string;
  /** The rule has exactly qwamos' masquerade shape. */
  recognized: boolean;
}

export interface ObservedNat {
  table: string;
  tableExists: boolean;
  /** Source addresses of recognized masquerade rules. */
  masquerade: Set<string>;
  rules: ObservedNatRule[];
  /** Chains by name with their hook and policy. */
  chains: Map<string, { type?: string; hook?: string; prio?: number; policy?: string }>;
  /** net.ipv4.ip_forward in the host netns. */
  forwarding: boolean;
}

const IFNAME_RE = /^[A-Za-z0-9_.@-]{1,15}$/;
const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const COMMENT_RE = /^[A-Za-z0-9/._-]{1,128}$/;
const PREFIX_RE = /^[a-z][a-z0-9]{1,3}$/;
const NETNS_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** The nft table qwamos owns under a prefix. */
export function natTableName(prefix: string): string {
  if (!PREFIX_RE.test(prefix)) throw new Error(`invalid qwamos prefix ${JSON.stringify(prefix)}`);
  return prefix === 'qw' ? 'qwamos' : `${prefix}_qwamos`;
}

function checkHostNetns(hostNetns: string | undefined): void {
  if (hostNetns !== undefined && !NETNS_RE.test(hostNetns)) throw new Error(`invalid host netns name ${JSON.stringify(hostNetns)}`);
}

function checkUplink(uplink: string): void {
  if (!IFNAME_RE.test(uplink)) throw new Error(`invalid uplink interface name ${JSON.stringify(uplink)}`);
}

function normalize(list: readonly DirectAddress[]): DirectAddress[] {
  const byIp = new Map<string, DirectAddress>();
  for (const d of list) {
    if (!IPV4_RE.test(d.ip)) throw new Error(`${d.resource}: not an IPv4 address: ${JSON.stringify(d.ip)}`);
    if (!COMMENT_RE.test(d.resource)) throw new Error(`invalid resource name for an nft comment: ${JSON.stringify(d.resource)}`);
    const prev = byIp.get(d.ip);
    if (prev && prev.resource !== d.resource) throw new Error(`${d.resource} and ${prev.resource} both use ${d.ip}`);
    byIp.set(d.ip, d);
  }
  return [...byIp.values()].sort((a, b) => a.resource.localeCompare(b.resource) || a.ip.localeCompare(b.ip));
}

/** Pure: the full text of the qwamos table. */
export function renderNatTable(table: string, uplink: string, list: readonly DirectAddress[]): string {
  checkUplink(uplink);
  const rules = normalize(list).map((d) => `    ip saddr ${d.ip} oifname "${uplink}" masquerade comment "${d.resource}"`);
  return [
    `table ip ${table} {`,
    `  chain postrouting {`,
    `    type nat hook postrouting priority srcnat; policy accept;`,
    ...rules,
    `  }`,
    `  chain forward {`,
    `    type filter hook forward priority 0; policy accept;`,
    `  }`,
    `}`,
  ].join('\n');
}

/** Pure: the one transaction syncNat runs (create-if-missing, delete, recreate; or just delete). */
export function renderNatTransaction(table: string, uplink: string, list: readonly DirectAddress[]): string {
  const head = `table ip ${table} {}\ndelete table ip ${table}\n`;
  return list.length === 0 ? head : `${head}${renderNatTable(table, uplink, list)}\n`;
}

// ---------------------------------------------------------------------------------------------- observe

// Reads ip_forward (a shell builtin, no extra process) and lists the table, in the host netns.
const OBSERVE_SCRIPT = `
read f </proc/sys/net/ipv4/ip_forward
echo "@@forward $f"
nft -j list table ip "$1"
rc=$?
echo
echo "@@rc $rc"
`;

interface NftRuleJson {
  chain?: string;
  handle?: number;
  comment?: string;
  expr?: unknown[];
}

function parseRule(r: NftRuleJson): ObservedNatRule {
  const rule: ObservedNatRule = { chain: r.chain ?? '', handle: r.handle ?? -1, recognized: false };
  if (r.comment !== undefined) rule.comment = r.comment;
  const expr = r.expr ?? [];
  let masq = false;
  let other = false;
  for (const e of expr as Record<string, any>[]) {
    const m = e.match;
    if (m && m.op === '==' && m.left?.payload?.protocol === 'ip' && m.left.payload.field === 'saddr' && typeof m.right === 'string') rule.ip = m.right;
    else if (m && m.op === '==' && m.left?.meta?.key === 'oifname' && typeof m.right === 'string') rule.oifname = m.right;
    else if ('masquerade' in e && (e.masquerade === null || (typeof e.masquerade === 'object' && Object.keys(e.masquerade ?? {}).length === 0))) masq = true;
    else other = true;
  }
  rule.recognized = rule.chain === 'postrouting' && masq && !other && expr.length === 3 && !!rule.ip && !!rule.oifname;
  return rule;
}

/** One process: is the table there, which masquerade rules does it hold, is forwarding on. */
export async function observeNat(layout: NetLayout & { uplink?: string }): Promise<ObservedNat> {
  checkHostNetns(layout.hostNetns);
  const table = natTableName(layout.prefix);
  const r = await runResult(['sh', '-c', OBSERVE_SCRIPT, 'qwamos-nat', table], layout.hostNetns ? { netns: layout.hostNetns } : {});
  const fwd = /^@@forward (\d+)/m.exec(r.stdout);
  const rc = /^@@rc (\d+)/m.exec(r.stdout);
  const where = layout.hostNetns ? ` in netns ${layout.hostNetns}` : '';
  if (!fwd || !rc) {
    const why = r.stderr.split('\n').find((l) => l.trim()) ?? `exit code ${r.exitCode}`;
    throw new CommandError(`observe nft table ${table}${where}: ${why.trim()}`, ['nft', '-j', 'list', 'table', 'ip', table], r.exitCode, r.stderr, r.stdout);
  }
  const result: ObservedNat = { table, tableExists: false, masquerade: new Set(), rules: [], chains: new Map(), forwarding: fwd[1] === '1' };
  if (rc[1] !== '0') {
    if (/No such file or directory/.test(r.stderr)) return result;
    const why = r.stderr.split('\n').find((l) => l.trim()) ?? `exit code ${rc[1]}`;
    throw new CommandError(`nft -j list table ip ${table}${where}: ${why.trim()}`, ['nft', '-j', 'list', 'table', 'ip', table], Number(rc[1]), r.stderr, r.stdout);
  }
  const jsonLine = r.stdout.split('\n').find((l) => l.trimStart().startsWith('{'));
  if (!jsonLine) throw new Error(`nft -j list table ip ${table}${where}: no JSON output`);
  const doc = JSON.parse(jsonLine) as { nftables?: Record<string, any>[] };
  for (const item of doc.nftables ?? []) {
    if (item.table) result.tableExists = true;
    else if (item.chain) {
      const c = item.chain;
      result.chains.set(c.name, { type: c.type, hook: c.hook, prio: c.prio, policy: c.policy });
    } else if (item.rule) {
      const rule = parseRule(item.rule as NftRuleJson);
      result.rules.push(rule);
      if (rule.recognized && rule.ip) result.masquerade.add(rule.ip);
    }
  }
  return result;
}

/**
 * Pure: does the observed table equal what syncNat would write (forwarding on, both chains, exactly one
 * masquerade rule per address via `uplink`, nothing else)? With an empty list: no table at all.
 */
export function natInSync(observed: ObservedNat, uplink: string, list: readonly DirectAddress[]): boolean {
  const want = normalize(list);
  if (want.length === 0) return !observed.tableExists;
  if (!observed.tableExists || !observed.forwarding) return false;
  const post = observed.chains.get('postrouting');
  const fwd = observed.chains.get('forward');
  if (observed.chains.size !== 2 || !post || !fwd) return false;
  if (post.type !== 'nat' || post.hook !== 'postrouting' || post.prio !== 100 || post.policy !== 'accept') return false;
  if (fwd.type !== 'filter' || fwd.hook !== 'forward' || fwd.prio !== 0 || fwd.policy !== 'accept') return false;
  if (observed.rules.length !== want.length) return false;
  const have = new Map(observed.rules.map((r) => [r.ip ?? '', r]));
  return want.every((d) => {
    const r = have.get(d.ip);
    return !!r && r.recognized && r.oifname === uplink && r.comment === d.resource;
  });
}

// ------------------------------------------------------------------------------------------------- sync

/**
 * Make the qwamos table hold exactly one masquerade rule per direct address, in one `nft -f -`
 * transaction, and turn IPv4 forwarding on in the host netns (in production: the machine's). An empty
 * list deletes the table; forwarding is then left as it is (other software may rely on it).
 */
export async function syncNat(layout: NatLayout, list: readonly DirectAddress[]): Promise<void> {
  checkHostNetns(layout.hostNetns);
  checkUplink(layout.uplink);
  const table = natTableName(layout.prefix);
  const text = renderNatTransaction(table, layout.uplink, list);
  if (list.length === 0) {
    await run(['nft', '-f', '-'], { input: text, ...(layout.hostNetns ? { netns: layout.hostNetns } : {}) });
    return;
  }
  if (layout.hostNetns) {
    // One process: forwarding and the transaction, inside the host netns.
    await run(['sh', '-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward && exec nft -f -'], { input: text, netns: layout.hostNetns });
  } else {
    const path = '/proc/sys/net/ipv4/ip_forward';
    if ((await readFile(path, 'utf8')).trim() !== '1') await writeFile(path, '1\n');
    await run(['nft', '-f', '-'], { input: text });
  }
}

/** Observe, and sync only when the table differs. Returns whether it wrote anything. */
export async function reconcileNat(layout: NatLayout, list: readonly DirectAddress[]): Promise<boolean> {
  const observed = await observeNat(layout);
  if (natInSync(observed, layout.uplink, list)) return false;
  await syncNat(layout, list);
  return true;
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

/** The configured uplink, else the default route's. */
export async function resolveUplink(hostNetns?: string, configured?: string): Promise<string | undefined> {
  if (configured) {
    checkUplink(configured);
    return configured;
  }
  return detectUplink(hostNetns);
}

// The `direct` mode's NAT, as data: qwamos' nft table (`table ip <prefix>_qwamos`, `qwamos` for the
// default prefix) compiled from every direct Route of the world and the uplink, and compared with the
// observed table object by object. Anything in the table that the compiled table does not hold (a
// changed chain policy, hook or priority, an extra rule, chain or set) is drift. Pure.
import type { NftChain, NftRule, NftTableContent, ObservedNftTable } from '../../drivers/nft.ts';
import { PREFIX_RE } from '../../names.ts';
import { keyOf, type ObjectKey } from '../../resources/keys.ts';
import type { StoredResource } from '../../store/store.ts';
import type { ObservedNat } from './observe.ts';

export const NAT_FAMILY = 'ip';

/** The nft table qwamos owns under a prefix. */
export function natTableName(prefix: string): string {
  if (!PREFIX_RE.test(prefix)) throw new Error(`invalid qwamos prefix ${JSON.stringify(prefix)}`);
  return prefix === 'qw' ? 'qwamos' : `${prefix}_qwamos`;
}

/** The table's chains: masquerade on the way out; forward accepts (a placeholder no one may tighten). */
export const NAT_CHAINS: readonly NftChain[] = [
  { name: 'postrouting', type: 'nat', hook: 'postrouting', prio: 100, policy: 'accept' },
  { name: 'forward', type: 'filter', hook: 'forward', prio: 0, policy: 'accept' },
];

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const IFNAME_RE = /^[A-Za-z0-9_.@-]{1,15}$/;

/** The IP of a CIDR ('10.8.0.2/24' -> '10.8.0.2'). */
export function ipOf(cidr: string): string {
  return cidr.split('/')[0]!;
}

/** The masquerade rule of one direct Route, exactly as `nft -j` lists it. */
export function masqueradeRule(ip: string, uplink: string, resource: ObjectKey): NftRule {
  if (!IPV4_RE.test(ip)) throw new Error(`${resource}: not an IPv4 address: ${JSON.stringify(ip)}`);
  if (!IFNAME_RE.test(uplink)) throw new Error(`invalid uplink interface name ${JSON.stringify(uplink)}`);
  return {
    chain: 'postrouting',
    comment: resource,
    expr: [
      { match: { op: '==', left: { payload: { protocol: 'ip', field: 'saddr' } }, right: ip } },
      { match: { op: '==', left: { meta: { key: 'oifname' } }, right: uplink } },
      { masquerade: null },
    ],
  };
}

/** The masquerade rule a Route wants, or undefined (not direct, or no address). */
function wantedRule(r: StoredResource<'Route'>, uplink: string): NftRule | undefined {
  return r.spec.mode === 'direct' && r.spec.address ? masqueradeRule(ipOf(r.spec.address), uplink, keyOf(r)) : undefined;
}

/**
 * The whole table for these Routes (the world's, not being deleted), sorted by resource; undefined
 * when none is direct (then the table must not exist). Two Routes with one address is an error.
 */
export function compileNatTable(routes: readonly StoredResource<'Route'>[], uplink: string): NftTableContent | undefined {
  const byIp = new Map<string, ObjectKey>();
  const rules: NftRule[] = [];
  for (const r of [...routes].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))) {
    const rule = wantedRule(r, uplink);
    if (!rule) continue;
    const ip = ipOf(r.spec.address!);
    const other = byIp.get(ip);
    if (other) throw new Error(`${keyOf(r)} and ${other} both use ${ip}`);
    byIp.set(ip, keyOf(r));
    rules.push(rule);
  }
  return rules.length ? { chains: NAT_CHAINS.map((c) => ({ ...c })), rules } : undefined;
}

/** Data equality, independent of key order. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    return `{${entries.sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value ?? null);
}

const ruleKey = (r: NftRule): string => canonical({ chain: r.chain, comment: r.comment, expr: r.expr });

/** One line for a rule in messages. */
export function describeRule(r: NftRule): string {
  const e = r.expr as { match?: { left?: { payload?: { field?: string }; meta?: { key?: string } }; right?: unknown } }[];
  const words = e.map((x) => {
    if (x.match?.left?.payload?.field === 'saddr') return `ip saddr ${String(x.match.right)}`;
    if (x.match?.left?.meta?.key === 'oifname') return `oifname ${String(x.match.right)}`;
    return Object.keys(x)[0] ?? '?';
  });
  return `${r.chain}: ${words.join(' ')}${r.comment ? ` comment ${r.comment}` : ''}`;
}

function describeChain(c: NftChain): string {
  return `chain ${c.name} (${c.type ?? 'regular'} hook ${c.hook ?? '-'} prio ${c.prio ?? '-'} policy ${c.policy ?? '-'})`;
}

/** What is wrong with the table's frame: chains other than compiled, sets or other objects. */
function frameProblems(table: ObservedNftTable): string[] {
  const problems: string[] = [];
  const want = new Map(NAT_CHAINS.map((c) => [c.name, c]));
  for (const c of table.chains) {
    const w = want.get(c.name);
    if (!w) problems.push(`foreign ${describeChain(c)}`);
    else if (canonical(c) !== canonical(w)) problems.push(`${describeChain(c)}, want ${describeChain(w)}`);
  }
  for (const w of NAT_CHAINS) if (!table.chains.some((c) => c.name === w.name)) problems.push(`chain ${w.name} missing`);
  for (const o of table.others) problems.push(`foreign ${o.kind} ${o.name}`);
  return problems;
}

/**
 * What differs in qwamos' NAT from what this Route needs, one line each (empty = in sync for it):
 *  - a Route that wants NAT: forwarding on, the table's frame exactly as compiled, its own rule exactly
 *    once via the uplink, and no rule that is not some Route's compiled rule (an extra copy, a hand-made
 *    rule, a rule via an old uplink);
 *  - any other Route (not direct, or being deleted): no rule of its own left.
 * Rules of other Routes in the world (also ones being deleted: their own pass removes them) are not
 * this Route's business, nor is one of them missing.
 */
export function natProblems(route: StoredResource<'Route'>, nat: ObservedNat, uplink: string | undefined, all: readonly StoredResource[]): string[] {
  const key = keyOf(route);
  const deleting = Boolean(route.deletionRequestedAt);
  const own = !deleting && uplink ? wantedRule(route, uplink) : undefined;
  const table = nat.table;
  if (!own) {
    const left = table?.rules.filter((r) => r.comment === key) ?? [];
    return left.map((r) => `rule left: ${describeRule(r)}`);
  }
  if (!table) return ['nft table missing'];
  const problems = nat.forwarding ? [] : ['IPv4 forwarding off'];
  problems.push(...frameProblems(table));
  // Every rule must be a Route's compiled rule, each at most once.
  const legit = new Map<string, ObjectKey>([[ruleKey(own), key]]);
  for (const r of all) {
    if (r.kind !== 'Route' || keyOf(r) === key) continue;
    const rule = wantedRule(r as StoredResource<'Route'>, uplink!);
    if (rule) legit.set(ruleKey(rule), keyOf(r));
  }
  const seen = new Set<string>();
  for (const r of table.rules) {
    const k = ruleKey(r);
    if (!legit.has(k)) problems.push(`foreign rule ${describeRule(r)}`);
    else if (seen.has(k)) problems.push(`rule twice: ${describeRule(r)}`);
    seen.add(k);
  }
  if (!seen.has(ruleKey(own))) problems.push(`rule missing: ${describeRule(own)}`);
  return problems;
}

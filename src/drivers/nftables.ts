// The nftables firewall driver: applies the table built by src/firewall/nft.ts in ONE `nft -f`
// transaction (validated with `nft --check` first, in the same process), and observes it with
// `nft -j list table inet T`, decoded into the emitter's canonical statements so desired and actual are
// compared as data. A one-rule change rewrites only the chains that differ (flush + refill), never
// other VMs' chains. Only the table qwamos owns is ever read or written.
import { CommandError, runResult } from './exec.ts';
import { renderChainReplace, renderDelete, renderFullReplace, renderRebuild, type NftBase, type NftChain, type NftRule, type NftTable } from '../firewall/nft.ts';

export interface FirewallLayout {
  /** Named netns playing the host side (tests); undefined = the machine's own namespace. */
  hostNetns?: string;
  /** The table's name (firewallTableName(prefix)). */
  table: string;
}

export interface ObservedNftTable {
  exists: boolean;
  chains: NftChain[];
}

export type NftSyncPlan =
  | { kind: 'none' }
  | { kind: 'full' }
  | { kind: 'chains'; replace: string[]; remove: string[] }
  | { kind: 'delete' }
  /** The table holds chains to keep (the user's): delete the others, then add the desired table whole. */
  | { kind: 'rebuild'; remove: string[] };

const NETNS_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const TABLE_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;

function check(layout: FirewallLayout): void {
  if (layout.hostNetns !== undefined && !NETNS_RE.test(layout.hostNetns)) throw new Error(`invalid host netns ${JSON.stringify(layout.hostNetns)}`);
  if (!TABLE_RE.test(layout.table)) throw new Error(`invalid nft table name ${JSON.stringify(layout.table)}`);
}

function where(layout: FirewallLayout): string {
  return layout.hostNetns ? ` in netns ${layout.hostNetns}` : '';
}

// ---------------------------------------------------------------------------------------------- decode

// nft prints well-known ICMP types by name; the emitter writes numbers.
const ICMP_TYPES: Record<string, number> = {
  'echo-reply': 0,
  'destination-unreachable': 3,
  'source-quench': 4,
  redirect: 5,
  'echo-request': 8,
  'router-advertisement': 9,
  'router-solicitation': 10,
  'time-exceeded': 11,
  'parameter-problem': 12,
  'timestamp-request': 13,
  'timestamp-reply': 14,
  'info-request': 15,
  'info-reply': 16,
  'address-mask-request': 17,
  'address-mask-reply': 18,
};

type Json = any;

function cidrOf(v: Json): string | undefined {
  if (typeof v === 'string' && /^[0-9.]+$/.test(v)) return `${v}/32`;
  if (v && typeof v === 'object' && v.prefix && typeof v.prefix.addr === 'string') return `${v.prefix.addr}/${v.prefix.len}`;
  return undefined;
}

function portRange(v: Json): string | undefined {
  if (typeof v === 'number') return `${v}-${v}`;
  if (v && Array.isArray(v.range) && v.range.length === 2) return `${v.range[0]}-${v.range[1]}`;
  return undefined;
}

/** One nft JSON expression -> a canonical statement, or `?<json>` for anything qwamos never writes. */
export function decodeExpr(e: Json): string {
  const known = decodeKnown(e);
  return known ?? `?${JSON.stringify(e)}`;
}

// Undefined for anything qwamos never writes (serialised only then: most expressions are known).
function decodeKnown(e: Json): string | undefined {
  const unknown = undefined;
  if (e.match) {
    const { op, left, right } = e.match;
    if (left?.meta?.key === 'nfproto' && op === '==' && typeof right === 'string') return `nfproto ${right}`;
    if (left?.meta?.key === 'l4proto' && op === '==' && typeof right === 'string') return `l4proto ${right}`;
    if ((left?.meta?.key === 'iifname' || left?.meta?.key === 'oifname') && op === '==' && typeof right === 'string') return `${left.meta.key} ${right}`;
    if (left?.ct?.key === 'state' && (op === 'in' || op === '==')) {
      const states = (Array.isArray(right) ? right : [right]).map(String).sort();
      return `ct state ${states.join(',')}`;
    }
    if (left?.payload?.protocol === 'ip' && (left.payload.field === 'saddr' || left.payload.field === 'daddr')) {
      const values = right && typeof right === 'object' && Array.isArray(right.set) ? right.set : [right];
      const cidrs = values.map(cidrOf);
      if (cidrs.some((c: string | undefined) => c === undefined)) return unknown;
      const neg = op === '!=' ? '!= ' : op === '==' ? '' : undefined;
      if (neg === undefined) return unknown;
      return `ip ${left.payload.field} ${neg}${[...cidrs].sort().join(',')}`;
    }
    if ((left?.payload?.protocol === 'tcp' || left?.payload?.protocol === 'udp') && left.payload.field === 'dport' && op === '==') {
      const r = portRange(right);
      return r ? `${left.payload.protocol} dport ${r}` : unknown;
    }
    if (left?.payload?.protocol === 'icmp' && left.payload.field === 'type' && op === '==') {
      const n = typeof right === 'number' ? right : ICMP_TYPES[String(right)];
      return n === undefined ? unknown : `icmp type ${n}`;
    }
    const flags = left?.['&'];
    if (Array.isArray(flags) && flags[0]?.payload?.protocol === 'tcp' && flags[0].payload.field === 'flags' && op === '==' && right === 'syn') {
      const mask = [...(Array.isArray(flags[1]) ? flags[1] : [flags[1]])].map(String).sort().join('|');
      return mask === 'ack|fin|rst|syn' ? 'tcp syn' : unknown;
    }
    return unknown;
  }
  if ('accept' in e) return 'accept';
  if ('drop' in e) return 'drop';
  if (e.reject && e.reject.type === 'icmpx' && e.reject.expr === 'admin-prohibited') return 'reject';
  if (e.jump && typeof e.jump.target === 'string') return `jump ${e.jump.target}`;
  if (e.redirect && typeof e.redirect.port === 'number' && Object.keys(e.redirect).length === 1) return `redirect ${e.redirect.port}`;
  return unknown;
}

/** `nft -j list table` output -> the table's chains in canonical form (pure). */
export function decodeNftJson(text: string): NftChain[] {
  const doc = JSON.parse(text) as { nftables?: Json[] };
  const chains = new Map<string, NftChain>();
  for (const item of doc.nftables ?? []) {
    if (item.chain) {
      const c = item.chain;
      const chain: NftChain = { name: c.name, rules: [] };
      if (c.hook) {
        // A policy other than accept is drift too: encoded into the base so it never compares equal.
        const base: NftBase = { type: c.type, hook: c.hook, prio: c.prio };
        chain.base = c.policy === 'accept' ? base : ({ ...base, policy: c.policy } as NftBase);
      }
      chains.set(c.name, chain);
    } else if (item.rule) {
      const r = item.rule;
      const rule: NftRule = { stmts: (r.expr ?? []).map(decodeExpr) };
      if (typeof r.comment === 'string') rule.comment = r.comment;
      chains.get(r.chain)?.rules.push(rule);
    }
  }
  return [...chains.values()];
}

// ---------------------------------------------------------------------------------------------- compare

function ruleKey(r: NftRule): string {
  return JSON.stringify([r.stmts, r.comment ?? null]);
}

/** Do two chains hold the same rules in the same order (and the same hook)? */
export function chainsEqual(a: NftChain, b: NftChain): boolean {
  if (JSON.stringify(a.base ?? null) !== JSON.stringify(b.base ?? null)) return false;
  if (a.rules.length !== b.rules.length) return false;
  return a.rules.every((r, i) => ruleKey(r) === ruleKey(b.rules[i]!));
}

/**
 * Pure: the smallest transaction that makes the observed table the desired one. Chains named in
 * `keep` (the user's chain) are never flushed, deleted or compared; while one exists the table is
 * never deleted or replaced whole (a rebuild deletes qwamos' chains only).
 */
export function planNftSync(desired: NftTable | undefined, observed: ObservedNftTable, keep: readonly string[] = []): NftSyncPlan {
  const kept = observed.exists && observed.chains.some((c) => keep.includes(c.name));
  const ours = observed.chains.filter((c) => !keep.includes(c.name));
  if (!desired) {
    if (!observed.exists) return { kind: 'none' };
    if (!kept) return { kind: 'delete' };
    return ours.length ? { kind: 'rebuild', remove: ours.map((c) => c.name) } : { kind: 'none' };
  }
  if (!observed.exists) return { kind: 'full' };
  const whole: NftSyncPlan = kept ? { kind: 'rebuild', remove: ours.map((c) => c.name) } : { kind: 'full' };
  const have = new Map(ours.map((c) => [c.name, c]));
  // A base chain with another hook or policy cannot be changed by a flush: rebuild the table.
  for (const c of desired.chains) {
    const h = have.get(c.name);
    if (h && JSON.stringify(h.base ?? null) !== JSON.stringify(c.base ?? null)) return whole;
  }
  const want = new Set(desired.chains.map((c) => c.name));
  const replace = desired.chains.filter((c) => !have.has(c.name) || !chainsEqual(c, have.get(c.name)!)).map((c) => c.name);
  const remove = ours.filter((c) => !want.has(c.name)).map((c) => c.name);
  if (remove.some((name) => have.get(name)!.base)) return whole;
  if (replace.length === 0 && remove.length === 0) return { kind: 'none' };
  // Removing a chain needs the base chains that jumped to it refilled in the same transaction.
  if (remove.length > 0) for (const c of desired.chains) if (c.base && !replace.includes(c.name)) replace.push(c.name);
  return { kind: 'chains', replace, remove };
}

export function renderPlan(desired: NftTable | undefined, plan: NftSyncPlan, tableName: string): string {
  switch (plan.kind) {
    case 'none':
      return '';
    case 'delete':
      return renderDelete(tableName);
    case 'full':
      return renderFullReplace(desired!);
    case 'chains':
      return renderChainReplace(desired!, plan.replace, plan.remove);
    case 'rebuild':
      return renderRebuild(tableName, desired, plan.remove);
  }
}

// ---------------------------------------------------------------------------------------------- host

const OBSERVE_SCRIPT = 'nft -j list table inet "$1"';

export async function observeNftTable(layout: FirewallLayout): Promise<ObservedNftTable> {
  check(layout);
  const r = await runResult(['sh', '-c', OBSERVE_SCRIPT, 'qwamos-fw', layout.table], layout.hostNetns ? { netns: layout.hostNetns } : {});
  if (r.exitCode !== 0) {
    if (/No such file or directory/.test(r.stderr)) return { exists: false, chains: [] };
    const why = r.stderr.split('\n').find((l) => l.trim())?.trim() ?? `exit code ${r.exitCode}`;
    throw new CommandError(`nft -j list table inet ${layout.table}${where(layout)}: ${why}`, ['nft', '-j', 'list', 'table', 'inet', layout.table], r.exitCode, r.stderr, r.stdout);
  }
  return { exists: true, chains: decodeNftJson(r.stdout) };
}

// Check, then commit, the same script: one process, the script on stdin kept in a private temp file.
const APPLY_SCRIPT = `
set -u
f=$(mktemp) || exit 1
trap 'rm -f "$f"' EXIT
cat >"$f"
nft --check -f "$f" || { echo "@@check-failed" >&2; exit 3; }
nft -f "$f"
`;

/** Run an nft script as one transaction, after `nft --check` accepted it. */
export async function applyNftScript(layout: FirewallLayout, script: string): Promise<void> {
  check(layout);
  if (!script) return;
  const r = await runResult(['sh', '-c', APPLY_SCRIPT], { input: script, ...(layout.hostNetns ? { netns: layout.hostNetns } : {}) });
  if (r.exitCode !== 0) {
    const stage = /@@check-failed/.test(r.stderr) ? 'nft --check' : 'nft -f';
    const why = r.stderr.split('\n').find((l) => l.trim() && !l.includes('@@'))?.trim() ?? `exit code ${r.exitCode}`;
    throw new CommandError(`${stage} of table inet ${layout.table}${where(layout)}: ${why}`, ['nft', '-f', '-'], r.exitCode, r.stderr, r.stdout);
  }
}

export interface NftSyncResult {
  plan: NftSyncPlan;
  script: string;
}

export interface NftSyncOptions {
  /** The table as just observed (else it is observed first). */
  observed?: ObservedNftTable;
  /** Chains never flushed, deleted or compared (the user's chain). */
  keep?: readonly string[];
}

/** Observe, plan the smallest transaction, apply it. `desired` undefined removes qwamos' part. */
export async function syncNftTable(layout: FirewallLayout, desired: NftTable | undefined, opts: NftSyncOptions = {}): Promise<NftSyncResult> {
  if (desired && desired.name !== layout.table) throw new Error(`table ${desired.name} given for layout table ${layout.table}`);
  const observed = opts.observed ?? (await observeNftTable(layout));
  const plan = planNftSync(desired, observed, opts.keep);
  const script = renderPlan(desired, plan, layout.table);
  await applyNftScript(layout, script);
  return { plan, script };
}

/** Remove qwamos' table (only it). */
export async function deleteNftTable(layout: FirewallLayout): Promise<void> {
  await applyNftScript(layout, renderDelete(layout.table));
}

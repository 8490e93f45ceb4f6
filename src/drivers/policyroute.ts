// The routing backstop for tor/i2p/isolated VMs: `ip rule iif HOSTIF lookup N` + `unreachable default`
// in table N, for IPv4 and IPv6. It does not depend on any firewall: if qwamos' table is deleted or
// flushed, forwarded traffic from the VM still finds no route. Traffic for the host's own addresses
// (Tor's TransPort/DNSPort, the I2P proxies on the gateway) is routed by the `local` table, which is
// looked up before any rule we add (priority 0), so the gateway stays reachable.
import { run } from './exec.ts';

export interface BackstopLayout {
  hostNetns?: string;
}

export interface Backstop {
  hostIf: string;
  /** Routing table number, also used as the rule priority (keep it unique per VM). */
  table: number;
}

export interface ObservedBackstop {
  hostIf: string;
  table: number;
  v4Rule: boolean;
  v6Rule: boolean;
  v4Unreachable: boolean;
  v6Unreachable: boolean;
}

const IFNAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;

function check(b: Backstop): void {
  if (!IFNAME_RE.test(b.hostIf)) throw new Error(`invalid interface ${JSON.stringify(b.hostIf)}`);
  // The number is also the rule's priority: it must come before the main table's rule (32766).
  if (!Number.isInteger(b.table) || b.table < 1000 || b.table >= 32766) {
    throw new Error(`routing table ${b.table} for ${b.hostIf}: choose 1000..32765 (its rule must come before main's, 32766)`);
  }
}

function opts(layout: BackstopLayout): { netns?: string } {
  return layout.hostNetns ? { netns: layout.hostNetns } : {};
}

interface RuleJson {
  priority?: number;
  iif?: string;
  table?: string;
}
interface RouteJson {
  dst?: string;
  type?: string;
}

async function json<T>(layout: BackstopLayout, args: string[]): Promise<T[]> {
  const out = await run(['ip', '-j', ...args], opts(layout));
  return out.trim() ? (JSON.parse(out) as T[]) : [];
}

/** What exists of one VM's backstop (rules matched by iif, table and priority). */
export async function observeBackstop(layout: BackstopLayout, b: Backstop): Promise<ObservedBackstop> {
  return (await observeBackstops(layout, [b]))[0]!;
}

interface TableRouteJson extends RouteJson {
  table?: string;
}

/**
 * What exists of many VMs' backstops, in order: four `ip` processes whatever their number (the rules,
 * and the routes of every table, per family), so observing a thousand Routes does not start thousands.
 */
export async function observeBackstops(layout: BackstopLayout, backstops: readonly Backstop[]): Promise<ObservedBackstop[]> {
  backstops.forEach(check);
  if (backstops.length === 0) return [];
  const [r4, r6, t4, t6] = await Promise.all([
    json<RuleJson>(layout, ['-4', 'rule', 'show']),
    json<RuleJson>(layout, ['-6', 'rule', 'show']),
    json<TableRouteJson>(layout, ['-4', 'route', 'show', 'table', 'all']),
    json<TableRouteJson>(layout, ['-6', 'route', 'show', 'table', 'all']),
  ]);
  const rules = (rs: RuleJson[]) => new Set(rs.filter((r) => r.table === String(r.priority)).map((r) => `${r.iif}/${r.priority}`));
  const unreachable = (rs: TableRouteJson[]) => new Set(rs.filter((r) => r.dst === 'default' && r.type === 'unreachable').map((r) => r.table));
  const [rule4, rule6, unr4, unr6] = [rules(r4), rules(r6), unreachable(t4), unreachable(t6)];
  return backstops.map((b) => {
    const rule = `${b.hostIf}/${b.table}`;
    const table = String(b.table);
    return { hostIf: b.hostIf, table: b.table, v4Rule: rule4.has(rule), v6Rule: rule6.has(rule), v4Unreachable: unr4.has(table), v6Unreachable: unr6.has(table) };
  });
}

export function backstopComplete(o: ObservedBackstop): boolean {
  return o.v4Rule && o.v6Rule && o.v4Unreachable && o.v6Unreachable;
}

/**
 * Make the backstop exist (idempotent: routes are `replace`d, a rule is only added when missing).
 * Works before the interface exists: the rule matches it by name once it appears.
 */
export async function ensureBackstop(layout: BackstopLayout, b: Backstop): Promise<void> {
  const o = await observeBackstop(layout, b);
  if (backstopComplete(o)) return;
  const t = String(b.table);
  const lines = [`-4 route replace unreachable default table ${t}`, `-6 route replace unreachable default table ${t}`];
  // Routes first, then the rules that point at them: never a moment where the rule sends to an empty table.
  if (!o.v4Rule) lines.push(`-4 rule add iif ${b.hostIf} lookup ${t} priority ${t}`);
  if (!o.v6Rule) lines.push(`-6 rule add iif ${b.hostIf} lookup ${t} priority ${t}`);
  // `ip -batch` does not take -4/-6 per line; run them as one shell process.
  await run(['sh', '-c', lines.map((l) => `ip ${l}`).join(' && ')], opts(layout));
}

/** Remove the backstop (idempotent). */
export async function removeBackstop(layout: BackstopLayout, b: Backstop): Promise<void> {
  check(b);
  const t = String(b.table);
  const script = [
    `while ip -4 rule del iif ${b.hostIf} lookup ${t} priority ${t} 2>/dev/null; do :; done`,
    `while ip -6 rule del iif ${b.hostIf} lookup ${t} priority ${t} 2>/dev/null; do :; done`,
    `ip -4 route flush table ${t} 2>/dev/null; ip -6 route flush table ${t} 2>/dev/null; true`,
  ].join('\n');
  await run(['sh', '-c', script], opts(layout));
}

/**
 * Every backstop rule (IPv4 or IPv6) whose input interface starts with `ifPrefix` and whose priority is
 * its table's number (the shape ensureBackstop writes), one entry per interface and table.
 */
export async function listBackstops(layout: BackstopLayout, ifPrefix: string): Promise<Backstop[]> {
  const [r4, r6] = await Promise.all([json<RuleJson>(layout, ['-4', 'rule', 'show']), json<RuleJson>(layout, ['-6', 'rule', 'show'])]);
  const found = new Map<string, Backstop>();
  for (const r of [...r4, ...r6]) {
    if (!r.iif?.startsWith(ifPrefix) || r.priority === undefined || r.table !== String(r.priority)) continue;
    found.set(`${r.iif} ${r.priority}`, { hostIf: r.iif, table: r.priority });
  }
  return [...found.values()];
}

// The iptables firewall driver (hosts without nftables): applies src/firewall/iptables.ts' chains with
// `ip6tables-restore --noflush` then `iptables-restore --noflush` (filter before nat), only the chains
// that differ, then ensures the jumps from the built-in chains with -C before -I (never a duplicate).
// Observed with iptables-save / ip6tables-save; only QWAMOS-* chains and the jumps to them are read.
import { run } from './exec.ts';
import { IP6T_JUMPS, IPT_JUMPS, renderRestoreBlock, type IptChain, type IptTables } from '../firewall/iptables.ts';

export interface IptLayout {
  hostNetns?: string;
}

type TableKey = 'v4filter' | 'v4nat' | 'v6filter';

export interface ObservedIpt {
  chains: Record<TableKey, Map<string, string[]>>;
  /** Built-in chain jump lines to QWAMOS-* chains, per table (e.g. `-A FORWARD -j QWAMOS-FORWARD`). */
  jumps: Record<TableKey, string[]>;
  /** Every chain of the IPv4 filter table (the user's chain is looked up here). */
  v4filterChains: Set<string>;
}

const OBSERVE = 'iptables-save -t filter; echo @@nat; iptables-save -t nat; echo @@v6; ip6tables-save -t filter';

function opts(layout: IptLayout): { netns?: string } {
  return layout.hostNetns ? { netns: layout.hostNetns } : {};
}

/** Pure: parse the three saves. */
export function parseSaves(text: string): ObservedIpt {
  const [f4 = '', n4 = '', f6 = ''] = text.split(/^@@(?:nat|v6)$/m);
  const v4filterChains = new Set<string>();
  const parse = (t: string, all?: Set<string>) => {
    const chains = new Map<string, string[]>();
    const jumps: string[] = [];
    for (const line of t.split('\n')) {
      if (all && line.startsWith(':')) all.add(line.slice(1).split(' ')[0]!);
      const decl = /^:(QWAMOS-\S+) /.exec(line);
      if (decl) chains.set(decl[1]!, []);
      const rule = /^-A (\S+) /.exec(line);
      if (!rule) continue;
      if (rule[1]!.startsWith('QWAMOS-')) chains.get(rule[1]!)?.push(line.trim());
      else if (/ -j QWAMOS-/.test(line)) jumps.push(line.trim());
    }
    return { chains, jumps };
  };
  const a = parse(f4, v4filterChains);
  const b = parse(n4);
  const c = parse(f6);
  return { chains: { v4filter: a.chains, v4nat: b.chains, v6filter: c.chains }, jumps: { v4filter: a.jumps, v4nat: b.jumps, v6filter: c.jumps }, v4filterChains };
}

export async function observeIpt(layout: IptLayout): Promise<ObservedIpt> {
  return parseSaves(await run(['sh', '-c', OBSERVE], opts(layout)));
}

export interface IptPlan {
  replace: Record<TableKey, IptChain[]>;
  remove: Record<TableKey, string[]>;
  missingJumps: string[];
}

const KEYS: TableKey[] = ['v6filter', 'v4filter', 'v4nat'];

/** Pure: which chains differ, which are stale, which jumps are missing. */
export function planIpt(desired: IptTables, observed: ObservedIpt): IptPlan {
  const plan: IptPlan = { replace: { v4filter: [], v4nat: [], v6filter: [] }, remove: { v4filter: [], v4nat: [], v6filter: [] }, missingJumps: [] };
  for (const k of KEYS) {
    const want = new Set(desired[k].map((c) => c.name));
    plan.remove[k] = [...observed.chains[k].keys()].filter((n) => !want.has(n));
    plan.replace[k] = desired[k].filter((c) => {
      const have = observed.chains[k].get(c.name);
      return !have || have.length !== c.rules.length || have.some((l, i) => l !== c.rules[i]);
    });
    // Stale chains are referenced from the dispatch chains: refill those in the same commit.
    if (plan.remove[k].length) for (const c of desired[k]) if (c.name.split('-').length === 2 && !plan.replace[k].includes(c)) plan.replace[k].push(c);
  }
  for (const [key, jumps] of [['v4filter', IPT_JUMPS.filter((j) => j[0] === 'filter')], ['v4nat', IPT_JUMPS.filter((j) => j[0] === 'nat')], ['v6filter', IP6T_JUMPS]] as const) {
    for (const [, builtin, target] of jumps) if (!observed.jumps[key].includes(`-A ${builtin} -j ${target}`)) plan.missingJumps.push(`${key} ${builtin} ${target}`);
  }
  return plan;
}

export function planIsEmpty(p: IptPlan): boolean {
  return KEYS.every((k) => p.replace[k].length === 0 && p.remove[k].length === 0) && p.missingJumps.length === 0;
}

function ensureJumpsScript(): string {
  const lines: string[] = [];
  for (const [table, builtin, target] of IP6T_JUMPS) lines.push(`ip6tables -t ${table} -C ${builtin} -j ${target} 2>/dev/null || ip6tables -t ${table} -I ${builtin} 1 -j ${target}`);
  for (const [table, builtin, target] of IPT_JUMPS) lines.push(`iptables -t ${table} -C ${builtin} -j ${target} 2>/dev/null || iptables -t ${table} -I ${builtin} 1 -j ${target}`);
  return lines.join(' && ');
}

/** Observe (unless given), restore only what differs (IPv6 first, IPv4 filter before nat), ensure the jumps. */
export async function syncIpt(layout: IptLayout, desired: IptTables, observed?: ObservedIpt): Promise<IptPlan> {
  const plan = planIpt(desired, observed ?? (await observeIpt(layout)));
  if (planIsEmpty(plan)) return plan;
  if (plan.replace.v6filter.length || plan.remove.v6filter.length) {
    await run(['ip6tables-restore', '--noflush'], { ...opts(layout), input: renderRestoreBlock('filter', plan.replace.v6filter, plan.remove.v6filter) });
  }
  let v4 = '';
  if (plan.replace.v4filter.length || plan.remove.v4filter.length) v4 += renderRestoreBlock('filter', plan.replace.v4filter, plan.remove.v4filter);
  if (plan.replace.v4nat.length || plan.remove.v4nat.length) v4 += renderRestoreBlock('nat', plan.replace.v4nat, plan.remove.v4nat);
  if (v4) await run(['iptables-restore', '--noflush'], { ...opts(layout), input: v4 });
  await run(['sh', '-c', ensureJumpsScript()], opts(layout));
  return plan;
}

/**
 * Pure: the restore input removing what `o` saw of qwamos: every QWAMOS-* chain declared (= flushed),
 * each observed jump to one deleted (`-D`, every copy), then the chains deleted (`-X`). One commit per
 * family instead of an `iptables -F`/`-X` process per chain (each of which reloads the whole table).
 */
export function renderRemoval(o: ObservedIpt): { v6: string; v4: string } {
  const block = (table: 'filter' | 'nat', key: TableKey): string => {
    const chains = [...o.chains[key].keys()];
    const jumps = o.jumps[key];
    if (chains.length === 0 && jumps.length === 0) return '';
    const lines = [`*${table}`, ...chains.map((c) => `:${c} - [0:0]`), ...jumps.map((l) => l.replace(/^-A /, '-D ')), ...chains.map((c) => `-X ${c}`), 'COMMIT'];
    return lines.join('\n') + '\n';
  };
  return { v6: block('filter', 'v6filter'), v4: block('filter', 'v4filter') + block('nat', 'v4nat') };
}

/** Remove the jumps and every QWAMOS-* chain (only those): observed, then one restore per family. */
export async function removeIpt(layout: IptLayout, observed?: ObservedIpt): Promise<void> {
  const { v6, v4 } = renderRemoval(observed ?? (await observeIpt(layout)));
  if (v6) await run(['ip6tables-restore', '--noflush'], { ...opts(layout), input: v6 });
  if (v4) await run(['iptables-restore', '--noflush'], { ...opts(layout), input: v4 });
}

// ------------------------------------------------------------------------------------ Docker's DOCKER-USER
// Docker sets the filter FORWARD policy to DROP and jumps from FORWARD to DOCKER-USER, the chain it
// leaves to the user. On the nftables backend qwamos' own table cannot undo that drop (an accept in one
// table does not bypass another table's drop), so direct VMs get ACCEPTs there, marked with a comment
// naming the prefix. Only those lines are ever added or deleted: the user's rules are never flushed,
// rewritten or reordered, and the chain is never created.

export const DOCKER_USER = 'DOCKER-USER';

export interface ObservedDockerUser {
  exists: boolean;
  /** The chain's lines carrying exactly `comment` (iptables-save form), sorted. */
  ours: string[];
}

/** Pure: DOCKER-USER as `iptables-save -t filter` prints it. */
export function parseDockerUser(save: string, comment: string): ObservedDockerUser {
  const mark = comment.includes(' ') ? `--comment "${comment}"` : `--comment ${comment}`;
  const lines = save.split('\n').map((l) => l.trim());
  return {
    exists: lines.some((l) => l.startsWith(`:${DOCKER_USER} `)),
    ours: lines.filter((l) => l.startsWith(`-A ${DOCKER_USER} `) && (l.includes(` ${mark} `) || l.endsWith(` ${mark}`))).sort(),
  };
}

/** Pure: the accepts a direct VM's host link needs in DOCKER-USER (both directions), iptables-save form. */
export function dockerUserLines(hostIfs: readonly string[], comment: string): string[] {
  if (!/^[A-Za-z0-9 ._-]{1,64}$/.test(comment)) throw new Error(`unsafe iptables comment ${JSON.stringify(comment)}`);
  const mark = comment.includes(' ') ? `-m comment --comment "${comment}"` : `-m comment --comment ${comment}`;
  return hostIfs.flatMap((h) => [`-A ${DOCKER_USER} -i ${h} ${mark} -j ACCEPT`, `-A ${DOCKER_USER} -o ${h} ${mark} -j ACCEPT`]).sort();
}

export async function observeDockerUser(layout: IptLayout, comment: string): Promise<ObservedDockerUser> {
  return parseDockerUser(await run(['iptables-save', '-t', 'filter'], opts(layout)), comment);
}

/** argv words of a save line, for `iptables -I/-D` (the quoted comment is one word). */
function words(line: string): string[] {
  return [...line.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}

/**
 * Make qwamos' lines in DOCKER-USER exactly `desired` (when the chain exists): stale ones deleted one by
 * one, missing ones inserted at the top (before a trailing RETURN of older Docker versions).
 */
export async function syncDockerUser(layout: IptLayout, desired: readonly string[], comment: string): Promise<{ added: string[]; removed: string[] }> {
  const seen = await observeDockerUser(layout, comment);
  if (!seen.exists) return { added: [], removed: [] };
  // A line that is not wanted, or a second copy of one that is (never duplicated), goes.
  const kept = new Set<string>();
  const removed = seen.ours.filter((l) => {
    if (!desired.includes(l) || kept.has(l)) return true;
    kept.add(l);
    return false;
  });
  const added = desired.filter((l) => !kept.has(l));
  for (const l of removed) await run(['iptables', '-D', ...words(l).slice(1)], opts(layout));
  for (const l of added) await run(['iptables', '-I', DOCKER_USER, '1', ...words(l).slice(2)], opts(layout));
  return { added, removed };
}

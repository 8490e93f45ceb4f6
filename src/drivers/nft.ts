// The nft driver: reads one nft table as data (`nft -j list table`) and replaces one table's whole
// content in ONE `nft -j -f -` transaction. Generic over the table: it knows chains, rules and other
// table objects, nothing of Routes; the caller says what the table must hold. No other table is touched.
import { readFile, writeFile } from 'node:fs/promises';
import { CommandError, run, runResult } from './exec.ts';
import { NETNS_RE } from '../names.ts';

export type NftFamily = 'ip' | 'ip6' | 'inet';

/** A base or regular chain as nft's JSON prints it. */
export interface NftChain {
  name: string;
  type?: string;
  hook?: string;
  prio?: number;
  policy?: string;
}

/** A rule: its chain, its expression list exactly as nft's JSON prints it, and its comment. */
export interface NftRule {
  chain: string;
  expr: unknown[];
  comment?: string;
  /** Assigned by the kernel; ignored when writing. */
  handle?: number;
}

/** Anything in the table that is neither a chain nor a rule (a set, a map, a counter...). */
export interface NftObject {
  /** The JSON key: 'set', 'map', 'counter', 'flowtable', ... */
  kind: string;
  name: string;
}

export interface NftTableContent {
  chains: NftChain[];
  rules: NftRule[];
}

export interface ObservedNftTable extends NftTableContent {
  family: NftFamily;
  name: string;
  others: NftObject[];
}

export interface NftObservation {
  /** Undefined when the table does not exist. */
  table?: ObservedNftTable;
  /** net.ipv4.ip_forward is 1 in that netns. */
  ipv4Forwarding: boolean;
}

const TABLE_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;

function checkTarget(hostNetns: string | undefined, name: string): void {
  if (hostNetns !== undefined && !NETNS_RE.test(hostNetns)) throw new Error(`invalid netns name ${JSON.stringify(hostNetns)}`);
  if (!TABLE_RE.test(name)) throw new Error(`invalid nft table name ${JSON.stringify(name)}`);
}

// Reads ip_forward (a shell builtin, no extra process) and lists the table, in the chosen netns.
const OBSERVE_SCRIPT = `
read f </proc/sys/net/ipv4/ip_forward
echo "@@forward $f"
nft -j list table "$1" "$2"
rc=$?
echo
echo "@@rc $rc"
`;

/** Pure: the parsed output of `nft -j list table`. */
export function parseNftTable(family: NftFamily, name: string, json: string): ObservedNftTable {
  const doc = JSON.parse(json) as { nftables?: Record<string, Record<string, unknown>>[] };
  const table: ObservedNftTable = { family, name, chains: [], rules: [], others: [] };
  for (const item of doc.nftables ?? []) {
    const [kind, body] = Object.entries(item)[0] ?? [];
    if (!kind || !body || kind === 'metainfo' || kind === 'table') continue;
    if (kind === 'chain') {
      const c = body as Record<string, unknown>;
      table.chains.push({
        name: String(c.name),
        ...(typeof c.type === 'string' ? { type: c.type } : {}),
        ...(typeof c.hook === 'string' ? { hook: c.hook } : {}),
        ...(typeof c.prio === 'number' ? { prio: c.prio } : {}),
        ...(typeof c.policy === 'string' ? { policy: c.policy } : {}),
      });
    } else if (kind === 'rule') {
      const r = body as Record<string, unknown>;
      table.rules.push({
        chain: String(r.chain),
        expr: Array.isArray(r.expr) ? r.expr : [],
        ...(typeof r.comment === 'string' ? { comment: r.comment } : {}),
        ...(typeof r.handle === 'number' ? { handle: r.handle } : {}),
      });
    } else {
      table.others.push({ kind, name: String((body as Record<string, unknown>).name ?? '') });
    }
  }
  return table;
}

/** One process: the table's content (undefined when absent) and whether IPv4 forwarding is on. */
export async function observeNftTable(hostNetns: string | undefined, family: NftFamily, name: string): Promise<NftObservation> {
  checkTarget(hostNetns, name);
  const argv = ['nft', '-j', 'list', 'table', family, name];
  const r = await runResult(['sh', '-c', OBSERVE_SCRIPT, 'qwamos-nft', family, name], hostNetns ? { netns: hostNetns } : {});
  const fwd = /^@@forward (\d+)/m.exec(r.stdout);
  const rc = /^@@rc (\d+)/m.exec(r.stdout);
  const where = hostNetns ? ` in netns ${hostNetns}` : '';
  if (!fwd || !rc) {
    const why = r.stderr.split('\n').find((l) => l.trim()) ?? `exit code ${r.exitCode}`;
    throw new CommandError(`observe nft table ${family} ${name}${where}: ${why.trim()}`, argv, r.exitCode, r.stderr, r.stdout);
  }
  const ipv4Forwarding = fwd[1] === '1';
  if (rc[1] !== '0') {
    if (/No such file or directory/.test(r.stderr)) return { ipv4Forwarding };
    const why = r.stderr.split('\n').find((l) => l.trim()) ?? `exit code ${rc[1]}`;
    throw new CommandError(`${argv.join(' ')}${where}: ${why.trim()}`, argv, Number(rc[1]), r.stderr, r.stdout);
  }
  const jsonLine = r.stdout.split('\n').find((l) => l.trimStart().startsWith('{'));
  if (!jsonLine) throw new CommandError(`${argv.join(' ')}${where}: no JSON output`, argv, 0, r.stderr, r.stdout);
  return { table: parseNftTable(family, name, jsonLine), ipv4Forwarding };
}

/**
 * Pure: the one transaction that makes the table hold exactly `content` (create-if-missing, delete,
 * recreate), or that deletes it (content undefined; fine when it is absent), as nft JSON.
 */
export function nftReplaceTransaction(family: NftFamily, name: string, content: NftTableContent | undefined): string {
  checkTarget(undefined, name);
  const table = { family, name };
  const cmds: Record<string, unknown>[] = [{ add: { table } }, { delete: { table } }];
  if (content) {
    cmds.push({ add: { table } });
    for (const c of content.chains) cmds.push({ add: { chain: { family, table: name, ...c } } });
    for (const r of content.rules) {
      const { handle: _handle, ...rule } = r;
      cmds.push({ add: { rule: { family, table: name, ...rule } } });
    }
  }
  return JSON.stringify({ nftables: cmds });
}

/**
 * Make the table hold exactly `content` in one `nft -j -f -` transaction (content undefined: delete
 * it). With `ipv4Forwarding`, net.ipv4.ip_forward is turned on in the same netns first (one process
 * with the transaction when a netns is named); it is never turned off (other software may rely on it).
 */
export async function replaceNftTable(
  hostNetns: string | undefined,
  family: NftFamily,
  name: string,
  content: NftTableContent | undefined,
  opts: { ipv4Forwarding?: boolean } = {},
): Promise<void> {
  checkTarget(hostNetns, name);
  const input = nftReplaceTransaction(family, name, content);
  // nft -j opens /dev/stdin by path, which fails on the socket Node gives as stdin: a pipe in between.
  const load = 'cat | nft -j -f -';
  if (opts.ipv4Forwarding && !hostNetns) {
    const path = '/proc/sys/net/ipv4/ip_forward';
    if ((await readFile(path, 'utf8')).trim() !== '1') await writeFile(path, '1\n');
  }
  // With a netns named, forwarding goes on in it, in the same process as the transaction.
  const script = opts.ipv4Forwarding && hostNetns ? `echo 1 > /proc/sys/net/ipv4/ip_forward && ${load}` : load;
  await run(['sh', '-c', script], { input, ...(hostNetns ? { netns: hostNetns } : {}) });
}

// The conntrack driver: lists the connection-tracking entries of one netns whose original source is an
// address, and deletes one exact entry (its original tuple). Used to cut established flows a tightened
// firewall no longer allows (an `established accept` would otherwise keep them alive). Runs and parses
// `conntrack` (conntrack-tools) only.
import { run, runResult, CommandError } from './exec.ts';

export interface ConntrackLayout {
  hostNetns?: string;
}

/** One entry's original direction (what the initiator sent). */
export interface ConntrackFlow {
  /** Layer 4 protocol name as conntrack prints it (tcp, udp, icmp, or `unknown`), and its number. */
  proto: string;
  protoNumber: number;
  src: string;
  dst: string;
  sport?: number;
  dport?: number;
  /** icmp only */
  icmpType?: number;
  icmpCode?: number;
  icmpId?: number;
  /** tcp only, e.g. ESTABLISHED */
  state?: string;
}

const opts = (layout: ConntrackLayout): { netns?: string } => (layout.hostNetns ? { netns: layout.hostNetns } : {});

/**
 * Pure: parse `conntrack -L -o extended` lines (IPv4 only). The first key=value group is the original
 * direction; the reply tuple repeats the keys and is ignored.
 */
export function parseConntrack(text: string): ConntrackFlow[] {
  const flows: ConntrackFlow[] = [];
  for (const line of text.split('\n')) {
    const words = line.trim().split(/\s+/);
    // ipv4 2 tcp 6 431999 ESTABLISHED src=... ; the state word is present for tcp (and sctp, dccp)
    if (words[0] !== 'ipv4' || words.length < 6) continue;
    const proto = words[2]!;
    const protoNumber = Number(words[3]);
    const kv = new Map<string, string>();
    let state: string | undefined;
    for (const w of words.slice(5)) {
      const eq = w.indexOf('=');
      if (eq < 0) {
        if (kv.size === 0 && /^[A-Z_]+$/.test(w)) state = w;
        continue;
      }
      const k = w.slice(0, eq);
      if (kv.has(k)) break; // the reply tuple starts
      kv.set(k, w.slice(eq + 1));
    }
    const src = kv.get('src');
    const dst = kv.get('dst');
    if (!src || !dst || !Number.isInteger(protoNumber)) continue;
    const num = (k: string): number | undefined => (kv.has(k) ? Number(kv.get(k)) : undefined);
    const flow: ConntrackFlow = { proto, protoNumber, src, dst };
    if (num('sport') !== undefined) flow.sport = num('sport')!;
    if (num('dport') !== undefined) flow.dport = num('dport')!;
    if (num('type') !== undefined) flow.icmpType = num('type')!;
    if (num('code') !== undefined) flow.icmpCode = num('code')!;
    if (num('id') !== undefined) flow.icmpId = num('id')!;
    if (state) flow.state = state;
    flows.push(flow);
  }
  return flows;
}

/** Every IPv4 entry (one process, whatever the number of VMs asked about). */
export async function listFlows(layout: ConntrackLayout): Promise<ConntrackFlow[]> {
  // Exit 0 with no entries; the summary line goes to stderr.
  return parseConntrack(await run(['conntrack', '-L', '-f', 'ipv4', '-o', 'extended'], opts(layout)));
}

/** The conntrack arguments naming exactly this entry's original tuple. */
export function tupleArgs(f: ConntrackFlow): string[] {
  const args = ['-f', 'ipv4', '-s', f.src, '-d', f.dst, '-p', String(f.protoNumber)];
  if ((f.proto === 'tcp' || f.proto === 'udp') && f.sport !== undefined && f.dport !== undefined) {
    args.splice(6, 2, '-p', f.proto);
    args.push('--sport', String(f.sport), '--dport', String(f.dport));
  } else if (f.proto === 'icmp' && f.icmpType !== undefined) {
    args.splice(6, 2, '-p', 'icmp');
    args.push('--icmp-type', String(f.icmpType));
    if (f.icmpCode !== undefined) args.push('--icmp-code', String(f.icmpCode));
    if (f.icmpId !== undefined) args.push('--icmp-id', String(f.icmpId));
  }
  return args;
}

/** Delete one entry; true when one was deleted, false when it was already gone. */
export async function deleteFlow(layout: ConntrackLayout, f: ConntrackFlow): Promise<boolean> {
  const r = await runResult(['conntrack', '-D', ...tupleArgs(f)], opts(layout));
  if (r.exitCode === 0) return true;
  // "0 flow entries have been deleted" exits 1: it ended on its own meanwhile.
  if (/0 flow entries/.test(r.stderr)) return false;
  throw new CommandError(`conntrack -D ${tupleArgs(f).join(' ')}: ${r.stderr.trim().split('\n')[0] ?? `exit ${r.exitCode}`}`, ['conntrack', '-D', ...tupleArgs(f)], r.exitCode, r.stderr, r.stdout);
}

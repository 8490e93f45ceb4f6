// iptables emitter: the same VmFirewall[] as QWAMOS-* chains for `iptables-restore --noflush` and
// `ip6tables-restore --noflush` (declaring `:CHAIN - [0:0]` replaces that chain atomically). Rules are
// written in the exact form `iptables-save` prints them, so observe compares lines.
//
// Blocks are ordered so a partial commit stays closed: ip6tables (drops only) first; then for IPv4 the
// filter block (all drops and accepts) before the nat block (Tor's redirects). The jumps from the
// built-in chains (FORWARD, INPUT, nat PREROUTING) are ensured separately with -C before -I.
import { createHash } from 'node:crypto';
import type { IrRule, VmFirewall } from './ir.ts';
import { jumpsToUserChain } from './userchain.ts';

export const IPT_BASE = { forward: 'QWAMOS-FORWARD', input: 'QWAMOS-INPUT', prerouting: 'QWAMOS-PREROUTING' } as const;
/** Between a direct VM's accept and the user's chain (see ./userchain.ts): `-j <user chain>`, `-j ACCEPT`. */
export const IPT_USER_VERDICT = 'QWAMOS-USER';
const USER_CHAIN_RE = /^[A-Za-z][A-Za-z0-9_-]{0,27}$/;

/** Jumps from built-in chains: [table, builtin, target]. */
export const IPT_JUMPS: readonly (readonly ['filter' | 'nat', string, string])[] = [
  ['filter', 'FORWARD', IPT_BASE.forward],
  ['filter', 'INPUT', IPT_BASE.input],
  ['nat', 'PREROUTING', IPT_BASE.prerouting],
];
export const IP6T_JUMPS: readonly (readonly ['filter', string, string])[] = [
  ['filter', 'FORWARD', IPT_BASE.forward],
  ['filter', 'INPUT', IPT_BASE.input],
];

/** Per-VM chain names within iptables' 28-character limit (long names cut and made unique by a hash). */
export function iptVmChains(vm: string): { out: string; ret: string; in: string; nat: string } {
  const id = vm.length <= 19 ? vm : `${vm.slice(0, 14)}-${createHash('sha256').update(vm).digest('hex').slice(0, 4)}`;
  return { out: `QWAMOS-O-${id}`, ret: `QWAMOS-R-${id}`, in: `QWAMOS-I-${id}`, nat: `QWAMOS-N-${id}` };
}

export interface IptChain {
  name: string;
  /** `-A` lines in iptables-save form. */
  rules: string[];
}

export interface IptTables {
  v4filter: IptChain[];
  v4nat: IptChain[];
  v6filter: IptChain[];
}

function comment(c: string): string {
  if (!/^[A-Za-z0-9 ._/()-]{1,128}$/.test(c)) throw new Error(`unsafe iptables comment ${JSON.stringify(c)}`);
  return c.includes(' ') ? `-m comment --comment "${c}"` : `-m comment --comment ${c}`;
}

const TARGET = { accept: '-j ACCEPT', drop: '-j DROP', reject: '-j REJECT --reject-with icmp-admin-prohibited' } as const;

type Targets = Record<keyof typeof TARGET, string>;
const VIA_USER: Targets = { ...TARGET, accept: `-j ${IPT_USER_VERDICT}` };

function ruleLines(chain: string, r: IrRule, targets: Targets = TARGET): string[] {
  const m = r.match;
  const dsts = m.dst ?? [undefined];
  return dsts.map((d) => {
    const parts = [`-A ${chain}`];
    if (d) parts.push(`-d ${d}`);
    if (m.proto) parts.push(`-p ${m.proto}`);
    if (m.proto && m.proto !== 'icmp' && m.ports) parts.push(`-m ${m.proto} --dport ${m.ports.from === m.ports.to ? m.ports.from : `${m.ports.from}:${m.ports.to}`}`);
    if (m.proto === 'icmp' && m.icmpType !== undefined) parts.push(`-m icmp --icmp-type ${m.icmpType}`);
    parts.push(comment(r.comment), targets[r.action]);
    return parts.join(' ');
  });
}

function prologue(chain: string, fw: VmFirewall): string[] {
  const lines = [`-A ${chain} -m conntrack --ctstate INVALID -j DROP`];
  if (!fw.failClosed) lines.push(`-A ${chain} ! -s ${fw.vmAddress}/32 -j DROP`);
  return lines;
}

/**
 * `userChain`: a filter chain the user owns (it must exist: give it only then); direct VMs' accepts
 * jump to QWAMOS-USER, which jumps to it and then accepts.
 */
export function buildIptTables(compiled: readonly VmFirewall[], opts: { guardPattern?: string; userChain?: string } = {}): IptTables {
  const guard = opts.guardPattern?.replace(/\*$/, '+');
  if (opts.userChain !== undefined && !USER_CHAIN_RE.test(opts.userChain)) throw new Error(`invalid user chain name ${JSON.stringify(opts.userChain)}`);
  if (guard !== undefined && !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,13}\+$/.test(guard)) throw new Error(`invalid guard pattern ${opts.guardPattern}`);
  const fwd: string[] = [];
  const inp: string[] = [];
  const pre: string[] = [];
  const v4filter: IptChain[] = [];
  const v4nat: IptChain[] = [];
  const v6fwd: string[] = [];
  const v6inp: string[] = [];
  for (const fw of compiled) {
    const c = iptVmChains(fw.vm);
    const targets = opts.userChain !== undefined && jumpsToUserChain(fw) ? VIA_USER : TARGET;
    const out = prologue(c.out, fw);
    const ret: string[] = [];
    const inn = prologue(c.in, fw);
    if (fw.failClosed) {
      out.push(`-A ${c.out} ${comment('fail closed')} ${TARGET.reject}`);
      inn.push(`-A ${c.in} ${comment('fail closed')} ${TARGET.reject}`);
      ret.push(`-A ${c.ret} -j DROP`);
    } else {
      if (fw.outbound.allowEstablished) out.push(`-A ${c.out} -m conntrack --ctstate RELATED,ESTABLISHED ${targets.accept}`);
      for (const r of fw.outbound.rules) out.push(...ruleLines(c.out, r, targets));
      out.push(`-A ${c.out} ${comment('default')} ${targets[fw.outbound.defaultAction]}`);
      if (fw.inbound.allowEstablished) ret.push(`-A ${c.ret} -m conntrack --ctstate RELATED,ESTABLISHED ${targets.accept}`);
      ret.push(`-A ${c.ret} -j DROP`);
      if (fw.toGateway.allowEstablished) inn.push(`-A ${c.in} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`);
      for (const r of fw.toGateway.rules) inn.push(...ruleLines(c.in, r));
      inn.push(`-A ${c.in} -j DROP`);
      if (fw.redirects.length > 0) {
        v4nat.push({
          name: c.nat,
          rules: fw.redirects.map((r) => {
            const match = r.dport !== undefined ? `-p ${r.proto} -m ${r.proto} --dport ${r.dport}` : r.synOnly ? '-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN' : `-p ${r.proto}`;
            return `-A ${c.nat} ${match} ${comment(r.comment)} -j REDIRECT --to-ports ${r.toPort}`;
          }),
        });
        pre.push(`-A ${IPT_BASE.prerouting} -i ${fw.hostIf} -j ${c.nat}`);
      }
    }
    v4filter.push({ name: c.out, rules: out }, { name: c.ret, rules: ret }, { name: c.in, rules: inn });
    fwd.push(`-A ${IPT_BASE.forward} -i ${fw.hostIf} -j ${c.out}`, `-A ${IPT_BASE.forward} -o ${fw.hostIf} -j ${c.ret}`);
    inp.push(`-A ${IPT_BASE.input} -i ${fw.hostIf} -j ${c.in}`);
    // Routes are IPv4 only: every VM's IPv6 is dropped both ways.
    v6fwd.push(`-A ${IPT_BASE.forward} -i ${fw.hostIf} -j DROP`, `-A ${IPT_BASE.forward} -o ${fw.hostIf} -j DROP`);
    v6inp.push(`-A ${IPT_BASE.input} -i ${fw.hostIf} -j DROP`);
  }
  if (guard) {
    fwd.push(`-A ${IPT_BASE.forward} -i ${guard} -j DROP`, `-A ${IPT_BASE.forward} -o ${guard} -j DROP`);
    inp.push(`-A ${IPT_BASE.input} -i ${guard} -j DROP`);
    v6fwd.push(`-A ${IPT_BASE.forward} -i ${guard} -j DROP`, `-A ${IPT_BASE.forward} -o ${guard} -j DROP`);
    v6inp.push(`-A ${IPT_BASE.input} -i ${guard} -j DROP`);
  }
 // Only when a VM uses it: restoring a jump to a chain that does not exist fails the whole commit.
  const userVerdict: IptChain[] =
    opts.userChain !== undefined && compiled.some(jumpsToUserChain) ? [{ name: IPT_USER_VERDICT, rules: [`-A ${IPT_USER_VERDICT} -j ${opts.userChain}`, `-A ${IPT_USER_VERDICT} -j ACCEPT`] }] : [];
  return {
    // Per-VM chains before the dispatch chains: a jump is only added to a chain already filled.
    v4filter: [...userVerdict, ...v4filter, { name: IPT_BASE.forward, rules: fwd }, { name: IPT_BASE.input, rules: inp }],
    v4nat: [...v4nat, { name: IPT_BASE.prerouting, rules: pre }],
    v6filter: [
      { name: IPT_BASE.forward, rules: v6fwd },
      { name: IPT_BASE.input, rules: v6inp },
    ],
  };
}

/** One `*table ... COMMIT` block declaring (= replacing) the chains, then deleting stale ones. */
export function renderRestoreBlock(table: 'filter' | 'nat', chains: readonly IptChain[], remove: readonly string[] = []): string {
  const lines = [`*${table}`, ...chains.map((c) => `:${c.name} - [0:0]`), ...chains.flatMap((c) => c.rules)];
  // A stale chain is flushed by declaring it, then deleted once the dispatch chain no longer jumps to it.
  for (const name of remove) lines.splice(1, 0, `:${name} - [0:0]`);
  for (const name of remove) lines.push(`-X ${name}`);
  lines.push('COMMIT');
  return lines.join('\n') + '\n';
}

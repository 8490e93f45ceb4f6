// nftables emitter: VmFirewall[] -> one `inet` table qwamos owns, as data (chains of rules made of
// canonical statements) and as `nft -f` text. The same canonical statements are what the driver's
// observe decodes `nft -j` into (src/drivers/nftables.ts), so desired and actual compare structurally,
// never as `nft list` text (nft rewrites that).
//
// Layout of `table inet T`:
//   chain forward     filter hook forward, priority filter, policy accept:
//                       iifname "H" jump out_VM; oifname "H" jump ret_VM   (per VM)
//                       iifname "G" drop; oifname "G" drop                 (guard: unknown qwamos links)
//   chain input       filter hook input, priority filter, policy accept: iifname "H" jump in_VM; guard
//   chain prerouting  nat hook prerouting, priority dstnat: iifname "H" jump nat_VM (VMs with redirects)
//   chain out_VM / ret_VM / in_VM / nat_VM: the VM's own rules.
// Base chains accept by default: qwamos never decides for traffic that is not its VMs'.
import type { IrMatch, IrRule, VmFirewall } from './ir.ts';
import { jumpsToUserChain } from './userchain.ts';

/** One rule as canonical statements (see renderStatement) plus its comment. */
export interface NftRule {
  stmts: string[];
  comment?: string;
}

export interface NftBase {
  type: 'filter' | 'nat';
  hook: 'forward' | 'input' | 'prerouting';
  prio: number;
}

export interface NftChain {
  name: string;
  base?: NftBase;
  rules: NftRule[];
}

export interface NftTable {
  name: string;
  chains: NftChain[];
}

export interface NftEmitOptions {
  /** An iifname/oifname wildcard (e.g. `qwh-*`) for qwamos' host links: any not in the table is dropped. */
  guardPattern?: string;
  /**
   * The user's chain (in this table, never written by qwamos; see ./userchain.ts): direct VMs' accepts
   * jump to `user_verdict` (`jump <userChain>`, `accept`). Give it only when the chain exists.
   */
  userChain?: string;
}

/** qwamos' chain between a direct VM's accept and the user's chain. */
export const USER_VERDICT_CHAIN = 'user_verdict';
const USER_CHAIN_NAME_RE = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;

const IDENT_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;
const GUARD_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,13}\*$/;

export const BASE_CHAINS: Record<'forward' | 'input' | 'prerouting', NftBase> = {
  forward: { type: 'filter', hook: 'forward', prio: 0 },
  input: { type: 'filter', hook: 'input', prio: 0 },
  prerouting: { type: 'nat', hook: 'prerouting', prio: -100 },
};

/** The table qwamos' firewall owns under a prefix (`qw` -> `qwamos_fw`). */
export function firewallTableName(prefix: string): string {
  if (!/^[a-z][a-z0-9]{1,3}$/.test(prefix)) throw new Error(`invalid qwamos prefix ${JSON.stringify(prefix)}`);
  return prefix === 'qw' ? 'qwamos_fw' : `${prefix}_fw`;
}

/** Per-VM chain names (VM names are DNS labels: `-` -> `_` keeps them distinct and nft-safe). */
export function vmChains(vm: string): { out: string; ret: string; in: string; nat: string } {
  const id = vm.replace(/-/g, '_');
  return { out: `out_${id}`, ret: `ret_${id}`, in: `in_${id}`, nat: `nat_${id}` };
}

// ------------------------------------------------------------------------------------------ statements

function cidrText(cidr: string): string {
  return cidr.endsWith('/32') ? cidr.slice(0, -3) : cidr;
}

function matchStmts(m: IrMatch): string[] {
  const s: string[] = [];
  if (m.dst) s.push(`ip daddr ${[...m.dst].sort().join(',')}`);
  if (m.proto && m.ports) s.push(`${m.proto} dport ${m.ports.from}-${m.ports.to}`);
  else if (m.proto === 'icmp' && m.icmpType !== undefined) s.push(`icmp type ${m.icmpType}`);
  else if (m.proto) s.push(`l4proto ${m.proto}`);
  // An empty match on an IPv4-only chain is every packet: no statement at all.
  return s;
}

function ruleOf(r: IrRule): NftRule {
  return { stmts: [...matchStmts(r.match), r.action], comment: r.comment };
}

/** The fixed start of every filter chain of a VM. */
function prologue(fw: VmFirewall, antiSpoof: boolean): NftRule[] {
  const rules: NftRule[] = [{ stmts: ['ct state invalid', 'drop'] }];
  if (fw.failClosed) return rules;
  rules.push({ stmts: ['nfproto ipv6', 'drop'] });
  if (antiSpoof) rules.push({ stmts: [`ip saddr != ${fw.vmAddress}/32`, 'drop'] });
  return rules;
}

/** With a user chain, a direct VM's accepts go through it (the rule's final `accept` becomes a jump). */
function throughUserChain(rule: NftRule): NftRule {
  const last = rule.stmts.length - 1;
  return rule.stmts[last] === 'accept' ? { ...rule, stmts: [...rule.stmts.slice(0, last), `jump ${USER_VERDICT_CHAIN}`] } : rule;
}

/** The chains of one VM, in the order they are written. */
export function vmNftChains(fw: VmFirewall, opts: { userChain?: string } = {}): NftChain[] {
  const names = vmChains(fw.vm);
  const out: NftRule[] = prologue(fw, true);
  const ret: NftRule[] = [];
  const input: NftRule[] = prologue(fw, true);
  if (fw.failClosed) {
    out.push({ stmts: ['reject'], comment: 'fail closed' });
    input.push({ stmts: ['reject'], comment: 'fail closed' });
    ret.push({ stmts: ['drop'] });
  } else {
    if (fw.outbound.allowEstablished) out.push({ stmts: ['ct state established,related', 'accept'] });
    out.push(...fw.outbound.rules.map(ruleOf));
    out.push({ stmts: [fw.outbound.defaultAction], comment: 'default' });
    if (fw.inbound.allowEstablished) ret.push({ stmts: ['ct state established,related', 'accept'] });
    ret.push({ stmts: ['drop'] });
    if (fw.toGateway.allowEstablished) input.push({ stmts: ['ct state established,related', 'accept'] });
    input.push(...fw.toGateway.rules.map(ruleOf));
    input.push({ stmts: ['drop'] });
  }
  const viaUser = opts.userChain !== undefined && jumpsToUserChain(fw);
  const chains: NftChain[] = [
    { name: names.out, rules: viaUser ? out.map(throughUserChain) : out },
    { name: names.ret, rules: viaUser ? ret.map(throughUserChain) : ret },
    { name: names.in, rules: input },
  ];
  if (!fw.failClosed && fw.redirects.length > 0) {
    chains.push({
      name: names.nat,
      rules: fw.redirects.map((r) => ({
        stmts: [
          'nfproto ipv4',
          ...(r.dport !== undefined ? [`${r.proto} dport ${r.dport}-${r.dport}`] : []),
          ...(r.synOnly ? ['tcp syn'] : r.dport === undefined ? [`l4proto ${r.proto}`] : []),
          `redirect ${r.toPort}`,
        ],
        comment: r.comment,
      })),
    });
  }
  return chains;
}

/** The whole table qwamos wants. */
export function buildNftTable(name: string, compiled: readonly VmFirewall[], opts: NftEmitOptions = {}): NftTable {
  if (!IDENT_RE.test(name)) throw new Error(`invalid nft table name ${JSON.stringify(name)}`);
  if (opts.guardPattern !== undefined && !GUARD_RE.test(opts.guardPattern)) throw new Error(`invalid guard pattern ${JSON.stringify(opts.guardPattern)}`);
  if (opts.userChain !== undefined && !USER_CHAIN_NAME_RE.test(opts.userChain)) throw new Error(`invalid user chain name ${JSON.stringify(opts.userChain)}`);
  const vmOpts = opts.userChain !== undefined ? { userChain: opts.userChain } : {};
  const forward: NftRule[] = [];
  const input: NftRule[] = [];
  const prerouting: NftRule[] = [];
  const perVm: NftChain[] = [];
  for (const fw of compiled) {
    const c = vmChains(fw.vm);
    const chains = vmNftChains(fw, vmOpts);
    forward.push({ stmts: [`iifname ${fw.hostIf}`, `jump ${c.out}`] }, { stmts: [`oifname ${fw.hostIf}`, `jump ${c.ret}`] });
    input.push({ stmts: [`iifname ${fw.hostIf}`, `jump ${c.in}`] });
    if (chains.some((ch) => ch.name === c.nat)) prerouting.push({ stmts: [`iifname ${fw.hostIf}`, `jump ${c.nat}`] });
    perVm.push(...chains);
  }
  if (opts.guardPattern) {
    forward.push({ stmts: [`iifname ${opts.guardPattern}`, 'drop'], comment: 'guard' }, { stmts: [`oifname ${opts.guardPattern}`, 'drop'], comment: 'guard' });
    input.push({ stmts: [`iifname ${opts.guardPattern}`, 'drop'], comment: 'guard' });
  }
  // Only when a VM uses it: a jump to a user chain that does not exist would fail the whole transaction.
  const userVerdict: NftChain[] =
    opts.userChain !== undefined && compiled.some(jumpsToUserChain)
      ? [{ name: USER_VERDICT_CHAIN, rules: [{ stmts: [`jump ${opts.userChain}`] }, { stmts: ['accept'] }] }]
      : [];
  return {
    name,
    chains: [
      { name: 'forward', base: BASE_CHAINS.forward, rules: forward },
      { name: 'input', base: BASE_CHAINS.input, rules: input },
      { name: 'prerouting', base: BASE_CHAINS.prerouting, rules: prerouting },
      ...userVerdict,
      ...perVm,
    ],
  };
}

// -------------------------------------------------------------------------------------------- text

/** One canonical statement in nft syntax. */
export function renderStatement(stmt: string): string {
  let m: RegExpExecArray | null;
  if ((m = /^ip (saddr|daddr) (!= )?(.+)$/.exec(stmt))) {
    const list = m[3]!.split(',');
    const value = list.length === 1 ? cidrText(list[0]!) : `{ ${list.map(cidrText).join(', ')} }`;
    return `ip ${m[1]} ${m[2] ?? ''}${value}`;
  }
  if ((m = /^(tcp|udp) dport (\d+)-(\d+)$/.exec(stmt))) return `${m[1]} dport ${m[2] === m[3] ? m[2] : `${m[2]}-${m[3]}`}`;
  if ((m = /^icmp type (\d+)$/.exec(stmt))) return `icmp type ${m[1]}`;
  if ((m = /^l4proto (\w+)$/.exec(stmt))) return `meta l4proto ${m[1]}`;
  if ((m = /^nfproto (ipv4|ipv6)$/.exec(stmt))) return `meta nfproto ${m[1]}`;
  if ((m = /^ct state (.+)$/.exec(stmt))) return `ct state ${m[1]}`;
  if ((m = /^(iifname|oifname) (.+)$/.exec(stmt))) return `${m[1]} "${m[2]}"`;
  if (stmt === 'tcp syn') return 'tcp flags & (fin|syn|rst|ack) == syn';
  // A user chain may be named like Docker's (`DOCKER-USER`): nft takes it unquoted (a quoted jump target is a syntax error).
  if ((m = /^jump ([A-Za-z][A-Za-z0-9_-]*)$/.exec(stmt))) return `jump ${m[1]}`;
  if ((m = /^redirect (\d+)$/.exec(stmt))) return `redirect to :${m[1]}`;
  if (stmt === 'reject') return 'reject with icmpx type admin-prohibited';
  if (stmt === 'accept' || stmt === 'drop') return stmt;
  throw new Error(`no nft syntax for statement ${JSON.stringify(stmt)}`);
}

function commentText(c: string): string {
  if (!/^[A-Za-z0-9 ._/()-]{1,128}$/.test(c)) throw new Error(`unsafe nft comment ${JSON.stringify(c)}`);
  return ` comment "${c}"`;
}

export function renderRule(rule: NftRule): string {
  return rule.stmts.map(renderStatement).join(' ') + (rule.comment ? commentText(rule.comment) : '');
}

function baseLine(b: NftBase): string {
  const prio = b.type === 'nat' && b.prio === -100 ? 'dstnat' : b.prio === 0 ? 'filter' : String(b.prio);
  return `type ${b.type} hook ${b.hook} priority ${prio}; policy accept;`;
}

/** The table as one `nft -f` block. */
export function renderNftTable(table: NftTable): string {
  const lines = [`table inet ${table.name} {`];
  for (const c of table.chains) {
    lines.push(`  chain ${c.name} {`);
    if (c.base) lines.push(`    ${baseLine(c.base)}`);
    for (const r of c.rules) lines.push(`    ${renderRule(r)}`);
    lines.push('  }');
  }
  lines.push('}');
  return lines.join('\n') + '\n';
}

/** Replace the whole table in one transaction (create-if-missing, delete, recreate). */
export function renderFullReplace(table: NftTable): string {
  return `table inet ${table.name} {}\ndelete table inet ${table.name}\n${renderNftTable(table)}`;
}

/** Remove the table (create-if-missing first, so it is idempotent). */
export function renderDelete(tableName: string): string {
  return `table inet ${tableName} {}\ndelete table inet ${tableName}\n`;
}

/**
 * Replace only some chains of an existing table, in one transaction: new chains are added, each
 * replaced chain is flushed and refilled, removed chains are deleted last (after the base chains no
 * longer jump to them). Other VMs' chains are not touched.
 */
export function renderChainReplace(table: NftTable, replace: readonly string[], remove: readonly string[]): string {
  const byName = new Map(table.chains.map((c) => [c.name, c]));
  const lines: string[] = [];
  const t = `inet ${table.name}`;
  for (const name of replace) {
    const c = byName.get(name);
    if (!c) throw new Error(`chain ${name} is not in the table`);
    lines.push(c.base ? `add chain ${t} ${name} { ${baseLine(c.base)} }` : `add chain ${t} ${name}`);
  }
  // VM chains first, base chains last: a jump is only ever added to a chain that is already filled.
  const order = [...replace].sort((a, b) => Number(!!byName.get(a)!.base) - Number(!!byName.get(b)!.base));
  for (const name of order) {
    lines.push(`flush chain ${t} ${name}`);
    for (const r of byName.get(name)!.rules) lines.push(`add rule ${t} ${name} ${renderRule(r)}`);
  }
  for (const name of remove) lines.push(`delete chain ${t} ${name}`);
  return lines.join('\n') + (lines.length ? '\n' : '');
}

/**
 * Rebuild qwamos' part of a table that also holds chains qwamos must keep (the user's chain): the
 * chains in `remove` are flushed (dropping their jumps) and deleted, then `table` (if any) is added
 * whole, in one transaction. The table itself and every other object in it stay.
 */
export function renderRebuild(tableName: string, table: NftTable | undefined, remove: readonly string[]): string {
  const t = `inet ${tableName}`;
  const lines = [...remove.map((c) => `flush chain ${t} ${c}`), ...remove.map((c) => `delete chain ${t} ${c}`)];
  return (lines.length ? lines.join('\n') + '\n' : '') + (table ? renderNftTable(table) : '');
}

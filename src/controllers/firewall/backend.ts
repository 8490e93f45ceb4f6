// The firewall backends as the controllers see them: one backend-neutral view of what qwamos owns
// (chain name -> canonical lines), the desired view of compiled VMs, and one sync that writes the whole
// compiled table (the drivers write only the chains that differ, in one checked transaction). Shared by
// the Route and FirewallPolicy controllers; syncs are serialised so two passes never interleave.
import { deleteNftTable, observeNftTable, syncNftTable } from '../../drivers/nftables.ts';
import { observeIpt, removeIpt, syncIpt } from '../../drivers/iptables.ts';
import { runResult } from '../../drivers/exec.ts';
import type { VmFirewall } from '../../firewall/ir.ts';
import { buildIptTables, iptVmChains, IPT_JUMPS, IP6T_JUMPS, type IptTables } from '../../firewall/iptables.ts';
import { buildNftTable, firewallTableName, vmChains, type NftChain, type NftRule } from '../../firewall/nft.ts';
import type { FirewallBackendChoice } from '../../config.ts';

/** What qwamos owns of the firewall, backend-neutral: chain -> its lines in order. */
export interface FirewallView {
  /** nftables: the table exists; iptables: always true. */
  present: boolean;
  chains: Map<string, string[]>;
}

export type BackendName = 'nftables' | 'iptables';

/** The pure half of a backend: what plan needs. */
export interface FirewallShape {
  readonly name: BackendName;
  /** The view the compiled VMs must produce. */
  desiredView(compiled: readonly VmFirewall[]): FirewallView;
  /** The chains that belong to one VM alone. */
  vmChainNames(vm: string): string[];
  /** The shared dispatch chains (they jump to every VM's chains). */
  readonly baseChainNames: readonly string[];
}

export interface FirewallBackend extends FirewallShape {
  observe(): Promise<FirewallView>;
  /** Make the host's firewall the compiled one (none: remove everything qwamos owns). */
  sync(compiled: readonly VmFirewall[]): Promise<void>;
}

export interface FirewallLayoutSettings {
  prefix: string;
  hostNetns?: string;
}

/** qwamos' host links: any the table does not know yet is dropped (`<prefix>h-*`). */
export const guardPattern = (prefix: string): string => `${prefix}h-*`;

const nftLine = (r: NftRule): string => JSON.stringify([r.stmts, r.comment ?? null]);
function nftView(present: boolean, chains: readonly NftChain[]): FirewallView {
  return { present, chains: new Map(chains.map((c) => [c.name, [...(c.base ? [`base ${JSON.stringify(c.base)}`] : []), ...c.rules.map(nftLine)]])) };
}

export function nftShape(prefix: string): FirewallShape & { table: string } {
  const table = firewallTableName(prefix);
  return {
    name: 'nftables',
    table,
    // No VM to filter: sync removes the table.
    desiredView: (compiled) => (compiled.length ? nftView(true, buildNftTable(table, compiled, { guardPattern: guardPattern(prefix) }).chains) : { present: false, chains: new Map() }),
    vmChainNames: (vm) => Object.values(vmChains(vm)),
    baseChainNames: ['forward', 'input', 'prerouting'],
  };
}

const IPT_KEYS = ['v4filter', 'v4nat', 'v6filter'] as const;
const EXPECTED_JUMPS = [
  ...IPT_JUMPS.map(([t, b, target]) => `${t === 'nat' ? 'v4nat' : 'v4filter'} -A ${b} -j ${target}`),
  ...IP6T_JUMPS.map(([, b, target]) => `v6filter -A ${b} -j ${target}`),
];
function iptDesired(t: IptTables): FirewallView {
  const chains = new Map<string, string[]>();
  for (const k of IPT_KEYS) for (const c of t[k]) chains.set(`${k}:${c.name}`, c.rules);
  chains.set('jumps', EXPECTED_JUMPS);
  return { present: true, chains };
}

export function iptShape(prefix: string): FirewallShape {
  return {
    name: 'iptables',
    // No VM to filter: sync removes every QWAMOS chain and the jumps.
    desiredView: (compiled) => (compiled.length ? iptDesired(buildIptTables(compiled, { guardPattern: guardPattern(prefix) })) : { present: true, chains: new Map() }),
    vmChainNames: (vm) => IPT_KEYS.flatMap((k) => Object.values(iptVmChains(vm)).map((n) => `${k}:${n}`)),
    baseChainNames: ['jumps', ...IPT_KEYS.flatMap((k) => ['QWAMOS-FORWARD', 'QWAMOS-INPUT', 'QWAMOS-PREROUTING'].map((n) => `${k}:${n}`))],
  };
}

function serialised(): <T>(job: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return (job) => {
    const next = tail.then(job, job);
    tail = next.catch(() => undefined);
    return next;
  };
}

export function nftBackend(s: FirewallLayoutSettings): FirewallBackend {
  const shape = nftShape(s.prefix);
  const layout = { table: shape.table, ...(s.hostNetns ? { hostNetns: s.hostNetns } : {}) };
  const serial = serialised();
  return {
    ...shape,
    async observe() {
      const o = await observeNftTable(layout);
      return nftView(o.exists, o.chains);
    },
    sync: (compiled) =>
      serial(async () => {
        if (compiled.length === 0) {
          if ((await observeNftTable(layout)).exists) await deleteNftTable(layout);
          return;
        }
        await syncNftTable(layout, buildNftTable(shape.table, compiled, { guardPattern: guardPattern(s.prefix) }));
      }),
  };
}

export function iptBackend(s: FirewallLayoutSettings): FirewallBackend {
  const shape = iptShape(s.prefix);
  const layout = s.hostNetns ? { hostNetns: s.hostNetns } : {};
  const serial = serialised();
  return {
    ...shape,
    async observe() {
      const o = await observeIpt(layout);
      const chains = new Map<string, string[]>();
      for (const k of IPT_KEYS) for (const [name, lines] of o.chains[k]) chains.set(`${k}:${name}`, lines);
      const present = IPT_KEYS.flatMap((k) => o.jumps[k].map((j) => `${k} ${j}`));
      chains.set('jumps', EXPECTED_JUMPS.filter((j) => present.includes(j)));
      return { present: true, chains };
    },
    sync: (compiled) =>
      serial(async () => {
        if (compiled.length === 0) await removeIpt(layout);
        else await syncIpt(layout, buildIptTables(compiled, { guardPattern: guardPattern(s.prefix) }));
      }),
  };
}

/** `auto`: nftables when `nft` works in the host netns, else iptables. Decided once per process. */
export async function chooseBackend(choice: FirewallBackendChoice, s: FirewallLayoutSettings): Promise<FirewallBackend> {
  if (choice === 'nftables') return nftBackend(s);
  if (choice === 'iptables') return iptBackend(s);
  const r = await runResult(['nft', 'list', 'tables'], s.hostNetns ? { netns: s.hostNetns } : {}).catch(() => undefined);
  return r?.exitCode === 0 ? nftBackend(s) : iptBackend(s);
}

// The firewall backends as the controllers see them: one backend-neutral view of what qwamos owns
// (chain name -> canonical lines), the desired view of compiled VMs, and one sync that writes the whole
// compiled table (the drivers write only the chains that differ, in one checked transaction). Shared by
// the Route and FirewallPolicy controllers; syncs are serialised so two passes never interleave.
import { observeNftTable, syncNftTable } from '../../drivers/nftables.ts';
import { dockerUserLines, observeDockerUser, observeIpt, removeIpt, syncDockerUser, syncIpt } from '../../drivers/iptables.ts';
import { CommandError, runResult } from '../../drivers/exec.ts';
import type { VmFirewall } from '../../firewall/ir.ts';
import { closeWithoutUserChain, userChainMissing } from '../../firewall/userchain.ts';
import { buildIptTables, iptVmChains, IPT_JUMPS, IP6T_JUMPS, IPT_USER_VERDICT, type IptTables } from '../../firewall/iptables.ts';
import { buildNftTable, firewallTableName, USER_VERDICT_CHAIN, vmChains, type NftChain, type NftRule } from '../../firewall/nft.ts';
import type { FirewallBackendChoice } from '../../config.ts';

/** What qwamos owns of the firewall, backend-neutral: chain -> its lines in order. */
export interface FirewallView {
  /** nftables: the table exists; iptables: always true. */
  present: boolean;
  chains: Map<string, string[]>;
  /**
   * Docker's DOCKER-USER chain (nftables backend): `present` when it exists (its qwamos lines are the
   * view's `docker-user` chain), or why it could not be read (direct VMs may then be dropped by Docker).
   */
  dockerUser?: { present: true } | { error: string };
  /** The user's chain (QWAMOS_FIREWALL_USER_CHAIN) when configured: `missing` says why direct VMs are closed. */
  userChain?: { name: string; missing?: string };
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
  /** Shared chains no VM's lines are named in (the user chain's verdict chain): compared whole. */
  readonly sharedChainNames: readonly string[];
}

export interface FirewallBackend extends FirewallShape {
  observe(): Promise<FirewallView>;
  /**
   * Make the host's firewall the compiled one (none: remove everything qwamos owns). Returns what was
   * written: the compiled VMs, with direct VMs closed while the configured user chain is missing.
   * The table is read (or a fresh observation reused) while the compiled VMs are still being computed.
   */
  sync(compiled: readonly VmFirewall[] | Promise<readonly VmFirewall[]>): Promise<VmFirewall[]>;
}

export interface FirewallLayoutSettings {
  prefix: string;
  hostNetns?: string;
  /** QWAMOS_FIREWALL_USER_CHAIN. */
  userChain?: string;
}

/** What the user's chain being there (or not) means for the compiled VMs. */
function withUserChain(compiled: readonly VmFirewall[], userChain: FirewallView['userChain']): VmFirewall[] {
  return userChain?.missing ? closeWithoutUserChain(compiled, userChain.missing) : [...compiled];
}

/** qwamos' host links: any the table does not know yet is dropped (`<prefix>h-*`). */
export const guardPattern = (prefix: string): string => `${prefix}h-*`;

const nftLine = (r: NftRule): string => JSON.stringify([r.stmts, r.comment ?? null]);
/** qwamos' part of the table: the user's chain is neither compared nor counted (a table holding only it is not qwamos'). */
function nftView(exists: boolean, chains: readonly NftChain[], userChain?: string): FirewallView {
  const ours = chains.filter((c) => c.name !== userChain);
  return { present: exists && (userChain === undefined || ours.length > 0), chains: new Map(ours.map((c) => [c.name, [...(c.base ? [`base ${JSON.stringify(c.base)}`] : []), ...c.rules.map(nftLine)]])) };
}

/** Marks qwamos' lines in Docker's DOCKER-USER chain (one comment per prefix). */
export const dockerUserComment = (prefix: string): string => `qwamos ${prefix}`;

/** The accepts direct VMs need in DOCKER-USER (nftables backend; see drivers/iptables.ts). */
function dockerUserWanted(prefix: string, compiled: readonly VmFirewall[]): string[] {
  return dockerUserLines(compiled.filter((c) => c.mode === 'direct').map((c) => c.hostIf), dockerUserComment(prefix));
}

/** The `docker-user` view chain: only compared when DOCKER-USER exists (see vmFirewallDrift). */
export const DOCKER_USER_VIEW = 'docker-user';

/** The user's chain in qwamos' nft table: present, or why direct VMs are closed. */
function nftUserChain(table: string, chains: readonly { name: string }[], userChain: string | undefined): FirewallView['userChain'] {
  if (userChain === undefined) return undefined;
  return chains.some((c) => c.name === userChain) ? { name: userChain } : { name: userChain, missing: userChainMissing(userChain, `table inet ${table}`) };
}

export function nftShape(prefix: string, userChain?: string): FirewallShape & { table: string } {
  const table = firewallTableName(prefix);
  const emit = { guardPattern: guardPattern(prefix), ...(userChain !== undefined ? { userChain } : {}) };
  return {
    name: 'nftables',
    table,
    // No VM to filter: sync removes the table (or, when the user's chain is in it, qwamos' chains).
    desiredView: (compiled) => {
      if (!compiled.length) return { present: false, chains: new Map() };
      const view = nftView(true, buildNftTable(table, compiled, emit).chains);
      view.chains.set(DOCKER_USER_VIEW, dockerUserWanted(prefix, compiled));
      return view;
    },
    vmChainNames: (vm) => Object.values(vmChains(vm)),
    baseChainNames: ['forward', 'input', 'prerouting', DOCKER_USER_VIEW],
    sharedChainNames: [USER_VERDICT_CHAIN],
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

function iptUserChain(o: { v4filterChains: Set<string> }, userChain: string | undefined): FirewallView['userChain'] {
  if (userChain === undefined) return undefined;
  return o.v4filterChains.has(userChain) ? { name: userChain } : { name: userChain, missing: userChainMissing(userChain, 'the iptables filter table') };
}

export function iptShape(prefix: string, userChain?: string): FirewallShape {
  const emit = { guardPattern: guardPattern(prefix), ...(userChain !== undefined ? { userChain } : {}) };
  return {
    name: 'iptables',
    // No VM to filter: sync removes every QWAMOS chain and the jumps.
    desiredView: (compiled) => (compiled.length ? iptDesired(buildIptTables(compiled, emit)) : { present: true, chains: new Map() }),
    vmChainNames: (vm) => IPT_KEYS.flatMap((k) => Object.values(iptVmChains(vm)).map((n) => `${k}:${n}`)),
    baseChainNames: ['jumps', ...IPT_KEYS.flatMap((k) => ['QWAMOS-FORWARD', 'QWAMOS-INPUT', 'QWAMOS-PREROUTING'].map((n) => `${k}:${n}`))],
    sharedChainNames: [`v4filter:${IPT_USER_VERDICT}`],
  };
}

const oneLine = (err: unknown): string => (err instanceof Error ? err.message : String(err)).split('\n')[0]!;

/**
 * How long an observation may stand in for the one a sync would make, when nothing was written since:
 * a pass observes, plans and applies within this (and the engine observes again after applying, so a
 * change made by someone else in between is still seen and healed by the next pass).
 */
export const OBSERVATION_REUSE_MS = 5_000;

/**
 * The backend's last observation of what qwamos owns (a pending one too), for the sync that follows
 * it in the same pass: listing a 10,000-rule table costs as much as writing it. Any sync (done or
 * failed) makes every earlier observation stale.
 */
function observationCache<T>(read: () => Promise<T>): { observe(): Promise<T>; forSync(): Promise<T>; written(): void } {
  let epoch = 0;
  let last: { epoch: number; at: number; value: Promise<T> } | undefined;
  return {
    observe() {
      const entry = { epoch, at: Date.now(), value: read() };
      last = entry;
      entry.value.then(
        () => (entry.at = Date.now()),
        () => last === entry && (last = undefined),
      );
      return entry.value;
    },
    forSync() {
      const fresh = last && last.epoch === epoch && Date.now() - last.at < OBSERVATION_REUSE_MS ? last.value : undefined;
      return fresh ?? read();
    },
    written() {
      epoch++;
      last = undefined;
    },
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
  const shape = nftShape(s.prefix, s.userChain);
  const layout = { table: shape.table, ...(s.hostNetns ? { hostNetns: s.hostNetns } : {}) };
  const serial = serialised();
  const ipt = s.hostNetns ? { hostNetns: s.hostNetns } : {};
  const comment = dockerUserComment(s.prefix);
  const emit = { guardPattern: guardPattern(s.prefix), ...(s.userChain !== undefined ? { userChain: s.userChain } : {}) };
  const keep = s.userChain !== undefined ? [s.userChain] : [];
  const table = observationCache(() => observeNftTable(layout));
  return {
    ...shape,
    async observe() {
      const [o, docker] = await Promise.all([table.observe(), observeDockerUser(ipt, comment).catch((err: unknown) => ({ error: oneLine(err) }))]);
      const view = nftView(o.exists, o.chains, s.userChain);
      const userChain = nftUserChain(shape.table, o.chains, s.userChain);
      if (userChain) view.userChain = userChain;
      if ('error' in docker) view.dockerUser = docker;
      else if (docker.exists) {
        view.dockerUser = { present: true };
        view.chains.set(DOCKER_USER_VIEW, docker.ours);
      }
      return view;
    },
    sync: (compiling) =>
      serial(async () => {
        const [observed, compiled] = await Promise.all([table.forSync(), compiling]);
        const written = withUserChain(compiled, nftUserChain(shape.table, observed.chains, s.userChain));
        try {
          await syncNftTable(layout, written.length ? buildNftTable(shape.table, written, emit) : undefined, { observed, keep });
        } finally {
          table.written();
        }
        // After the table: a direct VM is let through Docker's drop only once qwamos' chains judge it.
        await syncDockerUser(ipt, dockerUserWanted(s.prefix, written), comment).catch((err: unknown) => {
          // No iptables tool: no Docker chain qwamos could see either; status says so (view.dockerUser).
          if (!(err instanceof CommandError && err.exitCode === undefined)) throw err;
        });
        return written;
      }),
  };
}

export function iptBackend(s: FirewallLayoutSettings): FirewallBackend {
  const shape = iptShape(s.prefix, s.userChain);
  const layout = s.hostNetns ? { hostNetns: s.hostNetns } : {};
  const serial = serialised();
  const emit = { guardPattern: guardPattern(s.prefix), ...(s.userChain !== undefined ? { userChain: s.userChain } : {}) };
  const saves = observationCache(() => observeIpt(layout));
  return {
    ...shape,
    async observe() {
      const o = await saves.observe();
      const chains = new Map<string, string[]>();
      for (const k of IPT_KEYS) for (const [name, lines] of o.chains[k]) chains.set(`${k}:${name}`, lines);
      const present = IPT_KEYS.flatMap((k) => o.jumps[k].map((j) => `${k} ${j}`));
      chains.set('jumps', EXPECTED_JUMPS.filter((j) => present.includes(j)));
      const userChain = iptUserChain(o, s.userChain);
      return { present: true, chains, ...(userChain ? { userChain } : {}) };
    },
    sync: (compiling) =>
      serial(async () => {
        const [observed, compiled] = await Promise.all([saves.forSync(), compiling]);
        try {
          if (compiled.length === 0) {
            await removeIpt(layout, observed);
            return [];
          }
          const written = withUserChain(compiled, iptUserChain(observed, s.userChain));
          await syncIpt(layout, buildIptTables(written, emit), observed);
          return written;
        } finally {
          saves.written();
        }
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

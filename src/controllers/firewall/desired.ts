// The firewall qwamos wants, compiled WHOLE from the world (pure): every Route with a host link
// (direct, tor, i2p) plus the FirewallPolicies that select its VM. Used by the Route controller and
// the FirewallPolicy controller alike, so both write the same table and judge drift the same way.
import type { World } from '../../engine/contract.ts';
import { compileFirewall, namesToResolve, type NameResolution, type PolicyRule, type VmFirewallInput } from '../../firewall/compile.ts';
import type { VmFirewall } from '../../firewall/ir.ts';
import { closeWithoutUserChain } from '../../firewall/userchain.ts';
import { derivedNames } from '../../drivers/netns.ts';
import type { StoredResource } from '../../store/store.ts';
import { DOCKER_USER_VIEW, type FirewallShape, type FirewallView } from './backend.ts';

/** Tor's listeners on a tor Route's gateway address. */
export const TOR_PORTS = { transPort: 9040, dnsPort: 5353 } as const;
/** i2pd's proxies on an i2p Route's gateway address. */
export const I2P_PORTS = { httpProxyPort: 4444, socksProxyPort: 4447 } as const;

export interface DesiredOptions {
  prefix: string;
  /** A `dnscrypt-proxy` binary exists (it is not supervised yet: see dnsServed). */
  dnscryptAvailable: boolean;
  /** Routes being deleted whose chains must stay for now (their host link is not gone yet). */
  keep?: ReadonlySet<string>;
  /** Set when the configured user chain does not exist (FirewallView.userChain.missing): direct VMs fail closed. */
  userChainMissing?: string;
}

/** The observed state of the user's chain as compile options (its absence closes direct VMs). */
export function userChainOpt(actual: { view: FirewallView }): Pick<DesiredOptions, 'userChainMissing'> {
  const missing = actual.view.userChain?.missing;
  return missing ? { userChainMissing: missing } : {};
}

/** The VMs a FirewallPolicy selects: `vms`, plus every VirtualMachine whose labels match `selector`. */
export function selectedVms(policy: StoredResource<'FirewallPolicy'>, world: World): string[] {
  const names = new Set(policy.spec.vms ?? []);
  const want = policy.spec.selector?.matchLabels;
  if (want && Object.keys(want).length > 0) {
    for (const vm of world.list('VirtualMachine')) {
      const labels = vm.metadata.labels ?? {};
      if (Object.entries(want).every(([k, v]) => labels[k] === v)) names.add(vm.metadata.name);
    }
  }
  return [...names].sort();
}

/** The FirewallPolicies (not being deleted) that select a VM, by name. */
export function policiesFor(vm: string, world: World): StoredResource<'FirewallPolicy'>[] {
  return world
    .list('FirewallPolicy')
    .filter((p) => selectedVms(p, world).includes(vm))
    .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
}

/** Every name any policy uses (all are resolved each pass: the table is compiled whole). */
export function worldNames(world: World): string[] {
  return namesToResolve(world.list('FirewallPolicy').flatMap((p) => (p.spec.rules ?? []) as PolicyRule[]));
}

/**
 * Whether a Route's VM gets DNS, and if not why: `none` never; `dnscrypt` not until dnscrypt-proxy is
 * supervised (never the host's resolver instead).
 */
export function dnsServed(route: StoredResource<'Route'>, dnscryptAvailable: boolean): { served: boolean; why?: string } {
  const dns = route.spec.dns;
  if (dns === 'none') return { served: false, why: 'dns: none' };
  if (dns === 'dnscrypt') {
    return { served: false, why: dnscryptAvailable ? 'dns: dnscrypt: dnscrypt-proxy is installed but not supervised by qwamos yet: the VM gets no DNS' : 'dns: dnscrypt: no dnscrypt-proxy binary found: the VM gets no DNS' };
  }
  return { served: true };
}

/** A Route's compiler input (undefined for `isolated` or without addresses: no host link to filter). */
export function routeInput(route: StoredResource<'Route'>, world: World, opts: DesiredOptions): VmFirewallInput | undefined {
  const { vm, mode, address, gateway } = route.spec;
  if (mode === 'isolated' || !address || !gateway) return undefined;
  const policies = policiesFor(vm, world);
  const dns = dnsServed(route, opts.dnscryptAvailable);
  const input: VmFirewallInput = {
    vm,
    hostIf: derivedNames(opts.prefix, vm).hostIf,
    vmAddress: address,
    gateway,
    mode,
    dnsTargets: dns.served && mode === 'direct' && route.spec.dns === 'host' ? [gateway] : [],
  };
  if (policies.length > 0) {
    // Merged in name order: rules concatenated (first match wins), the first defaultAction set wins.
    const defaultAction = policies.find((p) => p.spec.defaultAction)?.spec.defaultAction;
    input.policy = { ...(defaultAction ? { defaultAction } : {}), rules: policies.flatMap((p) => (p.spec.rules ?? []) as PolicyRule[]) };
    input.policySource = policies.map((p) => `FirewallPolicy/${p.metadata.name}`).join('+');
  }
  if (mode === 'tor') {
    input.tor = { ...TOR_PORTS };
    if (!dns.served) input.noDns = true;
  }
  if (mode === 'i2p') input.i2p = { ...I2P_PORTS };
  return input;
}

/** The whole compiled firewall of the world (Routes not being deleted, plus `keep`). */
export function desiredFirewall(world: World, resolved: ReadonlyMap<string, NameResolution>, opts: DesiredOptions): VmFirewall[] {
  const seen = new Set<string>();
  const inputs: VmFirewallInput[] = [];
  const routes = world.all
    .filter((r): r is StoredResource<'Route'> => r.kind === 'Route' && (!r.deletionRequestedAt || !!opts.keep?.has(r.metadata.name)))
    .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  for (const r of routes) {
    if (seen.has(r.spec.vm)) continue; // two Routes for one VM: the first by name (validation refuses it)
    const input = routeInput(r, world, opts);
    if (!input) continue;
    seen.add(r.spec.vm);
    inputs.push(input);
  }
  const compiled = compileFirewall(inputs, { now: new Date(world.now), resolved });
  return opts.userChainMissing ? closeWithoutUserChain(compiled, opts.userChainMissing) : compiled;
}

type PassMemo = Map<string, { compiled: VmFirewall[]; validUntil: number; views: WeakMap<FirewallShape, FirewallView> }>;
const passMemo = new WeakMap<readonly StoredResource[], WeakMap<ReadonlyMap<string, NameResolution>, PassMemo>>();

/**
 * desiredFirewall and the backend's desired view, computed once per (records, resolved names, options,
 * backend): a pass plans and diffs every Route and policy of a batch against the same records and names
 * (the engine hands each call a world with a fresh `now` but the same `all` until the records change,
 * and an observation resolves names once), and each needs the whole compiled table. `now` only matters
 * through rule expiry, so a result is reused until the earliest expiry it contains: exactly what a
 * fresh compile would give.
 */
export function desiredForPass(world: World, resolved: ReadonlyMap<string, NameResolution>, opts: Omit<DesiredOptions, 'keep'>, shape: FirewallShape): { compiled: VmFirewall[]; view: FirewallView } {
  let byResolved = passMemo.get(world.all);
  if (!byResolved) passMemo.set(world.all, (byResolved = new WeakMap()));
  let byOpts = byResolved.get(resolved);
  if (!byOpts) byResolved.set(resolved, (byOpts = new Map()));
  const key = `${opts.prefix}|${opts.dnscryptAvailable}|${opts.userChainMissing ?? ''}`;
  let entry = byOpts.get(key);
  if (!entry || world.now >= entry.validUntil) {
    const compiled = desiredFirewall(world, resolved, opts);
    const next = msUntilExpiry(compiled, 'all', world.now);
    byOpts.set(key, (entry = { compiled, validUntil: next === undefined ? Infinity : world.now + next, views: new WeakMap() }));
  }
  let view = entry.views.get(shape);
  if (!view) entry.views.set(shape, (view = shape.desiredView(entry.compiled)));
  return { compiled: entry.compiled, view };
}

/** The earliest future rule expiry among these VMs, in ms from `now`, if any. */
export function msUntilExpiry(compiled: readonly VmFirewall[], vms: readonly string[] | 'all', now: number): number | undefined {
  const times = compiled.filter((c) => vms === 'all' || vms.includes(c.vm)).flatMap((c) => (c.nextExpiry ? [Date.parse(c.nextExpiry)] : []));
  return times.length ? Math.max(0, Math.min(...times) - now) : undefined;
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * Pure: what differs between desired and observed in one VM's part of the firewall, one line each:
 * its own chains and, with `withBase`, the dispatch rules naming its host link (and the table itself).
 * A VM with no desired chains must have none left.
 */
export function vmFirewallDrift(shape: FirewallShape, desired: FirewallView, observed: FirewallView, vm: string, hostIf: string, withBase: boolean): string[] {
  const problems: string[] = [];
  const wantsAny = shape.vmChainNames(vm).some((c) => desired.chains.has(c));
  if (wantsAny && !observed.present) return ['firewall table missing'];
  for (const name of shape.vmChainNames(vm)) {
    const want = desired.chains.get(name);
    const have = observed.present ? observed.chains.get(name) : undefined;
    if (!want && !have) continue;
    if (!want) problems.push(`chain ${name} left over`);
    else if (!have) problems.push(`chain ${name} missing`);
    else if (want.length !== have.length || want.some((l, i) => l !== have[i])) problems.push(`chain ${name} differs (${have.length} rules, want ${want.length})`);
  }
  if (withBase) {
    // Shared chains that name no VM (the user chain's verdict chain): every Route checks them whole.
    for (const name of shape.sharedChainNames) {
      const want = desired.chains.get(name);
      const have = observed.chains.get(name);
      if (!want && !have) continue;
      if (!want) problems.push(`chain ${name} left over`);
      else if (!have) problems.push(`chain ${name} missing`);
      else if (want.length !== have.length || want.some((l, i) => l !== have[i])) problems.push(`chain ${name} differs`);
    }
    // Its own dispatch rules, and the guard (`<prefix>h-*`) every VM's closed state relies on.
    const mine = new RegExp(`(^|[\\s"])(${escape(hostIf)}|\\S*h-[*+])([\\s"]|$)`);
    for (const name of shape.baseChainNames) {
      const want = desired.chains.get(name);
      const have = observed.chains.get(name);
      // Docker's DOCKER-USER is compared only where it exists (the observed view has it then).
      if (name === DOCKER_USER_VIEW && !have) continue;
      if (name === 'jumps') {
        const missing = (want ?? []).filter((l) => !(have ?? []).includes(l));
        if (wantsAny && missing.length) problems.push(`jumps missing: ${missing.join(', ')}`);
        continue;
      }
      const a = (want ?? []).filter((l) => mine.test(l) || l.startsWith('base '));
      const b = (have ?? []).filter((l) => mine.test(l) || l.startsWith('base '));
      if (!wantsAny && a.length === 0) {
        if (b.some((l) => !l.startsWith('base '))) problems.push(`dispatch rules for ${hostIf} left in ${name}`);
        continue;
      }
      if (a.length !== b.length || a.some((l, i) => l !== b[i])) problems.push(`dispatch chain ${name} differs for ${hostIf}`);
    }
  }
  return problems;
}

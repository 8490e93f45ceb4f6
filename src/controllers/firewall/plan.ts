// FirewallPolicy plan, diff and report: pure. A policy's part of the firewall is the chains of the VMs
// it selects; when any differs from the world's compiled firewall, the whole table is synced (the
// driver rewrites only what differs). A VM whose rules cannot be compiled (a name that does not
// resolve, an invalid rule) is in reject-all: the policy waits, its condition names the rule, and the
// names are resolved again on the next pass. The other VMs are not affected.
import { waiting, type Action, type FieldDiff, type Plan, type StatusReport, type World } from '../../engine/contract.ts';
import { derivedNames } from '../../drivers/netns.ts';
import { keyOf } from '../../resources/keys.ts';
import type { StoredResource } from '../../store/store.ts';
import type { VmFirewall } from '../../firewall/ir.ts';
import { desiredForPass, userChainOpt, selectedVms, vmFirewallDrift } from './desired.ts';
import type { FirewallObservation } from './service.ts';

export interface SyncFirewallAction extends Action {
  type: 'sync-firewall';
}

/** How soon names are resolved again while a VM is closed because of one. */
export const FAIL_CLOSED_RETRY_MS = 30_000;

function compiledFor(prefix: string, actual: FirewallObservation, world: World): VmFirewall[] {
  return desiredForPass(world, actual.resolved, { prefix, dnscryptAvailable: actual.dnscryptAvailable, ...userChainOpt(actual) }, actual.backend).compiled;
}

/** Per selected VM with a host link: what differs in its chains. */
export function policyDrift(prefix: string, policy: StoredResource<'FirewallPolicy'>, actual: FirewallObservation, world: World): string[] {
  const { view: desired } = desiredForPass(world, actual.resolved, { prefix, dnscryptAvailable: actual.dnscryptAvailable, ...userChainOpt(actual) }, actual.backend);
  return selectedVms(policy, world).flatMap((vm) => vmFirewallDrift(actual.backend, desired, actual.view, vm, derivedNames(prefix, vm).hostIf, false).map((p) => `${vm}: ${p}`));
}

export function planPolicy(prefix: string, policy: StoredResource<'FirewallPolicy'>, actual: FirewallObservation | undefined, world: World): Plan<SyncFirewallAction> {
  const key = keyOf(policy);
  if (!actual) return { actions: [{ type: 'sync-firewall', resource: key, describe: 'write the firewall (not observed)' }] };
  const drift = policyDrift(prefix, policy, actual, world);
  const actions: SyncFirewallAction[] = drift.length ? [{ type: 'sync-firewall', resource: key, describe: `rewrite firewall: ${drift.join('; ')}` }] : [];
  if (policy.deletionRequestedAt) return { actions };
  const vms = selectedVms(policy, world);
  const closed = compiledFor(prefix, actual, world).filter((c) => vms.includes(c.vm) && c.failClosed);
  if (closed.length) {
    return { actions, hold: waiting('FailClosed', closed.map((c) => `VM ${c.vm} rejects all traffic: ${c.failClosed}`).join('; '), FAIL_CLOSED_RETRY_MS) };
  }
  return { actions };
}

export function diffPolicy(prefix: string, policy: StoredResource<'FirewallPolicy'>, actual: FirewallObservation | undefined, world: World): FieldDiff[] {
  if (!actual) return [];
  const drift = policyDrift(prefix, policy, actual, world);
  return drift.length ? [{ field: 'firewall', desired: 'chains as compiled', actual: drift.join('; ') }] : [];
}

/** Status: the VMs it selects, the names it resolved, the VMs closed because of it, the next expiry. */
export function reportPolicy(prefix: string, policy: StoredResource<'FirewallPolicy'>, actual: FirewallObservation | undefined, world: World): StatusReport {
  const vms = selectedVms(policy, world);
  if (!actual) return { fields: { vms } };
  const mine = compiledFor(prefix, actual, world).filter((c) => vms.includes(c.vm));
  const resolved = [...new Map(mine.flatMap((c) => c.resolved).map((r) => [r.name, r.addresses.join(',')]))].map(([name, addresses]) => `${name}=${addresses}`);
  const expiry = mine.map((c) => c.nextExpiry).filter((e): e is string => !!e).sort()[0];
  return {
    fields: {
      vms,
      backend: actual.backend.name,
      resolved: resolved.length ? resolved : undefined,
      failClosed: mine.some((c) => c.failClosed) ? mine.filter((c) => c.failClosed).map((c) => `${c.vm}: ${c.failClosed}`) : undefined,
      nextExpiry: expiry,
    },
  };
}

/** Pure: the earliest rule expiry after `now` over every policy, and the policies it belongs to. */
export function nextRuleExpiry(world: World): { at: number; policies: string[] } | undefined {
  let best: { at: number; policies: string[] } | undefined;
  for (const p of world.list('FirewallPolicy')) {
    for (const r of p.spec.rules ?? []) {
      const t = r.expire ? Date.parse(r.expire) : NaN;
      if (Number.isNaN(t) || t <= world.now) continue;
      if (!best || t < best.at) best = { at: t, policies: [p.metadata.name] };
      else if (t === best.at && !best.policies.includes(p.metadata.name)) best.policies.push(p.metadata.name);
    }
  }
  return best;
}

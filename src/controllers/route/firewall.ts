// A Route's part of qwamos' firewall and of its gateway, planned purely from what observe saw:
//   before the ip changes: the routing backstop (tor/i2p) and the VM's chains, so the closed state
//                          exists before the host link comes up;
//   after them:            for a Route being deleted, its chains, backstop and gateway go once its
//                          host link is gone; for tor/i2p the gateway process is started when dead.
// Ready only when the gateway's sockets listen.
import { waiting, type Action, type FieldDiff, type Hold, type World } from '../../engine/contract.ts';
import { derivedNames } from '../../drivers/netns.ts';
import { keyOf } from '../../resources/keys.ts';
import type { StoredResource } from '../../store/store.ts';
import type { ObservedBackstop } from '../../drivers/policyroute.ts';
import { desiredForPass, userChainOpt, dnsServed, vmFirewallDrift } from '../firewall/desired.ts';
import type { FirewallObservation } from '../firewall/service.ts';
import { FAIL_CLOSED_RETRY_MS } from '../firewall/plan.ts';
import { gatewayMode, type GatewayHealth } from './gateway.ts';

interface Base<T extends string> extends Action {
  type: T;
}
export type FirewallAction =
  /** Before the ip changes: compile the world's firewall and write it. */
  | Base<'sync-firewall'>
  | Base<'ensure-backstop'>
  /** After the ip changes: the deleted Route's chains out (the world's firewall written without it). */
  | Base<'remove-firewall'>
  | Base<'remove-backstop'>
  | Base<'start-gateway'>
  | Base<'stop-gateway'>;

/** What the Route controller observes of the firewall and the gateway (absent: not configured). */
export interface RouteGatewayActual {
  fw?: FirewallObservation;
  backstop?: ObservedBackstop;
  gateway?: GatewayHealth;
}

export interface RouteFirewallPlan {
  pre: FirewallAction[];
  post: FirewallAction[];
  hold?: Hold;
  diff: FieldDiff[];
}

const backstopParts = (b: ObservedBackstop | undefined): string[] =>
  b ? [b.v4Rule ? 'v4 rule' : '', b.v6Rule ? 'v6 rule' : '', b.v4Unreachable ? 'v4 unreachable' : '', b.v6Unreachable ? 'v6 unreachable' : ''].filter(Boolean) : [];

/** How long to look again while a gateway's sockets are not listening yet. */
export const GATEWAY_POLL_MS = 1_000;

export function planRouteFirewall(prefix: string, route: StoredResource<'Route'>, actual: RouteGatewayActual | undefined, world: World): RouteFirewallPlan {
  const key = keyOf(route);
  const out: RouteFirewallPlan = { pre: [], post: [], diff: [] };
  const fw = actual?.fw;
  if (!fw) return out;
  const deleting = Boolean(route.deletionRequestedAt);
  const { vm, mode } = route.spec;
  const hostIf = derivedNames(prefix, vm).hostIf;
  const { view: desired } = desiredForPass(world, fw.resolved, { prefix, dnscryptAvailable: fw.dnscryptAvailable, ...userChainOpt(fw) }, fw.backend);
  const drift = vmFirewallDrift(fw.backend, desired, fw.view, vm, hostIf, true);
  const present = backstopParts(actual?.backstop);
  const wantsGateway = !deleting && gatewayMode(mode);
  if (wantsGateway && present.length < 4) {
    out.pre.push({ type: 'ensure-backstop', resource: key, describe: `routing backstop for ${hostIf} (unreachable, IPv4 and IPv6)` });
    out.diff.push({ field: 'backstop', desired: 'v4 rule,v6 rule,v4 unreachable,v6 unreachable', actual: present.join(',') || '(none)' });
  }
  if (drift.length) {
    (deleting ? out.post : out.pre).push({ type: deleting ? 'remove-firewall' : 'sync-firewall', resource: key, describe: `${deleting ? 'remove firewall chains' : 'rewrite firewall'} (${fw.backend.name}): ${drift.join('; ')}` });
    out.diff.push({ field: 'firewall', desired: deleting ? '(none)' : `chains of ${vm} as compiled`, actual: drift.join('; ') });
  }
  if (!wantsGateway && present.some((p) => p.endsWith('rule'))) out.post.push({ type: 'remove-backstop', resource: key, describe: `remove routing backstop for ${hostIf}` });
  // A direct VM closed because the configured user chain is missing: a condition that names the chain.
  const userChainMissing = fw.view.userChain?.missing;
  if (!deleting && mode === 'direct' && userChainMissing) out.hold = waiting('UserChainMissing', `VM ${vm} rejects all its traffic: ${userChainMissing}`, FAIL_CLOSED_RETRY_MS);
  const gw = actual?.gateway;
  if (deleting && gw?.pid) out.post.push({ type: 'stop-gateway', resource: key, describe: `stop ${gw.kind} (pid ${gw.pid})` });
  if (wantsGateway) {
    const kind = mode === 'tor' ? 'tor' : 'i2pd';
    if (!gw?.pid) {
      out.post.push({ type: 'start-gateway', resource: key, describe: `start ${kind} on ${route.spec.gateway}` });
      out.diff.push({ field: 'gateway', desired: `${kind} running`, actual: gw?.detail ?? `${kind} not running` });
    } else if (!gw.healthy) out.hold = waiting('GatewayStarting', gw.detail, GATEWAY_POLL_MS);
  }
  return out;
}

/** Docker's DOCKER-USER as it concerns a direct VM (nftables backend), or nothing without Docker. */
function dockerUserStatus(d: FirewallObservation['view']['dockerUser']): string | undefined {
  if (!d) return undefined;
  if ('error' in d) return `cannot read Docker's DOCKER-USER chain (${d.error}): if Docker's FORWARD policy is DROP, this VM's forwarded traffic is dropped`;
  return 'accepted in DOCKER-USER (Docker present)';
}

/** The user's chain as it concerns a direct VM, or nothing when none is configured. */
function userChainStatus(u: FirewallObservation['view']['userChain']): string | undefined {
  if (!u) return undefined;
  return u.missing ?? `forwarded traffic qwamos accepts goes through ${u.name}`;
}

/** Status fields: the gateway's health and why the VM has no DNS, if it has none. */
export function reportRouteFirewall(route: StoredResource<'Route'>, actual: RouteGatewayActual | undefined): Record<string, unknown> {
  const dns = dnsServed(route, actual?.fw?.dnscryptAvailable ?? false);
  return {
    gateway: actual?.gateway ? { kind: actual.gateway.kind, pid: actual.gateway.pid, healthy: actual.gateway.healthy, detail: actual.gateway.detail } : undefined,
    dns: route.spec.mode !== 'isolated' && !dns.served ? dns.why : undefined,
    firewallBackend: actual?.fw?.backend.name,
    dockerUser: route.spec.mode === 'direct' ? dockerUserStatus(actual?.fw?.view.dockerUser) : undefined,
    userChain: route.spec.mode === 'direct' ? userChainStatus(actual?.fw?.view.userChain) : undefined,
  };
}

// The FirewallPolicy controller: Qubes-style per-VM rules compiled with every Route into qwamos'
// firewall (nftables table or QWAMOS-* iptables chains, see docs/firewall.md).
//   desired.ts  the world -> compiled firewall (shared with the Route controller); selection; drift
//   backend.ts  nftables / iptables behind one view and one sync
//   service.ts  the shared instance: backend choice, name resolution, observe, sync
//   plan.ts     plan, diff, status report, rule expiry (pure)
import type { Controller, FieldDiff, Plan, StatusReport, World } from '../../engine/contract.ts';
import { keyOf, makeKey, type ObjectKey } from '../../resources/keys.ts';
import type { StoredResource } from '../../store/store.ts';
import { diffPolicy, nextRuleExpiry, planPolicy, reportPolicy, type SyncFirewallAction } from './plan.ts';
import type { FirewallObservation, FirewallService } from './service.ts';

export { FirewallService } from './service.ts';

/** Expiries are also re-read this often (a policy applied while the daemon runs). */
const EXPIRY_RECHECK_MS = 30_000;

export class FirewallPolicyController implements Controller<'FirewallPolicy', FirewallObservation, SyncFirewallAction> {
  readonly kind = 'FirewallPolicy';

  constructor(private readonly firewall: FirewallService) {}

  async observe(resources: StoredResource<'FirewallPolicy'>[], world: World): Promise<Map<ObjectKey, FirewallObservation>> {
    const seen = await this.firewall.observe(world);
    return new Map(resources.map((r) => [keyOf(r), seen]));
  }

  plan(r: StoredResource<'FirewallPolicy'>, actual: FirewallObservation | undefined, world: World): Plan<SyncFirewallAction> {
    return planPolicy(this.firewall.prefix, r, actual, world);
  }

  diff(r: StoredResource<'FirewallPolicy'>, actual: FirewallObservation | undefined, world: World): FieldDiff[] {
    return diffPolicy(this.firewall.prefix, r, actual, world);
  }

  report(r: StoredResource<'FirewallPolicy'>, actual: FirewallObservation | undefined, world: World): StatusReport {
    return reportPolicy(this.firewall.prefix, r, actual, world);
  }

  async apply(actions: SyncFirewallAction[], world: World): Promise<void> {
    if (actions.length) await this.firewall.sync(world);
  }

  /**
   * A pass at each rule expiry, so an expired rule is removed on time (a timer, not a Waiting hold: a
   * policy with an expiring rule is Ready, and the VMs it selects may start).
   */
  watch(notify: (keys: ObjectKey[]) => void, world: () => World): { close(): void } {
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      if (timer) clearTimeout(timer);
      const next = nextRuleExpiry(world());
      const delay = next ? Math.min(next.at - Date.now() + 50, EXPIRY_RECHECK_MS) : EXPIRY_RECHECK_MS;
      timer = setTimeout(() => {
        if (next && Date.now() >= next.at) notify(next.policies.map((n) => makeKey('FirewallPolicy', n)));
        arm();
      }, Math.max(0, delay));
      timer.unref();
    };
    arm();
    return { close: () => timer && clearTimeout(timer) };
  }
}

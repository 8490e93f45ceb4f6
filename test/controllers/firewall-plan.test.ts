// The pure parts of the firewall wiring: which VMs a FirewallPolicy selects, the world compiled whole,
// fail-closed per VM on an unresolved name, rule expiry, and drift judged per resource (a Route: its
// VM's chains and dispatch rules; a FirewallPolicy: the chains of the VMs it selects), on both
// backends' views. And the tor/i2p Route plan: backstop and chains before the link, gateway after.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { makeWorld, type World } from '../../src/engine/contract.ts';
import type { StoredResource } from '../../src/store/store.ts';
import { iptShape, nftShape, type FirewallBackend, type FirewallShape, type FirewallView } from '../../src/controllers/firewall/backend.ts';
import { desiredFirewall, msUntilExpiry, policiesFor, selectedVms, vmFirewallDrift } from '../../src/controllers/firewall/desired.ts';
import { nextRuleExpiry, planPolicy, reportPolicy } from '../../src/controllers/firewall/plan.ts';
import type { FirewallObservation } from '../../src/controllers/firewall/service.ts';
import type { NameResolution } from '../../src/firewall/compile.ts';
import { planRoute } from '../../src/controllers/route/plan.ts';
import type { RouteActual } from '../../src/controllers/route/observe.ts';

const meta = { source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '' };
const routeRes = (name: string, mode: 'direct' | 'tor' | 'i2p' | 'isolated', n: number, deleting = false): StoredResource<'Route'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name },
  spec: mode === 'isolated' ? { vm: name, mode } : { vm: name, mode, address: `10.8.${n}.2/24`, gateway: `10.8.${n}.1` },
  ...meta, ...(deleting ? { deletionRequestedAt: '2026-11-25T12:00:00Z' } : {}),
});
const vmRes = (name: string, labels: Record<string, string> = {}): StoredResource<'VirtualMachine'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'VirtualMachine', metadata: { name, labels }, spec: { memory: '256Mi', boot: { kernel: 'k' } }, ...meta,
} as StoredResource<'VirtualMachine'>);
type Spec = StoredResource<'FirewallPolicy'>['spec'];
const policyRes = (name: string, spec: Spec, deleting = false): StoredResource<'FirewallPolicy'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'FirewallPolicy', metadata: { name }, spec, ...meta,
  ...(deleting ? { deletionRequestedAt: '2026-11-25T12:00:00Z' } : {}),
});

const NOW = Date.parse('2026-11-30T12:00:00Z');
const opts = { prefix: 'qw', dnscryptAvailable: false };
const noNames = new Map<string, NameResolution>();

function backendOf(shape: FirewallShape): FirewallBackend {
  return { ...shape, observe: async () => ({ present: false, chains: new Map() }), sync: async (c) => [...(await c)] };
}
/** What observe would see if the host had exactly what `world` compiles to (then edited by `edit`). */
function observed(shape: FirewallShape, world: World, resolved = noNames, edit?: (v: FirewallView) => void): FirewallObservation {
  const view = shape.desiredView(desiredFirewall(world, resolved, opts));
  const copy: FirewallView = { present: view.present, chains: new Map([...view.chains].map(([k, v]) => [k, [...v]])) };
  edit?.(copy);
  return { view: copy, resolved, backend: backendOf(shape), dnscryptAvailable: false };
}

describe('FirewallPolicy selection and the world compiled whole', () => {
  const web = routeRes('web', 'direct', 1);
  const db = routeRes('db', 'direct', 2);
  const onion = routeRes('onion', 'tor', 3);
  const sandbox = routeRes('sandbox', 'isolated', 4);
  const byName = policyRes('https', { vms: ['web'], defaultAction: 'drop', rules: [{ action: 'accept', proto: 'tcp', dstPorts: '443' }] });
  const byLabel = policyRes('lan', { selector: { matchLabels: { tier: 'back' } }, rules: [{ action: 'reject', dstHost: '10.0.0.0/8' }] });
  const world = makeWorld([web, db, onion, sandbox, vmRes('web', { tier: 'front' }), vmRes('db', { tier: 'back' }), byName, byLabel], NOW);

  test('vms[] and selector.matchLabels select VMs; a VM sees the policies that select it', () => {
    assert.deepEqual(selectedVms(byName, world), ['web']);
    assert.deepEqual(selectedVms(byLabel, world), ['db']);
    assert.deepEqual(policiesFor('db', world).map((p) => p.metadata.name), ['lan']);
    assert.deepEqual(policiesFor('onion', world), []);
  });

  test('every Route with a host link is compiled; a policy changes only the VMs it selects', () => {
    const c = desiredFirewall(world, noNames, opts);
    assert.deepEqual(c.map((f) => `${f.vm}:${f.mode}`), ['db:direct', 'onion:tor', 'web:direct'], 'isolated has no host link');
    const webFw = c.find((f) => f.vm === 'web')!;
    assert.equal(webFw.outbound.defaultAction, 'drop');
    assert.deepEqual(webFw.outbound.rules.map((r) => [r.match.proto, r.match.ports?.from, r.action]), [['tcp', 443, 'accept']]);
    const dbFw = c.find((f) => f.vm === 'db')!;
    assert.equal(dbFw.outbound.defaultAction, 'drop', 'a policy without defaultAction drops the rest');
    assert.deepEqual(dbFw.outbound.rules.map((r) => r.match.dst), [['10.0.0.0/8']]);
    const onionFw = c.find((f) => f.vm === 'onion')!;
    assert.deepEqual(onionFw.redirects.map((r) => r.toPort).sort(), [5353, 9040]);
  });

  test('Routes being deleted are left out unless kept (their link is not gone yet)', () => {
    const w = makeWorld([web, routeRes('db', 'direct', 2, true)], NOW);
    assert.deepEqual(desiredFirewall(w, noNames, opts).map((f) => f.vm), ['web']);
    assert.deepEqual(desiredFirewall(w, noNames, { ...opts, keep: new Set(['db']) }).map((f) => f.vm), ['db', 'web']);
  });

  test('a tor Route with dns none gets no DNSPort and no DNS redirect', () => {
    const t = { ...onion, spec: { ...onion.spec, dns: 'none' as const } };
    const c = desiredFirewall(makeWorld([t], NOW), noNames, opts)[0]!;
    assert.deepEqual(c.redirects.map((r) => r.toPort), [9040]);
    assert.deepEqual(c.toGateway.rules.map((r) => r.comment), ['tor TransPort']);
  });
});

describe('unresolved names fail closed per VM', () => {
  const web = routeRes('web', 'direct', 1);
  const db = routeRes('db', 'direct', 2);
  const pol = policyRes('named', { vms: ['web'], rules: [{ action: 'accept', dstHost: 'api.example.org', proto: 'tcp', dstPorts: '443' }] });
  const world = makeWorld([web, db, vmRes('web'), vmRes('db'), pol], NOW);

  test('the VM whose name failed rejects all; the other VM compiles; the policy waits naming the rule', () => {
    const resolved = new Map<string, NameResolution>([['api.example.org', { error: 'ENOTFOUND' }]]);
    const c = desiredFirewall(world, resolved, opts);
    assert.match(c.find((f) => f.vm === 'web')!.failClosed ?? '', /FirewallPolicy\/named rule 1: name api\.example\.org does not resolve: ENOTFOUND/);
    assert.equal(c.find((f) => f.vm === 'db')!.failClosed, undefined);
    const plan = planPolicy('qw', pol, observed(nftShape('qw'), world, resolved), world);
    assert.deepEqual(plan.actions, [], 'the closed chains are on the host: nothing to write');
    assert.equal(plan.hold?.type, 'Waiting');
    assert.equal(plan.hold?.reason, 'FailClosed');
    assert.match(plan.hold!.message, /VM web rejects all traffic: .*rule 1/);
  });

  test('resolved: the addresses are compiled and shown in status', () => {
    const resolved = new Map<string, NameResolution>([['api.example.org', { addresses: ['192.0.2.7', '192.0.2.5'] }]]);
    const obs = observed(nftShape('qw'), world, resolved);
    assert.deepEqual(planPolicy('qw', pol, obs, world), { actions: [] });
    assert.deepEqual(reportPolicy('qw', pol, obs, world).fields?.resolved, ['api.example.org=192.0.2.5,192.0.2.7']);
    assert.deepEqual(reportPolicy('qw', pol, obs, world).fields?.vms, ['web']);
  });
});

describe('rule expiry', () => {
  const web = routeRes('web', 'direct', 1);
  const soon = new Date(NOW + 90_000).toISOString();
  const later = new Date(NOW + 600_000).toISOString();
  const past = new Date(NOW - 1).toISOString();
  const pol = policyRes('temp', { vms: ['web'], rules: [
    { action: 'accept', proto: 'tcp', dstPorts: '22', expire: past },
    { action: 'accept', proto: 'tcp', dstPorts: '80', expire: later },
    { action: 'accept', proto: 'tcp', dstPorts: '443', expire: soon },
  ] });
  const world = makeWorld([web, vmRes('web'), pol], NOW);

  test('expired rules are left out; the earliest future expiry schedules the next pass', () => {
    const c = desiredFirewall(world, noNames, opts);
    assert.deepEqual(c[0]!.outbound.rules.map((r) => r.match.ports?.from), [80, 443]);
    assert.equal(msUntilExpiry(c, ['web'], NOW), 90_000);
    assert.deepEqual(nextRuleExpiry(world), { at: NOW + 90_000, policies: ['temp'] });
    assert.equal(reportPolicy('qw', pol, observed(nftShape('qw'), world), world).fields?.nextExpiry, soon);
  });

  test('at the expiry the observed chain (with the rule) is drift for the policy: rewritten', () => {
    const obs = observed(nftShape('qw'), world);
    const after = makeWorld([web, vmRes('web'), pol], NOW + 90_001);
    assert.deepEqual(planPolicy('qw', pol, obs, world).actions, []);
    assert.deepEqual(planPolicy('qw', pol, obs, after).actions.map((a) => a.type), ['sync-firewall']);
    assert.equal(nextRuleExpiry(after)?.at, NOW + 600_000);
  });
});

for (const [name, shape] of [['nftables', nftShape('qw')], ['iptables', iptShape('qw')]] as const) {
  describe(`drift per resource (${name} view)`, () => {
    const web = routeRes('web', 'direct', 1);
    const db = routeRes('db', 'direct', 2);
    const pol = policyRes('https', { vms: ['web'], rules: [{ action: 'accept', proto: 'tcp', dstPorts: '443' }] });
    const world = makeWorld([web, db, vmRes('web'), vmRes('db'), pol], NOW);
    const desired = shape.desiredView(desiredFirewall(world, noNames, opts));
    const outChain = (vm: string) => shape.vmChainNames(vm).find((c) => /out_|QWAMOS-O-/.test(c) && desired.chains.has(c))!;

    test('in sync: no drift for anyone', () => {
      const o = observed(shape, world).view;
      for (const vm of ['web', 'db']) assert.deepEqual(vmFirewallDrift(shape, desired, o, vm, `qwh-${vm}`, true), []);
    });

    test('a rule edited in web\'s chain: drift for web (Route and policy), not for db', () => {
      const o = observed(shape, world, noNames, (v) => v.chains.get(outChain('web'))!.splice(-2, 1)).view;
      assert.equal(vmFirewallDrift(shape, desired, o, 'web', 'qwh-web', false).length, 1);
      assert.deepEqual(vmFirewallDrift(shape, desired, o, 'db', 'qwh-db', true), []);
      assert.deepEqual(planPolicy('qw', pol, { ...observed(shape, world), view: o }, world).actions.map((a) => a.type), ['sync-firewall']);
    });

    test('a dispatch rule removed: drift for that Route only (the policy does not own the base chains)', () => {
      const base = shape.baseChainNames.find((c) => desired.chains.get(c)?.some((l) => l.includes('qwh-db')))!;
      const o = observed(shape, world, noNames, (v) => v.chains.set(base, v.chains.get(base)!.filter((l) => !l.includes('qwh-db')))).view;
      assert.match(vmFirewallDrift(shape, desired, o, 'db', 'qwh-db', true).join(), /differs for qwh-db/);
      assert.deepEqual(vmFirewallDrift(shape, desired, o, 'web', 'qwh-web', true), []);
    });

    test('a chain left over from a VM no longer compiled is drift for it; table missing is drift for all', () => {
      const o = observed(shape, world).view;
      const w2 = makeWorld([web, vmRes('web'), pol], NOW);
      const d2 = shape.desiredView(desiredFirewall(w2, noNames, opts));
      assert.ok(vmFirewallDrift(shape, d2, o, 'db', 'qwh-db', true).some((l) => /left over/.test(l)));
      if (name === 'nftables') assert.deepEqual(vmFirewallDrift(shape, desired, { present: false, chains: new Map() }, 'web', 'qwh-web', true), ['firewall table missing']);
      else assert.match(vmFirewallDrift(shape, desired, { present: true, chains: new Map() }, 'web', 'qwh-web', true).join(), /jumps missing/);
      // The last Route gone: sync removes everything, so nothing left is in sync (not "differs").
      const none = shape.desiredView([]);
      const cleaned: FirewallView = name === 'nftables' ? { present: false, chains: new Map() } : { present: true, chains: new Map() };
      assert.deepEqual(vmFirewallDrift(shape, none, cleaned, 'web', 'qwh-web', true), []);
      assert.ok(vmFirewallDrift(shape, none, o, 'web', 'qwh-web', true).length > 0, 'its chains still there: drift');
    });
  });
}

describe('tor and i2p Route plan', () => {
  const onion = routeRes('onion', 'tor', 3);
  const world = makeWorld([onion], NOW);
  const fw = (w: World = world) => observed(nftShape('qw'), w);
  const emptyFw = (): FirewallObservation => ({ ...fw(), view: { present: false, chains: new Map() } });
  const types = (r: StoredResource<'Route'>, a: RouteActual | undefined, w = world) => {
    const p = planRoute('qw', r, a, w);
    return [...p.actions.map((x) => x.type), ...(p.hold ? [`${p.hold.type}:${p.hold.reason}`] : [])];
  };

  test('fresh: backstop and chains before any link, the gateway started last', () => {
    const t = types(onion, { nat: { forwarding: false }, fw: emptyFw() });
    assert.deepEqual(t.slice(0, 2), ['ensure-backstop', 'sync-firewall']);
    assert.equal(t.at(-1), 'start-gateway');
    assert.ok(t.indexOf('create-veth') > 1 && t.indexOf('link-up') > 1);
  });

  test('a controller without a firewall refuses tor (fail closed)', () => {
    assert.deepEqual(types(onion, { nat: { forwarding: false } }), ['Stalled:ModeUnsupported']);
  });

  test('gateway running but not listening yet: wait; dead: started again; killed table: rewritten', () => {
    const full = { v4Rule: true, v6Rule: true, v4Unreachable: true, v6Unreachable: true, hostIf: 'qwh-onion', table: 2000 };
    const base = { nat: { forwarding: false }, fw: fw(), backstop: full };
    const net = (a: RouteActual) => planRoute('qw', onion, a, world).actions.filter((x) => !['start-gateway', 'sync-firewall', 'ensure-backstop'].includes(x.type as string)).map((x): string => x.type);
    const netTypes = net(base);
    const strip = (t: string[]) => t.filter((x) => !netTypes.includes(x));
    assert.deepEqual(strip(types(onion, { ...base, gateway: { kind: 'tor', pid: 7, healthy: false, detail: 'tor pid 7, TransPort closed' } })), ['Waiting:GatewayStarting']);
    assert.deepEqual(strip(types(onion, { ...base, gateway: { kind: 'tor', healthy: false, detail: 'tor not running' } })), ['start-gateway']);
    assert.deepEqual(strip(types(onion, { ...base, fw: emptyFw(), gateway: { kind: 'tor', pid: 7, healthy: true, detail: '' } })), ['sync-firewall']);
    assert.deepEqual(strip(types(onion, { ...base, backstop: { ...full, v6Rule: false }, gateway: { kind: 'tor', pid: 7, healthy: true, detail: '' } })), ['ensure-backstop']);
  });

  test('deleting: the link first, then its chains, backstop and gateway', () => {
    const gone = routeRes('onion', 'tor', 3, true);
    const w = makeWorld([gone], NOW);
    const full = { v4Rule: true, v6Rule: true, v4Unreachable: true, v6Unreachable: true, hostIf: 'qwh-onion', table: 2000 };
    const net = { vm: 'onion', netnsExists: true, paired: true, hostRoutes: [], hostIf: { name: 'qwh-onion', ifindex: 5, up: true, addresses: [] } };
    const t = types(gone, { net, nat: { forwarding: false }, fw: fw(world), backstop: full, gateway: { kind: 'tor', pid: 7, healthy: true, detail: '' } }, w);
    assert.deepEqual(t, ['delete-netns', 'remove-firewall', 'remove-backstop', 'stop-gateway']);
  });
});

describe('Route plan with a user chain (QWAMOS_FIREWALL_USER_CHAIN)', () => {
  const dev = routeRes('dev', 'direct', 4);
  const onion = routeRes('onion', 'tor', 3);
  const world = makeWorld([dev, onion], NOW);
  const missing = 'user chain user_fw (QWAMOS_FIREWALL_USER_CHAIN) does not exist in table inet qwamos_fw: direct VMs fail closed until it is created';
  /** What observe sees after a sync: the view of what sync wrote (direct VMs closed while the chain is missing). */
  const seen = (present: boolean): FirewallObservation => {
    const shape = nftShape('qw', 'user_fw');
    const userChain = present ? { name: 'user_fw' } : { name: 'user_fw', missing };
    const view = shape.desiredView(desiredFirewall(world, noNames, { ...opts, ...(present ? {} : { userChainMissing: missing }) }));
    return { view: { ...view, userChain }, resolved: noNames, backend: backendOf(shape), dnscryptAvailable: false };
  };
  const full = { v4Rule: true, v6Rule: true, v4Unreachable: true, v6Unreachable: true, hostIf: 'qwh-onion', table: 2000 };

  test('missing: the direct Route waits with a condition naming the chain, its VM rejected; the tor Route is unaffected', () => {
    const p = planRoute('qw', dev, { nat: { forwarding: false }, fw: seen(false), uplink: 'up0' } as RouteActual, world);
    assert.equal(p.hold?.type, 'Waiting');
    assert.equal(p.hold?.reason, 'UserChainMissing');
    assert.match(p.hold!.message, /VM dev rejects all its traffic: user chain user_fw \(QWAMOS_FIREWALL_USER_CHAIN\) does not exist/);
    assert.ok(!p.actions.some((a) => a.type === 'sync-firewall'), 'the closed chains are what the host has: no drift');
    const out = seen(false).view.chains.get('out_dev')!;
    assert.match(out.at(-1)!, /reject.*fail closed/);
    const t = planRoute('qw', onion, { nat: { forwarding: false }, fw: seen(false), backstop: full, gateway: { kind: 'tor', pid: 7, healthy: true, detail: '' } }, world);
    assert.equal(t.hold, undefined);
  });

  test('present: no hold; the view it expects jumps to user_verdict; a sync that still holds the closed chains is drift', () => {
    const p = planRoute('qw', dev, { nat: { forwarding: false }, fw: seen(true), uplink: 'up0' } as RouteActual, world);
    assert.equal(p.hold?.reason, undefined);
    assert.ok(seen(true).view.chains.get('user_verdict'));
    // The chain was just created: the host still has the closed chains -> the Route rewrites its chains.
    const stale: FirewallObservation = { ...seen(false), view: { ...seen(false).view, userChain: { name: 'user_fw' } } };
    const again = planRoute('qw', dev, { nat: { forwarding: false }, fw: stale, uplink: 'up0' } as RouteActual, world);
    assert.ok(again.actions.some((a) => a.type === 'sync-firewall' && /out_dev differs/.test(a.describe)), again.actions.map((a) => a.describe).join('; '));
  });
});

// The Route controller's plan and diff are pure: from a resource, what observe saw and the world, the
// actions (and the hold). The ip part (planRouteNet) and the whole Route (planRoute, with NAT).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { derivedNames, tapSpec, type ObservedLink } from '../../src/drivers/netns.ts';
import type { ObservedNftTable } from '../../src/drivers/nft.ts';
import { makeWorld, type FieldDiff, type World } from '../../src/engine/contract.ts';
import { NAT_CHAINS, compileNatTable, masqueradeRule } from '../../src/controllers/route/nat.ts';
import type { ObservedRouteNet, RouteActual } from '../../src/controllers/route/observe.ts';
import { diffRoute, planRoute, planRouteNet as planNet, routeMark, type NetAction, type RouteNet } from '../../src/controllers/route/plan.ts';
import type { StoredResource } from '../../src/store/store.ts';

type NetLayout = { prefix: string };
const routeOf = (d: RouteNet, name = d.vm, deleting = false): StoredResource<'Route'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name }, spec: { ...d },
  source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '',
  ...(deleting ? { deletionRequestedAt: '2026-11-25T12:00:00Z' } : {}),
});
const planRouteNet = (layout: NetLayout, desired: RouteNet | undefined, actual: ObservedRouteNet | undefined): NetAction[] =>
  planNet(layout.prefix, `Route/${desired?.vm ?? actual?.vm ?? 'web'}`, desired, actual);
/** The ip part of the drift fields (no NAT: no uplink observed). */
const diffRouteNet = (layout: NetLayout, desired: RouteNet, actual: ObservedRouteNet | undefined): FieldDiff[] =>
  diffRoute(layout.prefix, routeOf(desired), actual ? { net: actual, nat: { forwarding: true } } : undefined, makeWorld([routeOf(desired)]));
const types = (acts: { type: string }[]) => acts.map((a) => a.type);

describe('planRouteNet (pure)', () => {
  const layout: NetLayout = { prefix: 'qw' };
  const direct: RouteNet = { vm: 'web', mode: 'direct', address: '10.8.0.2/24', gateway: '10.8.0.1' };
  const isolated: RouteNet = { vm: 'web', mode: 'isolated' };
  const link = (name: string, ifindex: number, peer: number, addresses: string[], up = true): ObservedLink => ({
    name,
    ifindex,
    peerIfindex: peer,
    kind: 'veth',
    up,
    addresses,
  });
  const mark = routeMark('qw', 'Route/web');
  const bridge = (up = true): ObservedLink => ({ name: 'qwb-web', ifindex: 3, kind: 'bridge', up, addresses: [], alias: mark });
  const inSync = (): ObservedRouteNet => ({
    vm: 'web',
    netnsExists: true,
    loUp: true,
    loAddresses: [],
    ipv6Disabled: true,
    bridge: bridge(),
    vmIf: { ...link('qwv-web', 2, 7, []), master: 'qwb-web' },
    hostIf: { ...link('qwh-web', 7, 2, ['10.8.0.1/32']), alias: mark },
    paired: true,
    foreignPorts: [],
    vmRoutes: [],
    hostRoutes: ['10.8.0.2'],
  });
  // An isolated route is the same netns without the veth pair and its host route.
  const isolatedInSync = (): ObservedRouteNet => {
    const { vmIf: _vmIf, hostIf: _hostIf, ...rest } = inSync();
    return { ...rest, paired: false, hostRoutes: [] };
  };
  const fields = (d: FieldDiff[]) => d.map((x) => x.field);

  test('derived names', () => {
    assert.deepEqual(derivedNames('qw', 'web'), { netns: 'qw-web', hostIf: 'qwh-web', vmIf: 'qwv-web', bridge: 'qwb-web', tap: 'qwt-web' });
    assert.throws(() => derivedNames('qw', 'a-very-long-vm'), /too long/);
    assert.throws(() => derivedNames('qw', 'Bad;name'), /invalid VM name/);
    assert.doesNotThrow(() => derivedNames('abcd', 'ninechars'));
    assert.doesNotThrow(() => derivedNames('qw', 'elevenchars'));
    assert.throws(() => derivedNames('abcd', 'tenchars10'), /too long/);
    const t = tapSpec('qw', 'web');
    assert.deepEqual([t.netns, t.tap, t.bridge], ['qw-web', 'qwt-web', 'qwb-web']);
    assert.deepEqual(t.create, ['tuntap add dev qwt-web mode tap', 'link set qwt-web master qwb-web up']);
    assert.throws(() => tapSpec('qw', 'a-very-long-vm'), /too long/);
  });

  test('in sync -> empty plan', () => {
    assert.deepEqual(planRouteNet(layout, direct, inSync()), []);
    assert.deepEqual(diffRouteNet(layout, direct, inSync()), []);
    assert.deepEqual(planRouteNet(layout, isolated, isolatedInSync()), []);
    assert.deepEqual(diffRouteNet(layout, isolated, isolatedInSync()), []);
  });

  test('nothing there -> full creation in order: netns, lo, IPv6 off, bridge, veth enslaved, host side', () => {
    const acts = planRouteNet(layout, direct, undefined);
    assert.deepEqual(types(acts), [
      'create-netns',
      'link-up',
      'disable-ipv6',
      'create-bridge',
      'set-mark',
      'link-up',
      'create-veth',
      'set-master',
      'link-up',
      'set-mark',
      'link-up',
      'add-address',
      'add-host-route',
    ]);
    assert.ok(acts.every((a) => a.resource === 'Route/web' && a.describe.length > 0));
    // The only address is the gateway on the host side: the VM netns gets none.
    const addrs = acts.filter((a) => a.type === 'add-address');
    assert.deepEqual(addrs.map((a) => (a.type === 'add-address' ? [a.side, a.link, a.cidr] : [])), [['host', 'qwh-web', '10.8.0.1/32']]);
    const master = acts.find((a) => a.type === 'set-master');
    assert.deepEqual(master?.type === 'set-master' ? [master.netns, master.link, master.bridge] : [], ['qw-web', 'qwv-web', 'qwb-web']);
    const ups = acts.filter((a) => a.type === 'link-up').map((a) => (a.type === 'link-up' ? `${a.side}:${a.link}` : ''));
    assert.deepEqual(ups, ['vm:lo', 'vm:qwb-web', 'vm:qwv-web', 'host:qwh-web']);
  });

  test('isolated -> the netns with lo up, IPv6 off and the bridge, no veth', () => {
    assert.deepEqual(types(planRouteNet(layout, isolated, undefined)), ['create-netns', 'link-up', 'disable-ipv6', 'create-bridge', 'set-mark', 'link-up']);
    // An isolated netns from before bridges: only the bridge and IPv6 are missing.
    assert.deepEqual(types(planRouteNet(layout, isolated, { vm: 'web', netnsExists: true, loUp: true, paired: false, hostRoutes: [] })), [
      'disable-ipv6',
      'create-bridge',
      'set-mark',
      'link-up',
    ]);
  });

  test('direct -> isolated removes the veth, keeps the bridge', () => {
    assert.deepEqual(types(planRouteNet(layout, isolated, inSync())), ['delete-link']);
    assert.deepEqual(diffRouteNet(layout, isolated, inSync()).map((d) => [d.field, d.desired, d.actual]), [['veth', '(none)', 'paired']]);
  });

  test('isolated -> direct adds the veth, enslaved, and the host side', () => {
    assert.deepEqual(types(planRouteNet(layout, direct, isolatedInSync())), ['create-veth', 'set-master', 'link-up', 'set-mark', 'link-up', 'add-address', 'add-host-route']);
  });

  test('netns exists but veth missing', () => {
    const a: ObservedRouteNet = { ...isolatedInSync() };
    const t = types(planRouteNet(layout, direct, a));
    assert.equal(t[0], 'create-veth');
    assert.ok(!t.includes('create-netns') && !t.includes('create-bridge'));
    assert.ok(t.includes('set-master') && t.includes('add-host-route'));
  });

  test('netns without bridge: create it and enslave the veth again', () => {
    const a = inSync();
    delete a.bridge;
    delete a.vmIf!.master;
    assert.deepEqual(types(planRouteNet(layout, direct, a)), ['create-bridge', 'set-mark', 'link-up', 'set-master']);
    assert.deepEqual(fields(diffRouteNet(layout, direct, a)), ['bridge', 'vmIf.master']);
  });

  test('veth not enslaved, or enslaved elsewhere: set the master', () => {
    const a = inSync();
    delete a.vmIf!.master;
    assert.deepEqual(types(planRouteNet(layout, direct, a)), ['set-master']);
    assert.deepEqual(diffRouteNet(layout, direct, a), [{ field: 'vmIf.master', desired: 'qwb-web', actual: '(none)' }]);
    const b = inSync();
    b.vmIf!.master = 'br0';
    assert.deepEqual(types(planRouteNet(layout, direct, b)), ['set-master']);
  });

  test('bridge down -> up; a non-bridge under its name is replaced', () => {
    const a = inSync();
    a.bridge!.up = false;
    const acts = planRouteNet(layout, direct, a);
    assert.deepEqual(types(acts), ['link-up']);
    assert.equal(acts[0]!.type === 'link-up' ? acts[0]!.link : '', 'qwb-web');
    assert.deepEqual(diffRouteNet(layout, direct, a), [{ field: 'bridge', desired: 'up', actual: 'down' }]);
    const b = inSync();
    b.bridge = { ...bridge(), kind: 'tun' };
    assert.deepEqual(types(planRouteNet(layout, direct, b)), ['delete-link', 'create-bridge', 'set-mark', 'link-up', 'set-master']);
  });

  test('IPv6 on (or unknown) -> disabled', () => {
    const a = inSync();
    a.ipv6Disabled = false;
    assert.deepEqual(types(planRouteNet(layout, direct, a)), ['disable-ipv6']);
    assert.deepEqual(diffRouteNet(layout, direct, a), [{ field: 'ipv6', desired: 'disabled', actual: 'enabled' }]);
    delete a.ipv6Disabled;
    assert.deepEqual(types(planRouteNet(layout, direct, a)), ['disable-ipv6']);
  });

  test('stray addresses on the veth, the bridge and lo are removed', () => {
    const a = inSync();
    a.vmIf!.addresses = ['10.8.0.2/24'];
    a.bridge!.addresses = ['10.8.0.9/24'];
    a.loAddresses = ['10.8.0.2/32'];
    const acts = planRouteNet(layout, direct, a);
    assert.deepEqual(types(acts), ['delete-address', 'delete-address', 'delete-address']);
    assert.deepEqual(
      acts.map((x) => (x.type === 'delete-address' ? `${x.side} ${x.link} ${x.cidr}` : '')),
      ['vm lo 10.8.0.2/32', 'vm qwb-web 10.8.0.9/24', 'vm qwv-web 10.8.0.2/24'],
    );
    assert.deepEqual(fields(diffRouteNet(layout, direct, a)), ['vmns.addresses']);
  });

  test('stray routes in the VM netns are removed; kernel routes and routes on foreign links are not', () => {
    const a = inSync();
    a.vmRoutes = [
      { dst: 'default', dev: 'qwv-web' },
      { dst: '10.8.0.0/24', dev: 'qwb-web', protocol: 'kernel' },
      { dst: '10.66.0.0/16', type: 'unreachable' },
      { dst: '10.77.0.0/16', dev: 'qwt-web' },
    ];
    const acts = planRouteNet(layout, direct, a);
    assert.deepEqual(types(acts), ['delete-vm-route', 'delete-vm-route']);
    assert.deepEqual(acts.map((x) => (x.type === 'delete-vm-route' ? x.route.dst : '')), ['default', '10.66.0.0/16']);
    assert.deepEqual(fields(diffRouteNet(layout, direct, a)), ['vmns.routes']);
  });

  test('a VM netns of the old layout (address and default route on the veth) is converted', () => {
    const a = inSync();
    delete a.bridge;
    delete a.vmIf!.master;
    delete a.ipv6Disabled;
    a.vmIf!.addresses = ['10.8.0.2/24'];
    a.vmRoutes = [
      { dst: 'default', dev: 'qwv-web' },
      { dst: '10.8.0.0/24', dev: 'qwv-web', protocol: 'kernel' },
    ];
    assert.deepEqual(types(planRouteNet(layout, direct, a)), ['disable-ipv6', 'create-bridge', 'set-mark', 'link-up', 'set-master', 'delete-address', 'delete-vm-route']);
  });

  test('the tap is left alone; any other bridge port is foreign and released', () => {
    const a = inSync();
    // observe lists as foreign every port but the veth end and the tap: a tap alone leaves none
    a.vmRoutes = [{ dst: '192.168.9.0/24', dev: 'qwx-web' }];
    assert.deepEqual(planRouteNet(layout, direct, a), []);
    assert.deepEqual(diffRouteNet(layout, direct, a), []);
    const b = { ...isolatedInSync(), foreignPorts: ['evil0'] };
    const acts = planRouteNet(layout, isolated, b);
    assert.deepEqual(acts.map((x) => (x.type === 'release-port' ? `${x.netns} ${x.link}` : x.type)), ['qw-web evil0']);
    assert.deepEqual(diffRouteNet(layout, isolated, b), [{ field: 'bridge.ports', desired: '(none foreign)', actual: 'evil0' }]);
  });

  test('a missing or foreign mark on the bridge or the host veth is set', () => {
    const a = inSync();
    delete a.bridge!.alias;
    a.hostIf!.alias = 'qwamos:qw:Route/other';
    const acts = planRouteNet(layout, direct, a);
    assert.deepEqual(acts.map((x) => (x.type === 'set-mark' ? `${x.side} ${x.link} ${x.mark}` : x.type)), ['vm qwb-web qwamos:qw:Route/web', 'host qwh-web qwamos:qw:Route/web']);
    assert.deepEqual(fields(diffRouteNet(layout, direct, a)), ['bridge.mark', 'hostIf.mark']);
  });

  test('links down', () => {
    const a = inSync();
    a.vmIf!.up = false;
    a.hostIf!.up = false;
    a.loUp = false;
    const acts = planRouteNet(layout, direct, a);
    assert.deepEqual(types(acts), ['link-up', 'link-up', 'link-up']);
    assert.deepEqual(acts.map((x) => (x.type === 'link-up' ? x.link : '')), ['lo', 'qwv-web', 'qwh-web']);
  });

  test('host route missing, stale host route removed', () => {
    const a = inSync();
    a.hostRoutes = ['10.8.0.7'];
    assert.deepEqual(types(planRouteNet(layout, direct, a)), ['delete-host-route', 'add-host-route']);
    const b = inSync();
    b.hostRoutes = [];
    assert.deepEqual(types(planRouteNet(layout, direct, b)), ['add-host-route']);
  });

  test('wrong host address: remove wrong, add right, route again', () => {
    const a = inSync();
    a.hostIf!.addresses = ['10.8.0.254/32'];
    assert.deepEqual(types(planRouteNet(layout, direct, a)), ['delete-address', 'add-address', 'add-host-route']);
  });

  test('host-side veth left over without netns', () => {
    const a: ObservedRouteNet = { vm: 'web', netnsExists: false, hostIf: link('qwh-web', 7, 2, []), paired: false, hostRoutes: [] };
    const t = types(planRouteNet(layout, direct, a));
    assert.deepEqual(t.slice(0, 8), ['create-netns', 'link-up', 'disable-ipv6', 'create-bridge', 'set-mark', 'link-up', 'delete-link', 'create-veth']);
    // Not declared: only the leftover goes.
    assert.deepEqual(types(planRouteNet(layout, undefined, a)), ['delete-link']);
  });

  test('unpaired veth ends are replaced, and the new VM end enslaved', () => {
    const a = inSync();
    a.paired = false;
    a.vmIf!.addresses = ['10.8.0.2/24']; // goes with the link: no delete-address
    const t = types(planRouteNet(layout, direct, a));
    assert.deepEqual(t, ['delete-link', 'delete-link', 'create-veth', 'set-master', 'link-up', 'set-mark', 'link-up', 'add-address', 'add-host-route']);
  });

  test('delete removes host link and netns; nothing when absent', () => {
    // Paired: deleting the netns takes the veth (and bridge and tap) with it; apply waits for the host end.
    const del = planRouteNet(layout, undefined, inSync());
    assert.deepEqual(types(del), ['delete-netns']);
    assert.equal(del[0]!.type === 'delete-netns' ? del[0]!.hostIf : '', 'qwh-web');
    const unpaired = { ...inSync(), paired: false };
    assert.deepEqual(types(planRouteNet(layout, undefined, unpaired)), ['delete-link', 'delete-netns']);
    assert.deepEqual(planRouteNet(layout, undefined, undefined), []);
    assert.deepEqual(planRouteNet(layout, undefined, { vm: 'web', netnsExists: false, paired: false, hostRoutes: [] }), []);
  });

  test('direct without address is an error', () => {
    assert.throws(() => planRouteNet(layout, { vm: 'web', mode: 'direct' }, undefined), /needs an address/);
  });
});


// ------------------------------------------------------------------------------------- the whole Route

describe('planRoute (pure): modes, uplink, NAT, deleting', () => {
  const prefix = 'qw';
  const uplink = 'eth0';
  const web = routeOf({ vm: 'web', mode: 'direct', address: '10.8.0.2/24', gateway: '10.8.0.1' });
  const db = routeOf({ vm: 'db', mode: 'direct', address: '10.8.0.3/24', gateway: '10.8.0.1' });
  const vault = routeOf({ vm: 'vault', mode: 'isolated' });
  /** A VM network exactly as planned (what observe sees after apply). */
  const net = (r: StoredResource<'Route'>): ObservedRouteNet => {
    const n = derivedNames(prefix, r.spec.vm);
    const mark = routeMark(prefix, `Route/${r.metadata.name}`);
    const base: ObservedRouteNet = {
      vm: r.spec.vm, netnsExists: true, loUp: true, loAddresses: [], ipv6Disabled: true, vmRoutes: [], foreignPorts: [],
      bridge: { name: n.bridge, ifindex: 3, kind: 'bridge', up: true, addresses: [], alias: mark }, paired: false, hostRoutes: [],
    };
    if (r.spec.mode === 'isolated') return base;
    return {
      ...base, paired: true, hostRoutes: [r.spec.address!.split('/')[0]!],
      vmIf: { name: n.vmIf, ifindex: 2, peerIfindex: 7, kind: 'veth', up: true, addresses: [], master: n.bridge },
      hostIf: { name: n.hostIf, ifindex: 7, peerIfindex: 2, kind: 'veth', up: true, addresses: [`${r.spec.gateway}/32`], alias: mark },
    };
  };
  /** qwamos' table as compiled for these Routes, as observe parses it. */
  const table = (routes: StoredResource<'Route'>[], via = uplink): ObservedNftTable => {
    const c = compileNatTable(routes, via);
    return { family: 'ip', name: 'qwamos', chains: c ? c.chains : [], rules: c ? c.rules : [], others: [] };
  };
  const actualOf = (r: StoredResource<'Route'>, over: Partial<RouteActual> = {}, routes = [web, db]): RouteActual => ({
    net: net(r), nat: { table: table(routes), forwarding: true }, uplink, ...over,
  });
  const world: World = makeWorld([web, db, vault]);
  const kinds = (r: StoredResource<'Route'>, a: RouteActual | undefined, w = world) => {
    const p = planRoute(prefix, r, a, w);
    return [...types(p.actions), ...(p.hold ? [`${p.hold.type}:${p.hold.reason}`] : [])];
  };

  test('in sync: empty plan, no hold, no drift fields', () => {
    for (const r of [web, db, vault]) {
      assert.deepEqual(kinds(r, actualOf(r)), [], r.metadata.name);
      assert.deepEqual(diffRoute(prefix, r, actualOf(r), world), [], r.metadata.name);
    }
  });

  test('a controller built without the firewall stalls tor and i2p (ModeUnsupported), nothing created; deleting them is allowed', () => {
    const tor = routeOf({ vm: 'onion', mode: 'tor', address: '10.8.0.9/24', gateway: '10.8.0.1' });
    const p = planRoute(prefix, tor, undefined, world);
    assert.deepEqual(p.actions, []);
    assert.deepEqual([p.hold?.type, p.hold?.reason], ['Stalled', 'ModeUnsupported']);
    assert.deepEqual(kinds(routeOf({ vm: 'i2', mode: 'i2p', address: '10.8.0.8/24', gateway: '10.8.0.1' }), undefined), ['Stalled:ModeUnsupported']);
    assert.deepEqual(kinds(routeOf(tor.spec, 'onion', true), undefined), []);
  });

  test('a direct Route without an uplink waits (NoUplink) after its ip part; isolated does not care', () => {
    const p = planRoute(prefix, web, { nat: { forwarding: false } }, world);
    assert.equal(p.actions[0]?.type, 'create-netns');
    assert.ok(!p.actions.some((a) => a.type === 'sync-nat'));
    assert.deepEqual([p.hold?.type, p.hold?.reason, p.hold?.type === 'Waiting' ? p.hold.afterMs > 0 : false], ['Waiting', 'NoUplink', true]);
    assert.deepEqual(kinds(vault, { net: net(vault), nat: { forwarding: false } }), []);
  });

  test('NAT added: a missing table, a missing own rule, forwarding off', () => {
    assert.deepEqual(kinds(web, actualOf(web, { nat: { forwarding: true } })), ['sync-nat']);
    assert.deepEqual(kinds(web, actualOf(web, { nat: { table: table([db]), forwarding: true } })), ['sync-nat']);
    assert.deepEqual(kinds(web, actualOf(web, { nat: { table: table([web, db]), forwarding: false } })), ['sync-nat']);
    // Another Route's rule missing is its business, not this one's.
    assert.deepEqual(kinds(web, actualOf(web, { nat: { table: table([web]), forwarding: true } })), []);
  });

  test('NAT removed: a Route being deleted, or no longer direct, with its rule still there', () => {
    const deleting = routeOf(web.spec, 'web', true);
    const w = makeWorld([deleting, db]);
    assert.deepEqual(kinds(deleting, actualOf(web), w), ['delete-netns', 'sync-nat']);
    const nowIsolated = routeOf({ vm: 'web', mode: 'isolated' });
    assert.ok(kinds(nowIsolated, actualOf(web), makeWorld([nowIsolated, db])).includes('sync-nat'));
    // db is not disturbed by web's leftover rule while web is being deleted.
    assert.deepEqual(kinds(db, actualOf(db), w), []);
  });

  test('NAT drift: uplink changed, extra rule, a copy, chain policy/hook/prio, foreign chain or set', () => {
    const drifted = (mutate: (t: ObservedNftTable) => void, over: Partial<RouteActual> = {}) => {
      const t = table([web, db]);
      mutate(t);
      const a = actualOf(web, { nat: { table: t, forwarding: true }, ...over });
      return { plan: kinds(web, a), diff: diffRoute(prefix, web, a, world).map((d) => d.field) };
    };
    const cases: [string, (t: ObservedNftTable) => void, Partial<RouteActual>?][] = [
      ['uplink changed', () => {}, { uplink: 'wlan0' }],
      ['extra masquerade', (t) => t.rules.push(masqueradeRule('10.8.0.99', uplink, 'Route/evil'))],
      ['copy of a rule', (t) => t.rules.push({ ...t.rules[0]! })],
      ['rule without comment', (t) => t.rules.push({ chain: 'postrouting', expr: [{ masquerade: null }] })],
      ['rule in forward', (t) => t.rules.push({ chain: 'forward', expr: [{ drop: null }] })],
      ['forward policy drop', (t) => (t.chains[1] = { ...NAT_CHAINS[1]!, policy: 'drop' })],
      ['postrouting prio', (t) => (t.chains[0] = { ...NAT_CHAINS[0]!, prio: -100 })],
      ['hook changed', (t) => (t.chains[1] = { ...NAT_CHAINS[1]!, hook: 'input' })],
      ['chain missing', (t) => t.chains.pop()],
      ['foreign chain', (t) => t.chains.push({ name: 'sneaky' })],
      ['foreign set', (t) => t.others.push({ kind: 'set', name: 'allow' })],
    ];
    for (const [what, mutate, over] of cases) {
      const r = drifted(mutate, over);
      assert.deepEqual(r.plan, ['sync-nat'], what);
      assert.deepEqual(r.diff, ['nat'], what);
    }
  });

  test('a foreign port on an isolated Route\'s bridge is released; the tap is not foreign', () => {
    const a = actualOf(vault, { net: { ...net(vault), foreignPorts: ['qwx-vault'] } });
    const p = planRoute(prefix, vault, a, world);
    assert.deepEqual(p.actions.map((x) => (x.type === 'release-port' ? x.link : x.type)), ['qwx-vault']);
    assert.deepEqual(diffRoute(prefix, vault, a, world).map((d) => [d.field, d.actual]), [['bridge.ports', 'qwx-vault']]);
  });

  test('isolated: no veth and no NAT; a direct Route turned isolated loses both', () => {
    assert.deepEqual(kinds(vault, actualOf(vault)), []);
    const nowIsolated = routeOf({ vm: 'web', mode: 'isolated' });
    assert.deepEqual(kinds(nowIsolated, actualOf(web), makeWorld([nowIsolated, db])), ['delete-link', 'sync-nat']);
  });

  test('deleting removes the netns (and waits for the paired host veth); nothing when absent', () => {
    const deleting = routeOf(vault.spec, 'vault', true);
    assert.deepEqual(kinds(deleting, actualOf(vault), makeWorld([deleting, web, db])), ['delete-netns']);
    assert.deepEqual(kinds(deleting, { nat: { forwarding: true } }, makeWorld([deleting])), []);
  });
});

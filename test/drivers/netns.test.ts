// The ip driver against the real `ip`, inside namespaces created by the test harness.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { processesSpawned } from '../../src/drivers/exec.ts';
import {
  applyNetActions,
  createTap,
  deleteTap,
  derivedNames,
  diffRouteNet,
  observeRouteNets,
  planRouteNet,
  reconcileRouteNets,
  type NetAction,
  type NetLayout,
  type ObservedRouteNet,
  type RouteNet,
} from '../../src/drivers/netns.ts';
import { syncNat } from '../../src/drivers/nft.ts';
import { createTestHost, ipJson, listAllNetns, tryIn, type TestHost } from '../helpers/hostns.ts';

const types = (acts: NetAction[]) => acts.map((a) => a.type);

// ------------------------------------------------------------------------------------------- pure plan

describe('planRouteNet (pure)', () => {
  const layout: NetLayout = { prefix: 'qw' };
  const direct: RouteNet = { vm: 'web', mode: 'direct', address: '10.8.0.2/24', gateway: '10.8.0.1' };
  const link = (name: string, ifindex: number, peer: number, addresses: string[], up = true) => ({
    name,
    ifindex,
    peerIfindex: peer,
    kind: 'veth',
    up,
    addresses,
  });
  const inSync = (): ObservedRouteNet => ({
    vm: 'web',
    netnsExists: true,
    loUp: true,
    vmIf: link('qwv-web', 2, 7, ['10.8.0.2/24']),
    hostIf: link('qwh-web', 7, 2, ['10.8.0.1/32']),
    paired: true,
    defaultGateway: '10.8.0.1',
    defaultDev: 'qwv-web',
    hostRoutes: ['10.8.0.2'],
  });

  test('derived names', () => {
    assert.deepEqual(derivedNames('qw', 'web'), { netns: 'qw-web', hostIf: 'qwh-web', vmIf: 'qwv-web', tap: 'qwt-web' });
    assert.throws(() => derivedNames('qw', 'a-very-long-vm'), /too long/);
    assert.throws(() => derivedNames('qw', 'Bad;name'), /invalid VM name/);
    assert.doesNotThrow(() => derivedNames('abcd', 'ninechars'));
    assert.doesNotThrow(() => derivedNames('qw', 'elevenchars'));
    assert.throws(() => derivedNames('abcd', 'tenchars10'), /too long/);
  });

  test('in sync -> empty plan', () => {
    assert.deepEqual(planRouteNet(layout, direct, inSync()), []);
    assert.deepEqual(diffRouteNet(layout, direct, inSync()), []);
  });

  test('nothing there -> full creation in order', () => {
    assert.deepEqual(types(planRouteNet(layout, direct, undefined)), [
      'create-netns',
      'link-up',
      'create-veth',
      'link-up',
      'add-address',
      'add-host-route',
      'add-address',
      'link-up',
      'set-default-route',
    ]);
    const acts = planRouteNet(layout, direct, undefined);
    assert.ok(acts.every((a) => a.resource === 'Route/web' && a.describe.length > 0));
    const hostAddr = acts.find((a) => a.type === 'add-address' && a.side === 'host');
    assert.equal(hostAddr && 'cidr' in hostAddr ? hostAddr.cidr : '', '10.8.0.1/32');
  });

  test('isolated -> only the netns with lo up', () => {
    assert.deepEqual(types(planRouteNet(layout, { vm: 'web', mode: 'isolated' }, undefined)), ['create-netns', 'link-up']);
    assert.deepEqual(planRouteNet(layout, { vm: 'web', mode: 'isolated' }, { vm: 'web', netnsExists: true, loUp: true, paired: false, hostRoutes: [] }), []);
  });

  test('direct -> isolated removes the veth', () => {
    assert.deepEqual(types(planRouteNet(layout, { vm: 'web', mode: 'isolated' }, inSync())), ['delete-link']);
  });

  test('netns exists but veth missing', () => {
    const a: ObservedRouteNet = { vm: 'web', netnsExists: true, loUp: true, paired: false, hostRoutes: [] };
    const t = types(planRouteNet(layout, direct, a));
    assert.equal(t[0], 'create-veth');
    assert.ok(!t.includes('create-netns'));
    assert.ok(t.includes('set-default-route') && t.includes('add-host-route'));
  });

  test('wrong VM address: remove wrong, add right, set the default route again', () => {
    const a = inSync();
    a.vmIf!.addresses = ['10.8.0.9/24'];
    const acts = planRouteNet(layout, direct, a);
    assert.deepEqual(types(acts), ['delete-address', 'add-address', 'set-default-route']);
    assert.deepEqual(acts.map((x) => ('cidr' in x ? x.cidr : '')), ['10.8.0.9/24', '10.8.0.2/24', '']);
  });

  test('links down', () => {
    const a = inSync();
    a.vmIf!.up = false;
    a.hostIf!.up = false;
    a.loUp = false;
    assert.deepEqual(types(planRouteNet(layout, direct, a)), ['link-up', 'link-up', 'link-up', 'set-default-route']);
  });

  test('default route missing or wrong', () => {
    const a = inSync();
    delete a.defaultGateway;
    delete a.defaultDev;
    assert.deepEqual(types(planRouteNet(layout, direct, a)), ['set-default-route']);
    const b = inSync();
    b.defaultGateway = '10.8.0.254';
    assert.deepEqual(types(planRouteNet(layout, direct, b)), ['set-default-route']);
  });

  test('host route missing, stale host route removed', () => {
    const a = inSync();
    a.hostRoutes = ['10.8.0.7'];
    assert.deepEqual(types(planRouteNet(layout, direct, a)), ['delete-host-route', 'add-host-route']);
  });

  test('host-side veth left over without netns', () => {
    const a: ObservedRouteNet = { vm: 'web', netnsExists: false, hostIf: link('qwh-web', 7, 2, []), paired: false, hostRoutes: [] };
    const t = types(planRouteNet(layout, direct, a));
    assert.deepEqual(t.slice(0, 4), ['create-netns', 'link-up', 'delete-link', 'create-veth']);
    // Not declared: only the leftover goes.
    assert.deepEqual(types(planRouteNet(layout, undefined, a)), ['delete-link']);
  });

  test('unpaired veth ends are replaced', () => {
    const a = inSync();
    a.paired = false;
    const t = types(planRouteNet(layout, direct, a));
    assert.deepEqual(t.slice(0, 3), ['delete-link', 'delete-link', 'create-veth']);
  });

  test('delete removes host link and netns; nothing when absent', () => {
    // Paired: deleting the netns takes the veth with it; apply waits for the host end to vanish.
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

// ---------------------------------------------------------------------------------------- real host

describe('netns driver on a test host', () => {
  let th: TestHost;
  let layout: NetLayout;
  const web: RouteNet = { vm: 'web', mode: 'direct', address: '10.8.0.2/24', gateway: '10.8.0.1' };
  const vault: RouteNet = { vm: 'vault', mode: 'isolated' };
  const ping = (ns: string, addr: string) => tryIn(ns, ['busybox', 'ping', '-c1', '-W2', addr]);

  async function planAll(desired: RouteNet[]): Promise<NetAction[]> {
    const actual = await observeRouteNets(layout);
    const want = new Map(desired.map((d) => [d.vm, d]));
    const acts: NetAction[] = [];
    for (const vm of new Set([...want.keys(), ...actual.keys()])) acts.push(...planRouteNet(layout, want.get(vm), actual.get(vm)));
    return acts;
  }
  async function apply(desired: RouteNet[]): Promise<void> {
    await applyNetActions(layout, await planAll(desired));
  }

  before(async () => {
    th = await createTestHost();
    layout = { prefix: th.prefix, hostNetns: th.hostNs };
  });
  after(async () => {
    await th?.cleanup();
    if (th) assert.deepEqual((await listAllNetns()).filter((n) => n.startsWith(th.prefix)), []);
  });

  test('apply a direct and an isolated route; checked with our own ip calls', async () => {
    await apply([web, vault]);
    const w = derivedNames(th.prefix, 'web');
    const v = derivedNames(th.prefix, 'vault');
    const all = await listAllNetns();
    assert.ok(all.includes(w.netns) && all.includes(v.netns));

    const hostLinks = await ipJson(th.hostNs, ['addr', 'show']);
    const hw = hostLinks.find((l) => l.ifname === w.hostIf);
    assert.ok(hw, 'host-side veth exists in the host netns');
    assert.ok(hw.flags.includes('UP'));
    assert.deepEqual(hw.addr_info.filter((a: any) => a.family === 'inet').map((a: any) => `${a.local}/${a.prefixlen}`), ['10.8.0.1/32']);
    assert.ok(!hostLinks.some((l) => l.ifname === v.hostIf), 'isolated has no veth');
    const hostRoutes = await ipJson(th.hostNs, ['route', 'show']);
    assert.ok(hostRoutes.some((r) => r.dst === '10.8.0.2' && r.dev === w.hostIf), 'host route to the VM');

    const vmLinks = await ipJson(w.netns, ['addr', 'show']);
    const vw = vmLinks.find((l) => l.ifname === w.vmIf);
    assert.ok(vw && vw.flags.includes('UP'));
    assert.deepEqual(vw.addr_info.filter((a: any) => a.family === 'inet').map((a: any) => `${a.local}/${a.prefixlen}`), ['10.8.0.2/24']);
    assert.ok(vmLinks.find((l) => l.ifname === 'lo').flags.includes('UP'));
    const vmRoutes = await ipJson(w.netns, ['route', 'show']);
    assert.ok(vmRoutes.some((r) => r.dst === 'default' && r.gateway === '10.8.0.1' && r.dev === w.vmIf));

    const isoLinks = await ipJson(v.netns, ['link', 'show']);
    assert.deepEqual(isoLinks.map((l) => l.ifname), ['lo']);
    assert.ok(isoLinks[0].flags.includes('UP'));
    assert.deepEqual(await ipJson(v.netns, ['route', 'show']), []);

    // The host netns must not have been used for anything but its own links.
    assert.ok(!(await listAllNetns()).some((n) => n.startsWith(`${th.prefix}-`) && n !== w.netns && n !== v.netns));
  });

  test('observe -> plan is empty (in sync)', async () => {
    const obs = await observeRouteNets(layout);
    assert.deepEqual([...obs.keys()].sort(), ['vault', 'web']);
    assert.equal(obs.get('web')!.paired, true);
    assert.deepEqual(obs.get('web')!.vmIf!.addresses, ['10.8.0.2/24']);
    assert.deepEqual(planRouteNet(layout, web, obs.get('web')), []);
    assert.deepEqual(planRouteNet(layout, vault, obs.get('vault')), []);
    assert.deepEqual(await planAll([web, vault]), []);
  });

  test('connectivity: direct reaches the internet through NAT, isolated does not', async () => {
    const w = derivedNames(th.prefix, 'web');
    const v = derivedNames(th.prefix, 'vault');
    // The host side reaches the VM over its veth.
    assert.equal((await ping(th.hostNs, '10.8.0.2')).exitCode, 0, 'host -> VM');
    // Count what the internet sees, by source address.
    const counters = `table ip seen {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr ${th.uplinkAddr} icmp type echo-request counter
    ip saddr 10.0.0.0/8 counter
  }
}
`;
    const r = await tryIn(th.internetNs, ['nft', '-f', '-'], counters);
    assert.equal(r.exitCode, 0, r.stderr);
    const seen = async () => {
      const doc = JSON.parse((await tryIn(th.internetNs, ['nft', '-j', 'list', 'table', 'ip', 'seen'])).stdout);
      const rules = doc.nftables.filter((x: any) => x.rule).map((x: any) => x.rule);
      const packets = (i: number) => rules[i].expr.find((e: any) => e.counter).counter.packets as number;
      return { uplink: packets(0), vm: packets(1) };
    };

    const nat = { ...layout, uplink: th.uplink };
    await syncNat(nat, [{ resource: 'Route/web', ip: '10.8.0.2' }]);
    const ok = await ping(w.netns, th.internetAddr);
    assert.equal(ok.exitCode, 0, `direct VM pings the internet: ${ok.stdout} ${ok.stderr}`);
    let c = await seen();
    assert.ok(c.uplink >= 1, 'the internet saw the uplink address (masquerade)');
    assert.equal(c.vm, 0, 'the internet never saw a VM address');

    const bad = await ping(v.netns, th.internetAddr);
    assert.notEqual(bad.exitCode, 0, 'isolated VM cannot reach anything');
    assert.match(bad.stderr + bad.stdout, /unreachable|No route/i);

    // Forwarding stays on, NAT goes: the VM's packet arrives with its own address and gets no answer.
    await syncNat(nat, []);
    assert.notEqual((await ping(w.netns, th.internetAddr)).exitCode, 0, 'no NAT -> no reply');
    c = await seen();
    assert.ok(c.vm >= 1, 'without NAT the internet sees the VM address');

    await syncNat(nat, [{ resource: 'Route/web', ip: '10.8.0.2' }]);
    assert.equal((await ping(w.netns, th.internetAddr)).exitCode, 0);
  });

  test('broken by hand: netns deleted -> repaired', async () => {
    const w = derivedNames(th.prefix, 'web');
    assert.equal((await tryIn(undefined, ['ip', 'netns', 'del', w.netns])).exitCode, 0);
    const acts = await planAll([web, vault]);
    assert.ok(types(acts).includes('create-netns'), types(acts).join(','));
    assert.ok(types(acts).includes('create-veth'));
    await applyNetActions(layout, acts);
    assert.deepEqual(await planAll([web, vault]), []);
    assert.equal((await ping(w.netns, th.internetAddr)).exitCode, 0, 'connectivity is back');
  });

  test('broken by hand: wrong address, links down, routes gone -> repaired', async () => {
    const w = derivedNames(th.prefix, 'web');
    const r1 = await tryIn(undefined, ['ip', '-n', w.netns, '-batch', '-'], `addr flush dev ${w.vmIf}\naddr add 10.8.0.9/24 dev ${w.vmIf}\n`);
    assert.equal(r1.exitCode, 0, r1.stderr);
    let acts = await planAll([web, vault]);
    assert.deepEqual(types(acts), ['delete-address', 'add-address', 'set-default-route']);
    await applyNetActions(layout, acts);
    assert.deepEqual(await planAll([web, vault]), []);

    const r2 = await tryIn(undefined, ['ip', '-n', w.netns, 'link', 'set', w.vmIf, 'down']);
    const r3 = await tryIn(undefined, ['ip', '-n', th.hostNs, 'link', 'set', w.hostIf, 'down']);
    assert.equal(r2.exitCode + r3.exitCode, 0);
    acts = await planAll([web, vault]);
    assert.ok(acts.filter((a) => a.type === 'link-up').length === 2, types(acts).join(','));
    await applyNetActions(layout, acts);
    assert.deepEqual(await planAll([web, vault]), []);

    await tryIn(undefined, ['ip', '-n', w.netns, 'route', 'del', 'default']);
    await tryIn(undefined, ['ip', '-n', th.hostNs, 'route', 'del', '10.8.0.2', 'dev', w.hostIf]);
    acts = await planAll([web, vault]);
    assert.deepEqual(types(acts).sort(), ['add-host-route', 'set-default-route']);
    await applyNetActions(layout, acts);
    assert.deepEqual(await planAll([web, vault]), []);
    assert.equal((await ping(w.netns, th.internetAddr)).exitCode, 0);
  });

  test('leftover host-side link without netns is replaced / pruned', async () => {
    const g = derivedNames(th.prefix, 'ghost');
    assert.equal((await tryIn(undefined, ['ip', '-n', th.hostNs, 'link', 'add', g.hostIf, 'type', 'bridge'])).exitCode, 0);
    const obs = await observeRouteNets(layout);
    assert.equal(obs.get('ghost')?.netnsExists, false);
    assert.equal(obs.get('ghost')?.hostIf?.kind, 'bridge');
    // Undeclared: pruned.
    const acts = await planAll([web, vault]);
    assert.deepEqual(types(acts), ['delete-link']);
    await applyNetActions(layout, acts);
    assert.deepEqual(await planAll([web, vault]), []);
    // Declared: the leftover is replaced by a real veth.
    await tryIn(undefined, ['ip', '-n', th.hostNs, 'link', 'add', g.hostIf, 'type', 'bridge']);
    const ghost: RouteNet = { vm: 'ghost', mode: 'direct', address: '10.8.1.2/24', gateway: '10.8.1.1' };
    await apply([web, vault, ghost]);
    assert.deepEqual(await planAll([web, vault, ghost]), []);
    assert.equal((await ping(th.hostNs, '10.8.1.2')).exitCode, 0);
  });

  test('tap helper: the VM controller\'s tap lives in the VM netns and is left alone by plan', async () => {
    const v = derivedNames(th.prefix, 'vault');
    assert.equal(await createTap(layout, 'vault'), v.tap);
    const links = await ipJson(v.netns, ['link', 'show']);
    assert.ok(links.some((l) => l.ifname === v.tap && l.flags.includes('UP')));
    const obs = await observeRouteNets(layout);
    assert.deepEqual(obs.get('vault')?.tap, { name: v.tap, up: true });
    assert.deepEqual(planRouteNet(layout, vault, obs.get('vault')), []);
    await deleteTap(layout, 'vault');
    await deleteTap(layout, 'vault'); // already gone: fine
    assert.ok(!(await ipJson(v.netns, ['link', 'show'])).some((l) => l.ifname === v.tap));
  });

  test('delete a route -> nothing with its names remains', async () => {
    await apply([vault]); // prunes web and ghost
    for (const vm of ['web', 'ghost']) {
      const n = derivedNames(th.prefix, vm);
      assert.ok(!(await listAllNetns()).includes(n.netns), `${n.netns} gone`);
      const links = await ipJson(th.hostNs, ['link', 'show']);
      assert.ok(!links.some((l) => l.ifname === n.hostIf), `${n.hostIf} gone`);
      const routes = await ipJson(th.hostNs, ['route', 'show']);
      assert.ok(!routes.some((r) => r.dev === n.hostIf));
    }
    assert.deepEqual(await planAll([vault]), []);
    assert.deepEqual([...(await observeRouteNets(layout)).keys()], ['vault']);
  });

  test('observe spawns a constant number of processes; batch timing', async (t) => {
    const many = (count: number, from: number): RouteNet[] =>
      Array.from({ length: count }, (_, i) => ({
        vm: `m${from + i}`,
        mode: 'direct' as const,
        // Qubes-style: every VM on its own veth, all behind the same gateway address.
        address: `10.9.0.${from + i + 2}/24`,
        gateway: '10.9.0.1',
      }));
    const five = many(5, 0);
    await reconcileRouteNets(layout, [vault, ...five]);
    let before = processesSpawned();
    await observeRouteNets(layout);
    const forFive = processesSpawned() - before;

    const twenty = many(20, 0);
    await reconcileRouteNets(layout, [vault, ...twenty]);
    before = processesSpawned();
    const obs = await observeRouteNets(layout);
    const forTwenty = processesSpawned() - before;
    assert.equal(obs.size, 21);
    assert.equal(forTwenty, forFive, 'same process count for 5 and 20 routes');
    assert.equal(forTwenty, 1);
    for (const d of twenty) assert.deepEqual(planRouteNet(layout, d, obs.get(d.vm)), []);
    // The shared gateway works for each VM on its own veth: two of them reach the internet through NAT.
    await syncNat({ ...layout, uplink: th.uplink }, twenty.map((d) => ({ resource: `Route/${d.vm}`, ip: d.address!.split('/')[0]! })));
    for (const vm of ['m0', 'm19']) assert.equal((await ping(derivedNames(th.prefix, vm).netns, th.internetAddr)).exitCode, 0, vm);
    assert.equal((await ping(th.hostNs, '10.9.0.12')).exitCode, 0, 'host reaches m10 over its own veth');

    // 50 routes from scratch (20 -> 70), then a no-op pass, then deletion of the 50.
    const fifty = many(50, 20);
    before = processesSpawned();
    let t0 = performance.now();
    await reconcileRouteNets(layout, [vault, ...twenty, ...fifty]);
    const createMs = performance.now() - t0;
    const createProcs = processesSpawned() - before;
    before = processesSpawned();
    t0 = performance.now();
    const noop = await reconcileRouteNets(layout, [vault, ...twenty, ...fifty]);
    const noopMs = performance.now() - t0;
    const noopProcs = processesSpawned() - before;
    assert.deepEqual(noop, []);
    before = processesSpawned();
    t0 = performance.now();
    await reconcileRouteNets(layout, [vault, ...twenty]);
    const deleteMs = performance.now() - t0;
    const deleteProcs = processesSpawned() - before;
    assert.equal((await observeRouteNets(layout)).size, 21);
    t.diagnostic(`create 50 routes: ${createMs.toFixed(0)} ms, ${createProcs} processes`);
    t.diagnostic(`no-op pass over 71 routes (observe+plan): ${noopMs.toFixed(0)} ms, ${noopProcs} processes`);
    t.diagnostic(`delete 50 routes: ${deleteMs.toFixed(0)} ms, ${deleteProcs} processes`);
    assert.equal(noopProcs, 1);
    assert.ok(createProcs <= 5, `create: ${createProcs}`);
    assert.ok(deleteProcs <= 8, `delete: ${deleteProcs}`);
  });
});

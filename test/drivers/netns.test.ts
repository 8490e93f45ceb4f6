// The ip driver against the real `ip`, inside namespaces created by the test harness.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { processesSpawned } from '../../src/drivers/exec.ts';
import { createTap, deleteTap, derivedNames, observeRouteNets as observeVmCables, type NetLayout } from '../../src/drivers/netns.ts';
import { replaceNftTable } from '../../src/drivers/nft.ts';
import { makeWorld, type FieldDiff } from '../../src/engine/contract.ts';
import { applyNetActions } from '../../src/controllers/route/apply.ts';
import { compileNatTable, natTableName } from '../../src/controllers/route/nat.ts';
import { observeRouteHost, type ObservedRouteNet } from '../../src/controllers/route/observe.ts';
import { diffRoute, planRouteNet as planNet, type NetAction, type RouteNet } from '../../src/controllers/route/plan.ts';
import type { StoredResource } from '../../src/store/store.ts';
import { until } from '../helpers/poll.ts';
import { attachFakeGuest, createTestHost, ipJson, listAllNetns, tryIn, type TestHost } from '../helpers/hostns.ts';

const types = (acts: NetAction[]) => acts.map((a) => a.type);
// The Route's ip part (controller plan + apply) driving the real `ip` through the driver.
const routeOf = (d: RouteNet): StoredResource<'Route'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name: d.vm }, spec: { ...d }, source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '',
});
const observeRouteNets = async (layout: NetLayout, only?: string[]): Promise<Map<string, ObservedRouteNet>> => (await observeRouteHost(layout, only ?? 'all')).nets;
const planRouteNet = (layout: NetLayout, desired: RouteNet | undefined, actual: ObservedRouteNet | undefined): NetAction[] =>
  planNet(layout.prefix, `Route/${desired?.vm ?? actual?.vm ?? ''}`, desired, actual);
const diffRouteNet = (layout: NetLayout, desired: RouteNet, actual: ObservedRouteNet | undefined): FieldDiff[] =>
  diffRoute(layout.prefix, routeOf(desired), actual ? { net: actual, nat: { forwarding: true } } : undefined, makeWorld([routeOf(desired)]));
async function reconcileRouteNets(layout: NetLayout, desired: readonly RouteNet[]): Promise<NetAction[]> {
  const actual = await observeRouteNets(layout);
  const want = new Map(desired.map((d) => [d.vm, d]));
  const actions: NetAction[] = [];
  for (const vm of new Set([...want.keys(), ...actual.keys()])) actions.push(...planRouteNet(layout, want.get(vm), actual.get(vm)));
  if (actions.length) await applyNetActions(layout, actions);
  return actions;
}
/** qwamos' NAT table for these direct addresses, written as the controller writes it. */
async function syncNat(nat: NetLayout & { uplink: string }, list: { resource: string; ip: string }[]): Promise<void> {
  const routes = list.map((d) => routeOf({ vm: d.resource.slice('Route/'.length), mode: 'direct', address: `${d.ip}/24`, gateway: '10.255.255.1' }));
  await replaceNftTable(nat.hostNetns, 'ip', natTableName(nat.prefix), compileNatTable(routes, nat.uplink), { ipv4Forwarding: list.length > 0 });
}

// ---------------------------------------------------------------------------------------- real host

describe('ip driver and the Route net plan on a test host', () => {
  let th: TestHost;
  let layout: NetLayout;
  const web: RouteNet = { vm: 'web', mode: 'direct', address: '10.8.0.2/24', gateway: '10.8.0.1' };
  const vault: RouteNet = { vm: 'vault', mode: 'isolated' };
  const ping = (ns: string, addr: string, wait = 2) => tryIn(ns, ['busybox', 'ping', '-c1', `-W${wait}`, addr]);
  // The guests: a fake one per VM, on the Route's bridge, owning the VM's address.
  const guest = (vm: string, cidr: string, gw: string) => attachFakeGuest(th.prefix, vm, cidr, gw);
  const webGuest = () => guest('web', '10.8.0.2/24', '10.8.0.1');
  const inet = (addrs: { family: string; local: string; prefixlen: number }[]) =>
    addrs.filter((a) => a.family === 'inet' || a.family === 'inet6').map((a) => `${a.local}/${a.prefixlen}`);

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
  /** The VM netns as the kernel shows it: a bridge, its ports, and no address or route at all. */
  async function checkCable(vm: string, ports: string[]): Promise<void> {
    const n = derivedNames(th.prefix, vm);
    const links = await ipJson(n.netns, ['-d', 'addr', 'show']);
    const lo = links.find((l) => l.ifname === 'lo');
    assert.ok(lo?.flags.includes('UP'), 'lo up');
    assert.deepEqual(inet(lo.addr_info), ['127.0.0.1/8'], 'lo has only its loopback address (no ::1: IPv6 is off)');
    const br = links.find((l) => l.ifname === n.bridge);
    assert.equal(br?.linkinfo?.info_kind, 'bridge');
    assert.ok(br.flags.includes('UP'), 'bridge up');
    const enslaved = links.filter((l) => l.master === n.bridge).map((l) => l.ifname).sort();
    assert.deepEqual(enslaved, [...ports].sort(), 'bridge ports');
    for (const l of links.filter((x) => x.ifname !== 'lo')) {
      assert.deepEqual(inet(l.addr_info ?? []), [], `no address on ${l.ifname} (IPv6 link-local included)`);
      if (ports.includes(l.ifname)) assert.ok(l.flags.includes('UP'), `${l.ifname} up`);
    }
    assert.deepEqual(await ipJson(n.netns, ['route', 'show', 'table', 'all']).then((r) => r.filter((x) => x.table !== 'local')), [], 'no route');
    const sysctl = await tryIn(n.netns, ['cat', '/proc/sys/net/ipv6/conf/all/disable_ipv6', '/proc/sys/net/ipv6/conf/default/disable_ipv6']);
    assert.equal(sysctl.stdout.trim().split(/\s+/).join(','), '1,1', 'IPv6 disabled');
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

    // The VM netns is a cable: the veth's VM end on the bridge, no address, no route.
    await checkCable('web', [w.vmIf]);
    const vw = (await ipJson(w.netns, ['-d', 'link', 'show', w.vmIf]))[0];
    assert.equal(vw.linkinfo.info_kind, 'veth');
    assert.equal(vw.master, w.bridge);

    // Isolated: lo and the bridge, nothing else.
    await checkCable('vault', []);
    assert.deepEqual((await ipJson(v.netns, ['link', 'show'])).map((l) => l.ifname), ['lo', v.bridge]);

    // The host netns must not have been used for anything but its own links.
    assert.ok(!(await listAllNetns()).some((n) => n.startsWith(`${th.prefix}-`) && n !== w.netns && n !== v.netns));
  });

  test('observe -> plan is empty (in sync)', async () => {
    const obs = await observeRouteNets(layout);
    assert.deepEqual([...obs.keys()].sort(), ['vault', 'web']);
    const w = obs.get('web')!;
    assert.equal(w.paired, true);
    assert.equal(w.ipv6Disabled, true);
    assert.equal(w.bridge?.kind, 'bridge');
    assert.equal(w.vmIf?.master, derivedNames(th.prefix, 'web').bridge);
    assert.deepEqual(w.vmIf!.addresses, []);
    assert.deepEqual(w.vmRoutes, []);
    assert.deepEqual(planRouteNet(layout, web, obs.get('web')), []);
    assert.deepEqual(planRouteNet(layout, vault, obs.get('vault')), []);
    assert.deepEqual(await planAll([web, vault]), []);
    // Scoped observe looks only into the VM netns asked for (the host side is always read whole).
    const scoped = await observeRouteNets(layout, ['vault']);
    assert.equal(scoped.get('vault')?.bridge?.kind, 'bridge');
    assert.equal(scoped.get('web')?.bridge, undefined);
    assert.ok(scoped.get('web')?.hostIf);
  });

  test('connectivity from fake guests: direct reaches the internet through NAT, isolated nothing, host reaches the guest', async () => {
    const wg = await webGuest();
    const vg = await guest('vault', '10.8.0.5/24', '10.8.0.1');
    assert.ok(!wg.startsWith(`${th.prefix}-`) && !vg.startsWith(`${th.prefix}-`));
    // The fake guests' bridge ports are not the Route's: still in sync, and the ports stay.
    assert.deepEqual(await planAll([web, vault]), []);
    await checkCable('web', [derivedNames(th.prefix, 'web').vmIf, `${th.prefix}t-web`]);
    await checkCable('vault', [`${th.prefix}t-vault`]);

    // The host side reaches the guest across the veth and the bridge.
    assert.equal((await ping(th.hostNs, '10.8.0.2')).exitCode, 0, 'host -> guest');
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
    const ok = await ping(wg, th.internetAddr);
    assert.equal(ok.exitCode, 0, `direct guest pings the internet: ${ok.stdout} ${ok.stderr}`);
    let c = await seen();
    assert.ok(c.uplink >= 1, 'the internet saw the uplink address (masquerade)');
    assert.equal(c.vm, 0, 'the internet never saw a VM address');

    assert.notEqual((await ping(vg, th.internetAddr, 1)).exitCode, 0, 'isolated guest cannot reach the internet');
    assert.notEqual((await ping(vg, '10.8.0.1', 1)).exitCode, 0, 'nor the gateway');
    assert.notEqual((await ping(vg, '10.8.0.2', 1)).exitCode, 0, 'nor another VM');
    assert.notEqual((await ping(th.hostNs, '10.8.0.5', 1)).exitCode, 0, 'and the host cannot reach it');

    // Forwarding stays on, NAT goes: the guest's packet arrives with its own address and gets no answer.
    await syncNat(nat, []);
    assert.notEqual((await ping(wg, th.internetAddr)).exitCode, 0, 'no NAT -> no reply');
    c = await seen();
    assert.ok(c.vm >= 1, 'without NAT the internet sees the VM address');

    await syncNat(nat, [{ resource: 'Route/web', ip: '10.8.0.2' }]);
    assert.equal((await ping(wg, th.internetAddr)).exitCode, 0);
  });

  test('broken by hand: netns deleted -> repaired', async () => {
    const w = derivedNames(th.prefix, 'web');
    assert.equal((await tryIn(undefined, ['ip', 'netns', 'del', w.netns])).exitCode, 0);
    const acts = await planAll([web, vault]);
    for (const t of ['create-netns', 'disable-ipv6', 'create-bridge', 'create-veth', 'set-master'] as const) assert.ok(types(acts).includes(t), `${t} in ${types(acts).join(',')}`);
    await applyNetActions(layout, acts);
    assert.deepEqual(await planAll([web, vault]), []);
    await checkCable('web', [w.vmIf]);
    // The guest's cable went with the netns: plug it in again.
    assert.equal((await ping(await webGuest(), th.internetAddr)).exitCode, 0, 'connectivity is back');
  });

  test('broken by hand: veth released, stray addresses and routes, links down, IPv6 on -> repaired', async () => {
    const w = derivedNames(th.prefix, 'web');
    const port = `${th.prefix}t-web`;
    const wg = `${th.prefix}_gweb`;
    const ipVm = (script: string) => tryIn(undefined, ['ip', '-n', w.netns, '-batch', '-'], script);
    const heal = async (expected: string[]) => {
      const acts = await planAll([web, vault]);
      assert.deepEqual(types(acts).sort(), [...expected].sort());
      await applyNetActions(layout, acts);
      assert.deepEqual(await planAll([web, vault]), []);
    };

    // Released from the bridge: the guest is cut off.
    let r = await ipVm(`link set ${w.vmIf} nomaster\n`);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.notEqual((await ping(wg, th.internetAddr, 1)).exitCode, 0, 'cut off');
    await heal(['set-master']);
    assert.equal((await ping(wg, th.internetAddr)).exitCode, 0);

    // The old layout's address and default route, plus an address on the bridge and on lo, a blackhole.
    r = await ipVm(
      [
        `addr add 10.8.0.2/24 dev ${w.vmIf}`,
        `route add default via 10.8.0.1 dev ${w.vmIf}`,
        `addr add 10.8.0.9/24 dev ${w.bridge}`,
        'addr add 10.8.0.77/32 dev lo',
        'route add blackhole 10.66.0.0/16',
      ].join('\n') + '\n',
    );
    assert.equal(r.exitCode, 0, r.stderr);
    const obs = (await observeRouteNets(layout, ['web'])).get('web')!;
    assert.deepEqual(
      diffRouteNet(layout, web, obs).map((d) => d.field),
      ['vmns.addresses', 'vmns.routes'],
    );
    await heal(['delete-address', 'delete-address', 'delete-address', 'delete-vm-route', 'delete-vm-route']);
    await checkCable('web', [w.vmIf, port]);

    // Bridge down, veth ends down (the kernel drops the host route with its link).
    r = await ipVm(`link set ${w.bridge} down\nlink set ${w.vmIf} down\n`);
    const r2 = await tryIn(undefined, ['ip', '-n', th.hostNs, 'link', 'set', w.hostIf, 'down']);
    assert.equal(r.exitCode + r2.exitCode, 0);
    await heal(['link-up', 'link-up', 'link-up', 'add-host-route']);
    assert.equal((await ping(wg, th.internetAddr)).exitCode, 0);

    // Host route gone.
    await tryIn(undefined, ['ip', '-n', th.hostNs, 'route', 'del', '10.8.0.2', 'dev', w.hostIf]);
    await heal(['add-host-route']);

    // IPv6 on again.
    r = await tryIn(w.netns, ['sh', '-c', 'echo 0 > /proc/sys/net/ipv6/conf/all/disable_ipv6']);
    assert.equal(r.exitCode, 0, r.stderr);
    await heal(['disable-ipv6']);

    // A non-bridge under the bridge's name (bridge deleted and replaced by hand): the guest's port is
    // released by the deletion and the tool does not re-plug it, but the veth is enslaved again.
    r = await ipVm(`link del ${w.bridge}\ntuntap add dev ${w.bridge} mode tun\n`);
    assert.equal(r.exitCode, 0, r.stderr);
    await heal(['delete-link', 'create-bridge', 'set-mark', 'link-up', 'set-master']);
    await checkCable('web', [w.vmIf]);
    assert.equal((await ping(await webGuest(), th.internetAddr)).exitCode, 0);
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
    await guest('ghost', '10.8.1.2/24', '10.8.1.1');
    assert.equal((await ping(th.hostNs, '10.8.1.2')).exitCode, 0);
  });

  test('tap helper: the VM controller\'s tap is a port of the bridge, and is left alone by plan', async () => {
    // The fake guests play the taps under the taps' names: they go first, the real taps come.
    for (const vm of ['web', 'vault']) {
      await tryIn(undefined, ['ip', 'netns', 'del', `${th.prefix}_g${vm}`]);
      await until('fake guest port gone', async () => (await tryIn(`${th.prefix}-${vm}`, ['ip', 'link', 'show', `${th.prefix}t-${vm}`])).exitCode !== 0);
    }
    for (const [vm, desired] of [['vault', vault], ['web', web]] as const) {
      const n = derivedNames(th.prefix, vm);
      assert.equal(await createTap(layout, vm), n.tap);
      const tap = (await ipJson(n.netns, ['-d', 'link', 'show', n.tap]))[0];
      assert.equal(tap.linkinfo.info_kind, 'tun');
      assert.ok(tap.flags.includes('UP'));
      assert.equal(tap.master, n.bridge);
      assert.deepEqual((await observeVmCables(layout, [vm])).get(vm)?.tap, { name: n.tap, up: true, master: n.bridge });
      const obs = await observeRouteNets(layout, [vm]);
      assert.deepEqual(planRouteNet(layout, desired, obs.get(vm)), []);
    }
    // Even when it is down and has an address: the tap is not the Route's.
    const v = derivedNames(th.prefix, 'vault');
    await tryIn(undefined, ['ip', '-n', v.netns, 'link', 'set', v.tap, 'down']);
    assert.deepEqual(await planAll([web, vault, { vm: 'ghost', mode: 'direct', address: '10.8.1.2/24', gateway: '10.8.1.1' }]), []);
    await assert.rejects(createTap(layout, 'nosuchvm'), /nosuchvm|Cannot open network namespace|No such file/);
    for (const vm of ['vault', 'web']) {
      const n = derivedNames(th.prefix, vm);
      await deleteTap(layout, vm);
      await deleteTap(layout, vm); // already gone: fine
      assert.ok(!(await ipJson(n.netns, ['link', 'show'])).some((l) => l.ifname === n.tap));
    }
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
        // Qubes-style: every VM on its own veth and bridge, all behind the same gateway address.
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
    assert.equal(forTwenty, 2, 'one ip (host side with the uplink, every VM netns), one nft');
    for (const d of twenty) assert.deepEqual(planRouteNet(layout, d, obs.get(d.vm)), []);
    // The shared gateway works for each VM on its own veth: two of them reach the internet through NAT.
    await syncNat({ ...layout, uplink: th.uplink }, twenty.map((d) => ({ resource: `Route/${d.vm}`, ip: d.address!.split('/')[0]! })));
    for (const d of [twenty[0]!, twenty[10]!, twenty[19]!]) await guest(d.vm, d.address!, d.gateway!);
    for (const vm of ['m0', 'm19']) assert.equal((await ping(`${th.prefix}_g${vm}`, th.internetAddr)).exitCode, 0, vm);
    assert.equal((await ping(th.hostNs, '10.9.0.12')).exitCode, 0, 'host reaches m10\'s guest over its own veth');
    assert.deepEqual(planRouteNet(layout, twenty[10]!, (await observeRouteNets(layout, ['m10'])).get('m10')), [], 'guest port ignored');

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
    assert.equal(noopProcs, 2);
    assert.ok(createProcs <= 6, `create: ${createProcs}`);
    assert.ok(deleteProcs <= 9, `delete: ${deleteProcs}`);
  });
});

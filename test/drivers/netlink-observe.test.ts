// The netlink observer (one perl process entering every netns with setns) against the ip observer (sh,
// nsenter and `ip -d -j` per netns): on real namespaces made to hold every kind of thing the controllers
// read (bridge with an alias, veth pair across namespaces, tap port, IPv4/IPv6 addresses, routes of
// several types, metrics and protocols, IPv6 off), both must see exactly the same, and the netlink one
// in one process whatever the number of namespaces.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { processesSpawned } from '../../src/drivers/exec.ts';
import { observeNetworks, type NetworkView, type ObserveTarget } from '../../src/drivers/netns.ts';
import { createTestHost, type TestHost } from '../helpers/hostns.ts';

async function ip(netns: string, lines: string[]): Promise<void> {
  await execa('ip', ['-n', netns, '-batch', '-'], { input: lines.join('\n') + '\n' });
}

const plain = (v: NetworkView) => ({ host: v.host, netns: Object.fromEntries([...v.netns].sort(([a], [b]) => a.localeCompare(b))) });

describe('netlink observer', () => {
  let th: TestHost;
  let full: string;
  let empty: string;
  before(async () => {
    th = await createTestHost();
    full = `${th.prefix}-full`;
    empty = `${th.prefix}-empty`;
    await execa('ip', ['netns', 'add', full]);
    await execa('ip', ['netns', 'add', empty]);
    const br = `${th.prefix}b-full`;
    await ip(th.hostNs, [`link add ${th.prefix}h-full type veth peer name ${th.prefix}v-full netns ${full}`, `addr add 10.77.0.1/30 dev ${th.prefix}h-full`, `link set ${th.prefix}h-full alias qwamos:${th.prefix}:Route/full up`]);
    await ip(full, [
      'link set lo up',
      `link add ${br} type bridge forward_delay 0`,
      `link set ${br} alias qwamos:${th.prefix}:Route/full`,
      `link set ${br} up`,
      `tuntap add dev ${th.prefix}t-full mode tap`,
      `link set ${th.prefix}t-full master ${br} up`,
      `link set ${th.prefix}v-full up`,
      `addr add 10.77.0.2/30 dev ${th.prefix}v-full`,
      `addr add 10.8.0.1/24 dev ${br}`,
      `addr add fd00:77::1/64 dev ${br} nodad`,
      'route add default via 10.77.0.1',
      'route add blackhole 10.99.0.0/16',
      'route add unreachable 10.98.0.0/16',
      `route add 10.97.0.0/16 dev ${br} metric 50 proto static`,
      `route add 10.96.0.7 dev ${br}`,
    ]);
    await execa('ip', ['netns', 'exec', empty, 'sh', '-c', 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6']);
  });
  after(async () => {
    await th?.cleanup();
  });

  const targets = (): [string, ObserveTarget][] => [
    ['every netns with the prefix', { hostNetns: th.hostNs, netnsStartingWith: `${th.prefix}-` }],
    ['named ones, one missing', { hostNetns: th.hostNs, netns: [full, `${th.prefix}-gone`, empty] }],
  ];

  test('sees what the ip observer sees', async () => {
    for (const [what, target] of targets()) {
      const viaNetlink = await observeNetworks(target, { observer: 'netlink' });
      const viaIp = await observeNetworks(target, { observer: 'ip' });
      assert.deepEqual(plain(viaNetlink), plain(viaIp), what);
      assert.deepEqual([...viaNetlink.netns.keys()].sort(), [empty, full].sort(), what);
    }
    // The content is really there (so the comparison above compares something).
    const view = (await observeNetworks({ hostNetns: th.hostNs, netns: [full, empty] }, { observer: 'netlink' })).netns;
    const f = view.get(full)!;
    const bridge = f.links.find((l) => l.name === `${th.prefix}b-full`)!;
    assert.deepEqual({ kind: bridge.kind, alias: bridge.alias, up: bridge.up }, { kind: 'bridge', alias: `qwamos:${th.prefix}:Route/full`, up: true });
    assert.deepEqual(bridge.addresses.sort(), ['10.8.0.1/24', 'fd00:77::1/64']);
    assert.equal(f.links.find((l) => l.name === `${th.prefix}t-full`)?.master, bridge.name);
    assert.equal(f.links.find((l) => l.name === `${th.prefix}v-full`)?.peerIfindex !== undefined, true);
    assert.ok(f.routes.some((r) => r.type === 'blackhole' && r.dst === '10.99.0.0/16'));
    assert.ok(f.routes.some((r) => r.dst === '10.97.0.0/16' && r.metric === 50 && r.protocol === 'static'));
    assert.equal(f.ipv6Disabled, false);
    assert.equal(view.get(empty)?.ipv6Disabled, true);
  });

  test('one process for any number of namespaces', async () => {
    const before = processesSpawned();
    await observeNetworks({ hostNetns: th.hostNs, netnsStartingWith: `${th.prefix}-` }, { observer: 'netlink' });
    assert.equal(processesSpawned() - before, 1);
  });

  test('a host netns that does not exist fails the observation, naming it', async () => {
    await assert.rejects(observeNetworks({ hostNetns: `${th.prefix}_nohost`, netns: [] }, { observer: 'netlink' }), /observe network in host netns .*_nohost: cannot enter netns/);
  });
});

// The user's chain (QWAMOS_FIREWALL_USER_CHAIN), end to end on both backends, through the real CLI:
// missing -> the direct Route waits with a condition naming it and its VM is closed (zero packets
// arrive); created by the user with an ACCEPT -> the direct VM's probes arrive, and that ACCEPT opens
// neither the tor nor the isolated VM; a DROP put first in it by the user blocks the direct VM's
// probes (qwamos never touches the chain: a reconcile keeps the DROP), tor and isolated stay at zero.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { attachFakeGuest, tryIn } from '../helpers/hostns.ts';
import { installCounters, probeFrom, type LeakCounters } from '../helpers/leak.ts';
import { Store } from '../../src/store/store.ts';
import { firewallTableName } from '../../src/firewall/nft.ts';
import { createSandbox, killGateways, route, until, type Sandbox } from './harness.ts';

const leaked = (c: LeakCounters) => ({ tcp: c.tcp, udp: c.udp, icmp: c.icmp, other: c.other, v6: c.v6 });
const ZERO = { tcp: 0, udp: 0, icmp: 0, other: 0, v6: 0 };
const CHAIN = 'USER-FW';

for (const backend of ['nftables', 'iptables'] as const) {
  describe(`user chain ${CHAIN} for direct VMs (${backend})`, () => {
    let sb: Sandbox;
    let counters: Awaited<ReturnType<typeof installCounters>>;
    const guests: Record<string, string> = {};
    const host = async (script: string) => {
      const r = await tryIn(sb.host.hostNs, ['sh', '-ec', script]);
      assert.equal(r.exitCode, 0, `${script}: ${r.stderr}`);
      return r.stdout;
    };
    const table = () => `inet ${firewallTableName(sb.host.prefix)}`;
    // The user's own commands on their chain (qwamos never runs these).
    const user = {
      create: () => (backend === 'nftables' ? host(`nft add chain ${table()} ${CHAIN}`) : host(`iptables -N ${CHAIN}`)),
      append: (what: 'accept' | 'drop' | 'drop udp') =>
        backend === 'nftables'
          ? host(`nft add rule ${table()} ${CHAIN} ${what === 'drop udp' ? 'meta l4proto udp drop' : what}`)
          : host(`iptables -A ${CHAIN} ${what === 'drop udp' ? '-p udp -j DROP' : `-j ${what.toUpperCase()}`}`),
      insertDrop: () => (backend === 'nftables' ? host(`nft insert rule ${table()} ${CHAIN} drop`) : host(`iptables -I ${CHAIN} 1 -j DROP`)),
      flush: () => (backend === 'nftables' ? host(`nft flush chain ${table()} ${CHAIN}`) : host(`iptables -F ${CHAIN}`)),
      list: () => (backend === 'nftables' ? host(`nft list chain ${table()} ${CHAIN}`) : host(`iptables -S ${CHAIN}`)),
    };
    async function probe(ns: string): Promise<LeakCounters> {
      await counters.reset();
      await probeFrom(ns);
      return counters.read();
    }
    const status = async (name: string) => (await Store.open(sb.stateDir)).getStatus('Route', name);

    before(async () => {
      sb = await createSandbox();
      sb.env.QWAMOS_FIREWALL_BACKEND = backend;
      sb.env.QWAMOS_FIREWALL_USER_CHAIN = CHAIN;
      sb.env.QWAMOS_UPLINK = sb.host.uplink;
      // No default route: Tor (a host process) cannot send anything to the counted netns.
      await host('ip route del default');
      counters = await installCounters(sb.host.internetNs, sb.host.internetIf);
    });
    after(async () => {
      if (sb) await killGateways(sb);
      await sb?.cleanup();
    });

    test('missing: the direct Route waits naming the chain and its VM is closed; tor and isolated are Ready and closed', async () => {
      const files = await sb.manifests_({
        'onion.yaml': route('onion', 'tor', '10.8.2.2/24', '  dns: tor\n'),
        'box.yaml': route('box', 'isolated', '10.8.4.2/24'),
      });
      const r = await sb.qwamos(['apply', '--wait', '--timeout', '60s', ...files.flatMap((f) => ['-f', f])]);
      assert.equal(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
      const dev = await sb.manifests_({ 'dev.yaml': route('dev', 'direct', '10.8.1.2/24') });
      await sb.qwamos(['apply', ...dev.flatMap((f) => ['-f', f])]);
      await until('Route dev waiting for the user chain', async () => !!(await status('dev'))?.conditions.some((c) => c.reason === 'UserChainMissing'), 30_000);
      const st = (await status('dev'))!;
      const cond = st.conditions.find((c) => c.reason === 'UserChainMissing')!;
      assert.match(cond.message, new RegExp(`VM dev rejects all its traffic: user chain ${CHAIN} \\(QWAMOS_FIREWALL_USER_CHAIN\\) does not exist`));
      assert.match(String(st.fields.userChain), /does not exist/);
      assert.equal((await status('onion'))?.phase, 'Ready');
      guests.dev = await attachFakeGuest(sb.host.prefix, 'dev', '10.8.1.2/24', '10.8.1.1');
      guests.onion = await attachFakeGuest(sb.host.prefix, 'onion', '10.8.2.2/24', '10.8.2.1');
      guests.box = await attachFakeGuest(sb.host.prefix, 'box', '10.8.4.2/24', '10.8.4.1');
      assert.deepEqual(leaked(await probe(guests.dev)), ZERO, 'fail closed without the user chain');
      assert.deepEqual(leaked(await probe(guests.onion)), ZERO);
      assert.deepEqual(leaked(await probe(guests.box)), ZERO);
    });

    test('created by the user with an ACCEPT: the direct VM passes (positive control); the ACCEPT opens neither tor nor isolated', async () => {
      await user.create();
      await user.append('accept');
      const r = await sb.qwamos(['reconcile', '--wait', '--timeout', '60s', 'route/dev']);
      assert.equal(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
      const st = await status('dev');
      assert.equal(st?.phase, 'Ready', JSON.stringify(st));
      assert.match(String(st?.fields.userChain), new RegExp(`goes through ${CHAIN}`));
      const c = await probe(guests.dev!);
      assert.ok(c.tcp > 0 && c.udp > 0 && c.icmp > 0 && c.other > 0, `direct probes arrive: ${JSON.stringify(c)}`);
      assert.deepEqual(leaked(await probe(guests.onion!)), ZERO);
      assert.deepEqual(leaked(await probe(guests.box!)), ZERO);
    });

    test('a DROP first in the user chain blocks the direct VM; qwamos keeps it; tor and isolated stay at zero', async () => {
      await user.insertDrop();
      assert.deepEqual(leaked(await probe(guests.dev!)), ZERO, 'the user chain restricts the direct VM');
      const before = await user.list();
      const r = await sb.qwamos(['reconcile', 'route/dev', 'route/onion']);
      assert.equal(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
      assert.equal(await user.list(), before, 'a reconcile never touches the user chain');
      assert.ok(!(await (await Store.open(sb.stateDir)).listDrift({ resource: 'Route/dev' })).some((d) => d.field === 'firewall'), 'the user chain is not drift');
      assert.deepEqual(leaked(await probe(guests.dev!)), ZERO);
      assert.deepEqual(leaked(await probe(guests.onion!)), ZERO);
      assert.deepEqual(leaked(await probe(guests.box!)), ZERO);
    });

    test('a narrower user rule (drop UDP) restricts only that: TCP and ICMP still arrive, UDP does not', async () => {
      await user.flush();
      await user.append('drop udp');
      const c = await probe(guests.dev!);
      assert.ok(c.tcp > 0 && c.icmp > 0, JSON.stringify(c));
      assert.equal(c.udp, 0, JSON.stringify(c));
    });
  });
}

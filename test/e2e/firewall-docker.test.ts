// Coexistence with Docker, end to end on both backends: the test's host netns plays a Docker host
// (filter FORWARD policy DROP, `-A FORWARD -j DOCKER-USER`, a user rule and Docker's RETURN in
// DOCKER-USER). A direct VM's traffic must pass; tor and i2p VMs stay closed (zero packets arrive in
// the "internet" netns); the user's own rules are never flushed, duplicated or reordered.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { attachFakeGuest, tryIn } from '../helpers/hostns.ts';
import { installCounters, probeFrom, type LeakCounters } from '../helpers/leak.ts';
import { Store } from '../../src/store/store.ts';
import { createSandbox, killGateways, route, type Sandbox } from './harness.ts';

const leaked = (c: LeakCounters) => ({ tcp: c.tcp, udp: c.udp, icmp: c.icmp, other: c.other, v6: c.v6 });
const ZERO = { tcp: 0, udp: 0, icmp: 0, other: 0, v6: 0 };
const USER_RULES = ['-A DOCKER-USER -s 192.0.2.99/32 -j DROP', '-A DOCKER-USER -j RETURN'];

for (const backend of ['nftables', 'iptables'] as const) {
  describe(`coexistence with Docker's DOCKER-USER (${backend})`, () => {
    let sb: Sandbox;
    let counters: Awaited<ReturnType<typeof installCounters>>;
    const guests: Record<string, string> = {};
    const host = (argv: string[]) => tryIn(sb.host.hostNs, argv);
    const dockerUser = async () => (await host(['iptables', '-S', 'DOCKER-USER'])).stdout.split('\n').filter((l) => l.startsWith('-A '));
    async function probe(ns: string): Promise<LeakCounters> {
      await counters.reset();
      await probeFrom(ns);
      return counters.read();
    }

    before(async () => {
      sb = await createSandbox();
      sb.env.QWAMOS_FIREWALL_BACKEND = backend;
      sb.env.QWAMOS_UPLINK = sb.host.uplink;
      // No default route: Tor and i2pd (host processes) cannot send anything to the counted netns.
      const noDefault = await host(['ip', 'route', 'del', 'default']);
      assert.equal(noDefault.exitCode, 0, noDefault.stderr);
      counters = await installCounters(sb.host.internetNs, sb.host.internetIf);
      // What Docker does to the filter table (IPv4).
      const docker = ['iptables -N DOCKER-USER', ...USER_RULES.map((r) => `iptables ${r}`), 'iptables -P FORWARD DROP', 'iptables -A FORWARD -j DOCKER-USER'];
      const r = await host(['sh', '-ec', docker.join('\n')]);
      assert.equal(r.exitCode, 0, r.stderr);
    });
    after(async () => {
      if (sb) await killGateways(sb);
      await sb?.cleanup();
    });

    test('a direct VM passes Docker\'s DROP policy; tor and i2p VMs stay closed', async () => {
      const files = await sb.manifests_({
        'dev.yaml': route('dev', 'direct', '10.8.1.2/24'),
        'onion.yaml': route('onion', 'tor', '10.8.2.2/24', '  dns: tor\n'),
        'eep.yaml': route('eep', 'i2p', '10.8.3.2/24'),
      });
      const r = await sb.qwamos(['apply', '--wait', '--timeout', '60s', ...files.flatMap((f) => ['-f', f])]);
      assert.equal(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
      guests.dev = await attachFakeGuest(sb.host.prefix, 'dev', '10.8.1.2/24', '10.8.1.1');
      guests.onion = await attachFakeGuest(sb.host.prefix, 'onion', '10.8.2.2/24', '10.8.2.1');
      guests.eep = await attachFakeGuest(sb.host.prefix, 'eep', '10.8.3.2/24', '10.8.3.1');

      const c = await probe(guests.dev);
      assert.ok(c.tcp > 0 && c.udp > 0 && c.icmp > 0, `direct probes arrive under Docker's DROP: ${JSON.stringify(c)}`);
      assert.deepEqual(leaked(await probe(guests.onion)), ZERO);
      assert.deepEqual(leaked(await probe(guests.eep)), ZERO);

      const lines = await dockerUser();
      // The user's rules, in their order, untouched.
      assert.deepEqual(lines.filter((l) => !l.includes('qwamos')), USER_RULES);
      const ours = lines.filter((l) => l.includes('qwamos'));
      if (backend === 'nftables') {
        // qwamos' inet table cannot undo Docker's drop in another table: accepts for the direct VM's link only.
        assert.deepEqual(ours.map((l) => l.replace(/ -m comment.*/, '')).sort(), [`-A DOCKER-USER -i ${sb.host.prefix}h-dev`, `-A DOCKER-USER -o ${sb.host.prefix}h-dev`]);
        const st = await (await Store.open(sb.stateDir)).getStatus('Route', 'dev');
        assert.match(String(st?.fields.dockerUser), /accepted in DOCKER-USER/);
      } else {
        // The QWAMOS-FORWARD jump's ACCEPT already ends the filter FORWARD chain: nothing in DOCKER-USER.
        assert.deepEqual(ours, []);
      }
    });

    test('idempotent: a re-run adds nothing; a qwamos line deleted by hand is drift and comes back once', async () => {
      const before = await dockerUser();
      assert.equal((await sb.qwamos(['reconcile', 'route/dev'])).exitCode, 0);
      assert.deepEqual(await dockerUser(), before);
      if (backend !== 'nftables') return;
      const mine = before.find((l) => l.includes('qwamos') && l.includes(' -i '))!;
      const del = await host(['sh', '-c', `iptables ${mine.replace(/^-A/, '-D')}`]);
      assert.equal(del.exitCode, 0, del.stderr);
      assert.equal((await probe(guests.dev!)).tcp, 0, 'without the accept Docker drops the direct VM');
      assert.equal((await sb.qwamos(['reconcile', 'route/dev'])).exitCode, 0);
      assert.ok((await (await Store.open(sb.stateDir)).listDrift({ resource: 'Route/dev' })).some((d) => d.field === 'firewall'), 'drift recorded');
      assert.deepEqual((await dockerUser()).sort(), [...before].sort());
      assert.ok((await probe(guests.dev!)).tcp > 0, 'healed');
    });

    test('Docker re-inserts its jump first (a Docker restart): the direct VM still passes, tor stays closed', async () => {
      const r = await host(['sh', '-ec', 'iptables -D FORWARD -j DOCKER-USER; iptables -I FORWARD 1 -j DOCKER-USER']);
      assert.equal(r.exitCode, 0, r.stderr);
      assert.ok((await probe(guests.dev!)).tcp > 0);
      assert.deepEqual(leaked(await probe(guests.onion!)), ZERO);
    });

    test('the direct Route deleted: its DOCKER-USER lines go, the user\'s stay', async () => {
      const r = await sb.qwamos(['delete', 'route/dev']);
      assert.equal(r.exitCode, 0, r.stderr);
      assert.deepEqual(await dockerUser(), USER_RULES);
    });
  });
}

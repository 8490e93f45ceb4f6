// Garbage collection of the firewall side, end to end on both backends: a tor Route's record is lost
// while no controller runs (deleted from the store directly); the next `qwamos reconcile` removes its
// Tor process and private dir, its routing backstop and its firewall chains, and keeps the other Route's.
import { processAlive } from '../../src/proc.ts';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import { tryIn } from '../helpers/hostns.ts';
import { Store } from '../../src/store/store.ts';
import { createSandbox, killGateways, route, type Sandbox } from './harness.ts';

const exists = (p: string) => access(p).then(() => true, () => false);

for (const backend of ['nftables', 'iptables'] as const) {
  describe(`firewall garbage collection (${backend})`, () => {
    let sb: Sandbox;
    let torPid = 0;
    before(async () => {
      sb = await createSandbox();
      sb.env.QWAMOS_FIREWALL_BACKEND = backend;
      sb.env.QWAMOS_UPLINK = sb.host.uplink;
      const r = await tryIn(sb.host.hostNs, ['ip', 'route', 'del', 'default']);
      assert.equal(r.exitCode, 0, r.stderr);
    });
    after(async () => {
      // The lost Route's Tor (its pid file is gone once collected) and any other gateway still running.
      if (torPid && processAlive(torPid)) process.kill(torPid, 'SIGKILL');
      if (sb) await killGateways(sb);
      await sb?.cleanup();
    });

    const chains = async (): Promise<string> =>
      backend === 'nftables'
        ? (await tryIn(sb.host.hostNs, ['nft', 'list', 'table', 'inet', `${sb.host.prefix}_fw`])).stdout
        : (await tryIn(sb.host.hostNs, ['sh', '-c', 'iptables-save; ip6tables-save'])).stdout;
    const rules = async () => (await tryIn(sb.host.hostNs, ['sh', '-c', 'ip -4 rule show; ip -6 rule show'])).stdout;

    test('a lost tor Route: its Tor, dir, backstop and chains are collected; the other Route keeps its own', async () => {
      const p = sb.host.prefix;
      const files = await sb.manifests_({ 'keep.yaml': route('keep', 'tor', '10.8.1.2/24', '  dns: tor\n'), 'lost.yaml': route('lost', 'tor', '10.8.2.2/24', '  dns: tor\n') });
      const r = await sb.qwamos(['apply', '--wait', '--timeout', '60s', ...files.flatMap((f) => ['-f', f])]);
      assert.equal(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
      const dir = path.join(sb.stateDir, 'gateways', 'lost');
      torPid = Number((await readFile(path.join(dir, 'tor.pid'), 'utf8')).trim());
      assert.ok(processAlive(torPid));
      assert.match(await rules(), new RegExp(`iif ${p}h-lost `));
      assert.match(await chains(), backend === 'nftables' ? /chain out_lost/ : /QWAMOS-O-lost/);

      // The record vanishes while no controller runs (no deletion pass).
      const store = await Store.open(sb.stateDir);
      assert.ok(await store.deleteResource('Route', 'lost'));
      const gc = await sb.qwamos(['reconcile', 'route/keep']);
      assert.equal(gc.exitCode, 0, `${gc.stdout}\n${gc.stderr}`);

      assert.ok(!processAlive(torPid), 'its Tor is stopped');
      assert.ok(!(await exists(dir)), 'its private dir is removed');
      assert.doesNotMatch(await rules(), new RegExp(`iif ${p}h-lost `), 'its backstop is removed');
      assert.doesNotMatch(await chains(), /out_lost|QWAMOS-[A-Z]-lost/, 'its chains are removed');
      // The other Route's stay.
      assert.match(await rules(), new RegExp(`iif ${p}h-keep `));
      assert.match(await chains(), backend === 'nftables' ? /chain out_keep/ : /QWAMOS-O-keep/);
      assert.ok(await exists(path.join(sb.stateDir, 'gateways', 'keep', 'tor.pid')));
      const events = await store.listEvents({});
      assert.ok(events.some((e) => e.reason === 'GarbageCollected' && /gateway dir .*lost/.test(e.message)), JSON.stringify(events.filter((e) => e.reason === 'GarbageCollected')));
      // Idempotent: nothing more to collect.
      const again = await sb.qwamos(['reconcile', 'route/keep']);
      assert.equal(again.exitCode, 0);
      assert.equal((await store.listEvents({})).filter((e) => e.reason === 'GarbageCollected').length, events.filter((e) => e.reason === 'GarbageCollected').length);

      // The last Route lost: every chain and backstop of the prefix goes, and its Tor.
      const keepPid = Number((await readFile(path.join(sb.stateDir, 'gateways', 'keep', 'tor.pid'), 'utf8')).trim());
      assert.ok(await store.deleteResource('Route', 'keep'));
      const last = await sb.qwamos(['reconcile']);
      assert.equal(last.exitCode, 0, `${last.stdout}\n${last.stderr}`);
      assert.ok(!processAlive(keepPid));
      assert.doesNotMatch(await rules(), new RegExp(`iif ${p}h-`));
      if (backend === 'nftables') assert.notEqual((await tryIn(sb.host.hostNs, ['nft', 'list', 'table', 'inet', `${p}_fw`])).exitCode, 0, 'the table is gone');
      else assert.doesNotMatch(await chains(), /QWAMOS-/);
    });
  });
}

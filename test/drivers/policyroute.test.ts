// The routing backstop against the real `ip`, in a test host netns.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { processesSpawned } from '../../src/drivers/exec.ts';
import { backstopComplete, ensureBackstop, observeBackstop, observeBackstops, removeBackstop } from '../../src/drivers/policyroute.ts';
import { tryIn } from '../helpers/hostns.ts';
import { createTestHost, ipJson, type TestHost } from '../helpers/hostns.ts';

describe('policy-routing backstop (real ip)', () => {
  let host: TestHost;
  before(async () => {
    host = await createTestHost();
  });
  after(async () => {
    await host?.cleanup();
  });

  test('ensure is idempotent (no duplicate rules), observable, and removable; works before the link exists', async () => {
    const layout = { hostNetns: host.hostNs };
    const b = { hostIf: `${host.prefix}h-x`, table: 1234 };
    assert.equal(backstopComplete(await observeBackstop(layout, b)), false);
    await ensureBackstop(layout, b);
    await ensureBackstop(layout, b);
    assert.ok(backstopComplete(await observeBackstop(layout, b)));
    for (const fam of ['-4', '-6']) {
      const rules = (await ipJson(host.hostNs, [fam, 'rule', 'show'])).filter((r: any) => r.iif === b.hostIf);
      assert.equal(rules.length, 1, `one ${fam} rule`);
    }
    await removeBackstop(layout, b);
    await removeBackstop(layout, b);
    const o = await observeBackstop(layout, b);
    assert.deepEqual([o.v4Rule, o.v6Rule, o.v4Unreachable, o.v6Unreachable], [false, false, false, false]);
  });

  test('many backstops are observed with four processes, each as it is (complete, partial, absent)', async () => {
    const layout = { hostNetns: host.hostNs };
    const bs = Array.from({ length: 12 }, (_, i) => ({ hostIf: `${host.prefix}h-m${i}`, table: 3000 + i }));
    for (const b of bs.slice(0, 6)) await ensureBackstop(layout, b);
    // Partial: the IPv6 rule of one, the IPv4 table route of another gone.
    await tryIn(host.hostNs, ['ip', '-6', 'rule', 'del', 'iif', bs[1]!.hostIf, 'lookup', '3001', 'priority', '3001']);
    await tryIn(host.hostNs, ['ip', '-4', 'route', 'flush', 'table', '3002']);
    // A rule with the right iif but another priority is not ours.
    await tryIn(host.hostNs, ['ip', '-4', 'rule', 'add', 'iif', bs[6]!.hostIf, 'lookup', '3006', 'priority', '3100']);
    const before = processesSpawned();
    const seen = await observeBackstops(layout, bs);
    assert.equal(processesSpawned() - before, 4);
    // The same answers as observing one at a time.
    for (const [i, b] of bs.entries()) assert.deepEqual(seen[i], await observeBackstop(layout, b), b.hostIf);
    assert.deepEqual(seen.map(backstopComplete), [true, false, false, true, true, true, false, false, false, false, false, false]);
    assert.deepEqual([seen[1]!.v4Rule, seen[1]!.v6Rule, seen[1]!.v4Unreachable, seen[1]!.v6Unreachable], [true, false, true, true]);
    assert.deepEqual([seen[2]!.v4Rule, seen[2]!.v6Rule, seen[2]!.v4Unreachable, seen[2]!.v6Unreachable], [true, true, false, true]);
    assert.equal(seen[6]!.v4Rule, false);
    for (const b of bs) await removeBackstop(layout, b);
    assert.ok((await observeBackstops(layout, bs)).every((o) => !o.v4Rule && !o.v6Rule && !o.v4Unreachable && !o.v6Unreachable));
  });

  test('refuses the main/default tables and bad names', async () => {
    await assert.rejects(ensureBackstop({ hostNetns: host.hostNs }, { hostIf: 'x', table: 254 }), /choose 1000/);
    // A rule after main's (32766) would never be reached: refused.
    await assert.rejects(ensureBackstop({ hostNetns: host.hostNs }, { hostIf: 'x', table: 40000 }), /before main/);
    await assert.rejects(ensureBackstop({ hostNetns: host.hostNs }, { hostIf: 'a b', table: 2000 }), /invalid interface/);
  });
});

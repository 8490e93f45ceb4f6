// The routing backstop against the real `ip`, in a test host netns.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { backstopComplete, ensureBackstop, observeBackstop, removeBackstop } from '../../src/drivers/policyroute.ts';
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

  test('refuses the main/default tables and bad names', async () => {
    await assert.rejects(ensureBackstop({ hostNetns: host.hostNs }, { hostIf: 'x', table: 254 }), /choose 1000/);
    // A rule after main's (32766) would never be reached: refused.
    await assert.rejects(ensureBackstop({ hostNetns: host.hostNs }, { hostIf: 'x', table: 40000 }), /before main/);
    await assert.rejects(ensureBackstop({ hostNetns: host.hostNs }, { hostIf: 'a b', table: 2000 }), /invalid interface/);
  });
});

// The iptables emitter (pure): golden restore input for the seeds, block order, chain names.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { buildIptTables, iptVmChains, renderRestoreBlock } from '../../src/firewall/iptables.ts';
import { assertGolden } from './golden.ts';
import { seedCompiled } from './fixtures.ts';

describe('iptables emitter', () => {
  test('golden: the seeds as ip6tables and iptables restore input', () => {
    const t = buildIptTables(seedCompiled(), { guardPattern: 'qwh-*' });
    assertGolden('seeds.ip6tables', renderRestoreBlock('filter', t.v6filter));
    assertGolden('seeds.iptables', renderRestoreBlock('filter', t.v4filter) + renderRestoreBlock('nat', t.v4nat));
  });

  test('chain names fit 28 characters and stay unique', () => {
    const long = 'a'.repeat(40);
    const c = iptVmChains(long);
    assert.ok(c.out.length <= 28);
    assert.notEqual(iptVmChains(`${'a'.repeat(39)}b`).out, c.out);
    assert.equal(iptVmChains('dev').out, 'QWAMOS-O-dev');
  });

  test('dispatch chains come after the VM chains they jump to', () => {
    const names = buildIptTables(seedCompiled()).v4filter.map((c) => c.name);
    assert.deepEqual(names.slice(-2), ['QWAMOS-FORWARD', 'QWAMOS-INPUT']);
  });
});

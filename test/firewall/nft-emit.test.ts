// The nftables emitter (pure): golden script for the seeds' routing table, chain layout, partial replace.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { buildNftTable, firewallTableName, renderChainReplace, renderFullReplace, renderStatement, vmChains } from '../../src/firewall/nft.ts';
import { assertGolden } from './golden.ts';
import { seedCompiled } from './fixtures.ts';

describe('nft emitter', () => {
  test('golden: the seeds table as one transaction', () => {
    assertGolden('seeds.nft', renderFullReplace(buildNftTable('qwamos_fw', seedCompiled(), { guardPattern: 'qwh-*' })));
  });

  test('table and chain names', () => {
    assert.equal(firewallTableName('qw'), 'qwamos_fw');
    assert.equal(firewallTableName('t1ab'), 't1ab_fw');
    assert.deepEqual(vmChains('my-vm'), { out: 'out_my_vm', ret: 'ret_my_vm', in: 'in_my_vm', nat: 'nat_my_vm' });
  });

  test('every VM filter chain starts with ct state invalid drop, and the tor VM has only the nat chain redirecting', () => {
    const table = buildNftTable('x', seedCompiled());
    for (const c of table.chains.filter((c) => /^(out|in)_/.test(c.name))) assert.deepEqual(c.rules[0]!.stmts, ['ct state invalid', 'drop'], c.name);
    assert.deepEqual(
      table.chains.filter((c) => c.name.startsWith('nat_')).map((c) => c.name),
      ['nat_browser'],
    );
    const pre = table.chains.find((c) => c.name === 'prerouting')!;
    assert.deepEqual(pre.rules, [{ stmts: ['iifname qwh-browser', 'jump nat_browser'] }]);
    const outTor = table.chains.find((c) => c.name === 'out_browser')!;
    assert.deepEqual(outTor.rules.at(-1), { stmts: ['drop'], comment: 'default' });
  });

  test('a chain replace touches only the named chains, in one script', () => {
    const table = buildNftTable('x', seedCompiled());
    const text = renderChainReplace(table, ['out_dev'], []);
    assert.ok(text.startsWith('add chain inet x out_dev\nflush chain inet x out_dev\n'));
    assert.ok(!/browser|messaging|malware/.test(text));
    // Removing a VM: base chains refilled before the chain is deleted.
    const rm = renderChainReplace(table, ['forward'], ['out_gone']).split('\n');
    assert.ok(rm.indexOf('flush chain inet x forward') < rm.indexOf('delete chain inet x out_gone'));
  });

  test('statements render to nft syntax', () => {
    assert.equal(renderStatement('ip daddr 10.0.0.0/8,1.2.3.4/32'), 'ip daddr { 10.0.0.0/8, 1.2.3.4 }');
    assert.equal(renderStatement('ip saddr != 10.8.0.2/32'), 'ip saddr != 10.8.0.2');
    assert.equal(renderStatement('tcp dport 443-443'), 'tcp dport 443');
    assert.equal(renderStatement('udp dport 1000-2000'), 'udp dport 1000-2000');
    assert.equal(renderStatement('reject'), 'reject with icmpx type admin-prohibited');
    assert.throws(() => renderStatement('flush ruleset'), /no nft syntax/);
  });
});

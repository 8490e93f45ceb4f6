// The nftables firewall driver against the real `nft`, inside a host netns made by the test harness.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { compileFirewall } from '../../src/firewall/compile.ts';
import { buildNftTable, firewallTableName } from '../../src/firewall/nft.ts';
import { applyNftScript, deleteNftTable, observeNftTable, planNftSync, syncNftTable, type FirewallLayout } from '../../src/drivers/nftables.ts';
import { createTestHost, tryIn, type TestHost } from '../helpers/hostns.ts';
import { seedCompiled, seedInputs, stubContext } from '../firewall/fixtures.ts';

describe('nftables driver (real nft)', () => {
  let host: TestHost;
  let layout: FirewallLayout;

  before(async () => {
    host = await createTestHost();
    layout = { hostNetns: host.hostNs, table: firewallTableName(host.prefix) };
  });
  after(async () => {
    await host?.cleanup();
  });

  const desired = () => buildNftTable(layout.table, seedCompiled(host.prefix), { guardPattern: `${host.prefix}h-*` });

  test('a fresh apply is one full transaction and reads back equal (structurally)', async () => {
    // A foreign table that must survive everything qwamos does.
    assert.equal((await tryIn(host.hostNs, ['nft', 'add table inet foreign; add chain inet foreign c; add rule inet foreign c accept'])).exitCode, 0);
    const first = await syncNftTable(layout, desired());
    assert.equal(first.plan.kind, 'full');
    const observed = await observeNftTable(layout);
    assert.ok(observed.exists);
    assert.deepEqual(planNftSync(desired(), observed), { kind: 'none' });
    const again = await syncNftTable(layout, desired());
    assert.equal(again.plan.kind, 'none');
    assert.equal(again.script, '');
    assert.equal((await tryIn(host.hostNs, ['nft', 'list', 'table', 'inet', 'foreign'])).exitCode, 0);
  });

  test('a one-rule change rewrites only that VM chain', async () => {
    const inputs = seedInputs(host.prefix);
    inputs[0]!.policy!.rules = [...inputs[0]!.policy!.rules!, { action: 'accept', proto: 'udp', dstPorts: '123' }];
    const changed = buildNftTable(layout.table, compileFirewall(inputs, stubContext()), { guardPattern: `${host.prefix}h-*` });
    const r = await syncNftTable(layout, changed);
    assert.deepEqual(r.plan, { kind: 'chains', replace: ['out_dev'], remove: [] });
    assert.ok(!/browser|messaging|malware/.test(r.script));
    assert.equal(planNftSync(changed, await observeNftTable(layout)).kind, 'none');
  });

  test('drift: a rule deleted by hand is seen and only its chain is healed', async () => {
    const obs = JSON.parse((await tryIn(host.hostNs, ['nft', '-j', '-a', 'list', 'chain', 'inet', layout.table, 'in_browser'])).stdout);
    const handle = obs.nftables.find((i: any) => i.rule && i.rule.comment === 'tor DNSPort')?.rule.handle;
    assert.ok(handle);
    assert.equal((await tryIn(host.hostNs, ['nft', 'delete', 'rule', 'inet', layout.table, 'in_browser', 'handle', String(handle)])).exitCode, 0);
    // An added rule is drift as well.
    assert.equal((await tryIn(host.hostNs, ['nft', 'insert', 'rule', 'inet', layout.table, 'out_malware', 'accept'])).exitCode, 0);
    const r = await syncNftTable(layout, desired());
    assert.equal(r.plan.kind, 'chains');
    assert.deepEqual(r.plan.kind === 'chains' && [...r.plan.replace].sort(), ['in_browser', 'out_dev', 'out_malware']);
    assert.equal(planNftSync(desired(), await observeNftTable(layout)).kind, 'none');
  });

  test('a VM removed: its chains are deleted with the base chains refilled, in one transaction', async () => {
    const fewer = buildNftTable(layout.table, seedCompiled(host.prefix).filter((f) => f.vm !== 'browser'), { guardPattern: `${host.prefix}h-*` });
    const r = await syncNftTable(layout, fewer);
    assert.equal(r.plan.kind, 'chains');
    const observed = await observeNftTable(layout);
    assert.ok(!observed.chains.some((c) => c.name.endsWith('_browser')));
    assert.equal(planNftSync(fewer, observed).kind, 'none');
  });

  test('a base chain with another policy, or the table deleted, is rebuilt in full', async () => {
    await syncNftTable(layout, desired());
    assert.equal((await tryIn(host.hostNs, ['nft', 'add chain inet', layout.table, 'forward { type filter hook forward priority 0; policy drop; }'].join(' ').split(' '))).exitCode, 0);
    assert.equal((await syncNftTable(layout, desired())).plan.kind, 'full');
    await deleteNftTable(layout);
    assert.equal((await observeNftTable(layout)).exists, false);
    assert.equal((await syncNftTable(layout, desired())).plan.kind, 'full');
  });

  test('a script nft --check refuses changes nothing, and the error is one line', async () => {
    const before = await observeNftTable(layout);
    await assert.rejects(applyNftScript(layout, `flush chain inet ${layout.table} out_dev\nadd rule inet ${layout.table} out_dev tcp dport bogus accept\n`), (err: Error) => {
      assert.match(err.message, /^nft --check of table inet \S+ in netns \S+: /);
      assert.ok(!err.message.includes('\n'));
      return true;
    });
    assert.deepEqual(await observeNftTable(layout), before);
  });

  test('undefined desired deletes only qwamos table', async () => {
    const r = await syncNftTable(layout, undefined);
    assert.equal(r.plan.kind, 'delete');
    assert.equal((await observeNftTable(layout)).exists, false);
    assert.equal((await syncNftTable(layout, undefined)).plan.kind, 'none');
    assert.equal((await tryIn(host.hostNs, ['nft', 'list', 'table', 'inet', 'foreign'])).exitCode, 0);
  });
});

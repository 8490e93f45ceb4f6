// The iptables firewall driver against the real iptables-restore / iptables-save, in a test host netns.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { compileFirewall } from '../../src/firewall/compile.ts';
import { buildIptTables } from '../../src/firewall/iptables.ts';
import { observeIpt, planIpt, planIsEmpty, removeIpt, renderRemoval, syncIpt } from '../../src/drivers/iptables.ts';
import { processesSpawned } from '../../src/drivers/exec.ts';
import { createTestHost, tryIn, type TestHost } from '../helpers/hostns.ts';
import { seedCompiled, seedInputs, stubContext } from '../firewall/fixtures.ts';

describe('iptables driver (real iptables)', () => {
  let host: TestHost;
  before(async () => {
    host = await createTestHost();
  });
  after(async () => {
    await host?.cleanup();
  });
  const layout = () => ({ hostNetns: host.hostNs });
  const desired = () => buildIptTables(seedCompiled(host.prefix), { guardPattern: `${host.prefix}h-*` });

  test('apply reads back equal line by line; a re-run adds no duplicate jumps and changes nothing', async () => {
    await syncIpt(layout(), desired());
    assert.ok(planIsEmpty(planIpt(desired(), await observeIpt(layout()))), JSON.stringify(planIpt(desired(), await observeIpt(layout()))));
    await syncIpt(layout(), desired());
    const save = (await tryIn(host.hostNs, ['iptables-save', '-t', 'filter'])).stdout;
    assert.equal(save.split('\n').filter((l) => l === '-A FORWARD -j QWAMOS-FORWARD').length, 1);
    assert.match(save, /-A QWAMOS-O-dev -d 192\.0\.2\.0\/24 -p tcp -m tcp --dport 8000:8100 -m comment --comment "rule 3" -j ACCEPT/);
    const nat = (await tryIn(host.hostNs, ['iptables-save', '-t', 'nat'])).stdout;
    assert.match(nat, /-A QWAMOS-N-browser -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN .*-j REDIRECT --to-ports 9040/);
  });

  test('a one-rule change restores only that chain; a removed VM chain is deleted', async () => {
    const inputs = seedInputs(host.prefix);
    inputs[0]!.policy!.rules = [...inputs[0]!.policy!.rules!, { action: 'accept', proto: 'udp', dstPorts: '123' }];
    const changed = buildIptTables(compileFirewall(inputs, stubContext()), { guardPattern: `${host.prefix}h-*` });
    const plan = await syncIpt(layout(), changed);
    assert.deepEqual(plan.replace.v4filter.map((c) => c.name), ['QWAMOS-O-dev']);
    assert.equal(plan.replace.v4nat.length + plan.replace.v6filter.length, 0);
    const fewer = buildIptTables(compileFirewall(inputs.filter((i) => i.vm !== 'browser'), stubContext()), { guardPattern: `${host.prefix}h-*` });
    const p2 = await syncIpt(layout(), fewer);
    assert.deepEqual(p2.remove.v4nat, ['QWAMOS-N-browser']);
    const o = await observeIpt(layout());
    assert.ok(![...o.chains.v4filter.keys(), ...o.chains.v4nat.keys()].some((n) => n.endsWith('-browser')));
    assert.ok(planIsEmpty(planIpt(fewer, o)));
  });

  test('drift: a rule deleted by hand and a deleted jump are seen and healed', async () => {
    await syncIpt(layout(), desired());
    assert.equal((await tryIn(host.hostNs, ['iptables', '-D', 'QWAMOS-I-browser', '1'])).exitCode, 0);
    assert.equal((await tryIn(host.hostNs, ['iptables', '-D', 'FORWARD', '-j', 'QWAMOS-FORWARD'])).exitCode, 0);
    const plan = await syncIpt(layout(), desired());
    assert.deepEqual(plan.replace.v4filter.map((c) => c.name), ['QWAMOS-I-browser']);
    assert.deepEqual(plan.missingJumps, ['v4filter FORWARD QWAMOS-FORWARD']);
    assert.ok(planIsEmpty(planIpt(desired(), await observeIpt(layout()))));
  });

  test('remove deletes only QWAMOS chains and jumps; a foreign rule stays', async () => {
    assert.equal((await tryIn(host.hostNs, ['iptables', '-A', 'FORWARD', '-s', '192.0.2.1', '-j', 'ACCEPT'])).exitCode, 0);
    // A second copy of a jump (someone ran `iptables -I FORWARD -j QWAMOS-FORWARD`): both go.
    assert.equal((await tryIn(host.hostNs, ['iptables', '-A', 'FORWARD', '-j', 'QWAMOS-FORWARD'])).exitCode, 0);
    const seen = await observeIpt(layout());
    assert.equal(seen.jumps.v4filter.filter((l) => l === '-A FORWARD -j QWAMOS-FORWARD').length, 2);
    // One restore per family, no process per chain.
    const { v6, v4 } = renderRemoval(seen);
    assert.equal(v4.split('\n').filter((l) => l === '-D FORWARD -j QWAMOS-FORWARD').length, 2);
    assert.ok(v6.startsWith('*filter\n') && v4.includes('*nat\n'));
    const before = processesSpawned();
    await removeIpt(layout());
    assert.equal(processesSpawned() - before, 3, 'observe + ip6tables-restore + iptables-restore');
    const o = await observeIpt(layout());
    assert.equal(o.chains.v4filter.size + o.chains.v4nat.size + o.chains.v6filter.size, 0);
    assert.deepEqual(o.jumps, { v4filter: [], v4nat: [], v6filter: [] });
    assert.match((await tryIn(host.hostNs, ['iptables-save', '-t', 'filter'])).stdout, /-A FORWARD -s 192\.0\.2\.1\/32 -j ACCEPT/);
  });
});

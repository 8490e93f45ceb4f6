// The user's chain (QWAMOS_FIREWALL_USER_CHAIN), pure: both emitters route only a direct VM's accepts
// through it, tor/i2p chains are the same with or without it, a missing chain closes direct VMs, the
// nft plan never flushes or deletes it, and the setting is checked.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { buildNftTable, renderNftTable, renderStatement, USER_VERDICT_CHAIN, vmChains } from '../../src/firewall/nft.ts';
import { buildIptTables, IPT_USER_VERDICT, iptVmChains, renderRestoreBlock } from '../../src/firewall/iptables.ts';
import { closeWithoutUserChain, jumpsToUserChain, userChainMissing } from '../../src/firewall/userchain.ts';
import { planNftSync, renderPlan } from '../../src/drivers/nftables.ts';
import { loadConfig } from '../../src/config.ts';
import { assertGolden } from './golden.ts';
import { seedCompiled } from './fixtures.ts';

const chain = (t: ReturnType<typeof buildNftTable>, name: string) => t.chains.find((c) => c.name === name);

describe('user chain: nftables emitter', () => {
  const plain = buildNftTable('qwamos_fw', seedCompiled(), { guardPattern: 'qwh-*' });
  const withUser = buildNftTable('qwamos_fw', seedCompiled(), { guardPattern: 'qwh-*', userChain: 'user_fw' });

  test('golden: the seeds with a user chain', () => {
    assertGolden('seeds-userchain.nft', renderNftTable(withUser));
  });

  test("a direct VM's accepts (rules, default, established both ways) jump to user_verdict; its drops stay", () => {
    const c = vmChains('dev');
    const before = chain(plain, c.out)!.rules;
    const after = chain(withUser, c.out)!.rules;
    assert.equal(after.length, before.length);
    let jumps = 0;
    after.forEach((r, i) => {
      const b = before[i]!;
      if (b.stmts.at(-1) === 'accept') {
        jumps++;
        assert.deepEqual(r, { ...b, stmts: [...b.stmts.slice(0, -1), `jump ${USER_VERDICT_CHAIN}`] });
      } else assert.deepEqual(r, b);
    });
    assert.ok(jumps >= 2, 'established and at least one rule accept');
    assert.deepEqual(chain(withUser, c.ret)!.rules, [{ stmts: ['ct state established,related', `jump ${USER_VERDICT_CHAIN}`] }, { stmts: ['drop'] }]);
    // Traffic to the host itself (input) is not forwarded traffic: unchanged.
    assert.deepEqual(chain(withUser, c.in), chain(plain, c.in));
    assert.deepEqual(chain(withUser, USER_VERDICT_CHAIN)!.rules, [{ stmts: ['jump user_fw'] }, { stmts: ['accept'] }]);
  });

  test('tor, i2p (and every base chain) are the same with or without the user chain: nothing there can open them', () => {
    for (const vm of ['browser', 'messaging']) for (const name of Object.values(vmChains(vm))) assert.deepEqual(chain(withUser, name), chain(plain, name), name);
    for (const name of ['forward', 'input', 'prerouting']) assert.deepEqual(chain(withUser, name), chain(plain, name));
    assert.ok(!renderNftTable(withUser).replace(/chain user_verdict \{[^}]*\}/, '').includes('user_fw'), 'only user_verdict names the user chain');
  });

  test('no direct VM (or all closed): no user_verdict chain, so nothing jumps to a chain that may not exist', () => {
    const noDirect = seedCompiled().filter((c) => c.mode !== 'direct');
    assert.equal(chain(buildNftTable('t', noDirect, { userChain: 'user_fw' }), USER_VERDICT_CHAIN), undefined);
    const closed = closeWithoutUserChain(seedCompiled(), 'gone');
    const t = buildNftTable('t', closed, { userChain: 'user_fw' });
    assert.equal(chain(t, USER_VERDICT_CHAIN), undefined);
    assert.ok(!renderNftTable(t).includes('user_fw'));
  });

  test('a chain named like Docker\'s is written as is (the real-nft test proves nft parses it)', () => {
    assert.equal(renderStatement('jump DOCKER-USER'), 'jump DOCKER-USER');
    assert.equal(renderStatement('jump out_dev'), 'jump out_dev');
  });
});

describe('user chain: iptables emitter', () => {
  const withUser = buildIptTables(seedCompiled(), { guardPattern: 'qwh-*', userChain: 'DOCKER-USER' });
  const plain = buildIptTables(seedCompiled(), { guardPattern: 'qwh-*' });
  const rules = (t: typeof plain, name: string) => t.v4filter.find((c) => c.name === name)?.rules;

  test('golden: the seeds with a user chain', () => {
    assertGolden('seeds-userchain.iptables', renderRestoreBlock('filter', withUser.v4filter) + renderRestoreBlock('nat', withUser.v4nat));
  });

  test("a direct VM's -j ACCEPT become -j QWAMOS-USER; QWAMOS-USER jumps to the user chain, then accepts", () => {
    const c = iptVmChains('dev');
    const before = rules(plain, c.out)!;
    const after = rules(withUser, c.out)!;
    assert.deepEqual(after, before.map((l) => l.replace(/-j ACCEPT$/, `-j ${IPT_USER_VERDICT}`)));
    assert.ok(after.some((l) => l.endsWith(`-j ${IPT_USER_VERDICT}`)));
    assert.deepEqual(rules(withUser, c.ret), [`-A ${c.ret} -m conntrack --ctstate RELATED,ESTABLISHED -j ${IPT_USER_VERDICT}`, `-A ${c.ret} -j DROP`]);
    assert.deepEqual(rules(withUser, IPT_USER_VERDICT), [`-A ${IPT_USER_VERDICT} -j DOCKER-USER`, `-A ${IPT_USER_VERDICT} -j ACCEPT`]);
  });

  test('tor and i2p chains, IPv6 and nat are unchanged', () => {
    for (const vm of ['browser', 'messaging']) for (const name of Object.values(iptVmChains(vm))) assert.deepEqual(rules(withUser, name), rules(plain, name), name);
    assert.deepEqual(withUser.v6filter, plain.v6filter);
    assert.deepEqual(withUser.v4nat, plain.v4nat);
  });
});

describe('user chain: missing', () => {
  test('closes every direct VM with the reason, leaves tor/i2p as they were', () => {
    const reason = userChainMissing('user_fw', 'table inet qwamos_fw');
    assert.match(reason, /user chain user_fw \(QWAMOS_FIREWALL_USER_CHAIN\) does not exist in table inet qwamos_fw/);
    const before = seedCompiled();
    const after = closeWithoutUserChain(before, reason);
    for (const [i, fw] of after.entries()) {
      if (before[i]!.mode === 'direct') {
        assert.equal(fw.failClosed, reason);
        assert.equal(jumpsToUserChain(fw), false);
        assert.equal(fw.outbound.allowEstablished, false);
      } else assert.deepEqual(fw, before[i]);
    }
  });
});

describe('user chain: nft sync plan keeps it', () => {
  const desired = buildNftTable('t', seedCompiled(), { userChain: 'user_fw' });
  const observedOf = (t: ReturnType<typeof buildNftTable>, extra: { name: string; rules: [] }[] = []) => ({ exists: true, chains: [...t.chains, ...extra] });
  const user = { name: 'user_fw', rules: [] as [] };

  test('the user chain is never removed by a chain sync', () => {
    assert.deepEqual(planNftSync(desired, observedOf(desired, [user]), ['user_fw']), { kind: 'none' });
    // Without keep it would be a stray chain to delete: the keep list is what protects it.
    assert.deepEqual(planNftSync(desired, observedOf(desired, [user])), { kind: 'chains', replace: ['forward', 'input', 'prerouting'], remove: ['user_fw'] });
  });

  test('a whole replace becomes a rebuild that deletes only qwamos\' chains; no VM left: the table stays', () => {
    const wrongHook = { exists: true, chains: [{ name: 'forward', base: { type: 'filter' as const, hook: 'input' as const, prio: 0 }, rules: [] }, { name: 'out_x', rules: [] }, user] };
    const plan = planNftSync(desired, wrongHook, ['user_fw']);
    assert.deepEqual(plan, { kind: 'rebuild', remove: ['forward', 'out_x'] });
    const script = renderPlan(desired, plan, 't');
    assert.ok(!/delete table|user_fw \{|flush chain inet t user_fw|delete chain inet t user_fw/.test(script), script.slice(0, 200));
    assert.deepEqual(planNftSync(undefined, wrongHook, ['user_fw']), { kind: 'rebuild', remove: ['forward', 'out_x'] });
    assert.equal(renderPlan(undefined, { kind: 'rebuild', remove: ['forward'] }, 't'), 'flush chain inet t forward\ndelete chain inet t forward\n');
    assert.deepEqual(planNftSync(undefined, { exists: true, chains: [user] }, ['user_fw']), { kind: 'none' });
    // Without a user chain in it, the table is still deleted or replaced whole.
    assert.deepEqual(planNftSync(undefined, { exists: true, chains: [{ name: 'out_x', rules: [] }] }, ['user_fw']), { kind: 'delete' });
    assert.deepEqual(planNftSync(desired, { exists: false, chains: [] }, ['user_fw']), { kind: 'full' });
  });
});

describe('user chain: setting', () => {
  test('QWAMOS_FIREWALL_USER_CHAIN is optional, checked, and never one of qwamos\' or the kernel\'s chains', () => {
    assert.equal(loadConfig({}).firewallUserChain, undefined);
    assert.equal(loadConfig({ QWAMOS_FIREWALL_USER_CHAIN: 'DOCKER-USER' }).firewallUserChain, 'DOCKER-USER');
    assert.equal(loadConfig({ QWAMOS_FIREWALL_USER_CHAIN: 'user_fw' }).firewallUserChain, 'user_fw');
    for (const bad of ['QWAMOS-X', 'FORWARD', 'input', 'out_dev', 'user_verdict', '1abc', 'a b', 'a'.repeat(29), 'x;y']) {
      assert.throws(() => loadConfig({ QWAMOS_FIREWALL_USER_CHAIN: bad }), /^Error: QWAMOS_FIREWALL_USER_CHAIN /, bad);
    }
  });
});

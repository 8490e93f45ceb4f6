// The user's chain (QWAMOS_FIREWALL_USER_CHAIN) against the real nft and iptables, through the
// controllers' backends, in a test host netns: missing -> direct VMs closed and nothing jumps to it;
// created by the user -> direct VMs' accepts go through it; its rules are never touched by a sync, a
// rebuild of the table, or the removal of every VM.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { iptBackend, nftBackend } from '../../src/controllers/firewall/backend.ts';
import { firewallTableName, vmChains } from '../../src/firewall/nft.ts';
import { iptVmChains } from '../../src/firewall/iptables.ts';
import { observeNftTable } from '../../src/drivers/nftables.ts';
import { createTestHost, tryIn, type TestHost } from '../helpers/hostns.ts';
import { seedCompiled } from '../firewall/fixtures.ts';

describe('user chain on nftables (real nft)', () => {
  let host: TestHost;
  let table: string;
  const chain = 'user-fw'; // a hyphen, like Docker's DOCKER-USER
  before(async () => {
    host = await createTestHost();
    table = firewallTableName(host.prefix);
  });
  after(async () => {
    await host?.cleanup();
  });
  const backend = () => nftBackend({ prefix: host.prefix, hostNetns: host.hostNs, userChain: chain });
  const nft = async (cmd: string) => {
    const r = await tryIn(host.hostNs, ['nft', ...(cmd.startsWith('-j ') ? ['-j', cmd.slice(3)] : [cmd])]);
    assert.equal(r.exitCode, 0, `nft ${cmd}: ${r.stderr}`);
    return r.stdout;
  };
  const userRules = async () => JSON.parse(await nft(`-j list chain inet ${table} ${chain}`)).nftables.filter((i: any) => i.rule).map((i: any) => JSON.stringify(i.rule.expr));

  test('missing: the direct VM is closed (nothing jumps to the chain), tor/i2p as usual, status names it', async () => {
    const written = await backend().sync(seedCompiled(host.prefix));
    const dev = written.find((c) => c.vm === 'dev')!;
    assert.match(dev.failClosed ?? '', new RegExp(`user chain ${chain} \\(QWAMOS_FIREWALL_USER_CHAIN\\) does not exist in table inet ${table}`));
    assert.equal(written.find((c) => c.vm === 'browser')!.failClosed, undefined);
    const view = await backend().observe();
    assert.match(view.userChain?.missing ?? '', /does not exist/);
    const out = view.chains.get(vmChains('dev').out)!;
    assert.match(out.at(-1)!, /"reject".*fail closed/);
    assert.ok(![...view.chains.values()].flat().some((l) => l.includes(chain)));
  });

  test('created by the user (with a rule): direct accepts jump through it; its rule stays; a second sync changes nothing', async () => {
    await nft(`add chain inet ${table} ${chain}`);
    await nft(`add rule inet ${table} ${chain} ip daddr 192.0.2.9 drop`);
    const before = await userRules();
    const written = await backend().sync(seedCompiled(host.prefix));
    assert.equal(written.find((c) => c.vm === 'dev')!.failClosed, undefined);
    const view = await backend().observe();
    assert.deepEqual(view.userChain, { name: chain });
    assert.deepEqual(view.chains.get('user_verdict'), [JSON.stringify([[`jump ${chain}`], null]), JSON.stringify([['accept'], null])]);
    assert.ok(view.chains.get(vmChains('dev').out)!.some((l) => l.includes('jump user_verdict')));
    assert.ok(!view.chains.has(chain), "the user's chain is not part of qwamos' view");
    assert.deepEqual(await userRules(), before);
    const listed = await observeNftTable({ hostNetns: host.hostNs, table });
    await backend().sync(seedCompiled(host.prefix));
    assert.deepEqual(await observeNftTable({ hostNetns: host.hostNs, table }), listed);
  });

  test('a base chain changed by hand forces a rebuild: qwamos\' chains rewritten, the user chain and its rule kept', async () => {
    const before = await userRules();
    await nft(`add chain inet ${table} forward { type filter hook forward priority filter; policy drop; }`);
    await backend().sync(seedCompiled(host.prefix));
    const view = await backend().observe();
    assert.equal(view.chains.get('forward')![0], `base ${JSON.stringify({ type: 'filter', hook: 'forward', prio: 0 })}`);
    assert.deepEqual(await userRules(), before);
    assert.ok(view.chains.get(vmChains('dev').out)!.some((l) => l.includes('jump user_verdict')));
  });

  test('no VM left: qwamos\' chains go, the table stays with the user chain and its rule', async () => {
    const before = await userRules();
    await backend().sync([]);
    const view = await backend().observe();
    assert.equal(view.present, false);
    assert.equal(view.chains.size, 0);
    assert.deepEqual(await userRules(), before);
    // And back: qwamos' chains added next to it.
    await backend().sync(seedCompiled(host.prefix));
    assert.ok((await backend().observe()).chains.get('user_verdict'));
  });

  test('without the setting, a table holding only the user chain is deleted as before (the chain is not qwamos\' to keep)', async () => {
    const plain = nftBackend({ prefix: host.prefix, hostNetns: host.hostNs });
    await plain.sync([]);
    assert.equal((await observeNftTable({ hostNetns: host.hostNs, table })).exists, false);
  });
});

describe('user chain on iptables (real iptables)', () => {
  let host: TestHost;
  const chain = 'USER-FW';
  before(async () => {
    host = await createTestHost();
  });
  after(async () => {
    await host?.cleanup();
  });
  const backend = (userChain: string | null = chain) => iptBackend({ prefix: host.prefix, hostNetns: host.hostNs, ...(userChain ? { userChain } : {}) });
  const ipt = async (...args: string[]) => {
    const r = await tryIn(host.hostNs, ['iptables', ...args]);
    assert.equal(r.exitCode, 0, `iptables ${args.join(' ')}: ${r.stderr}`);
  };
  const userLines = async () => (await tryIn(host.hostNs, ['iptables-save', '-t', 'filter'])).stdout.split('\n').filter((l) => l.startsWith(`-A ${chain} `));

  test('missing: the direct VM is closed, nothing jumps to it, status names it', async () => {
    const written = await backend().sync(seedCompiled(host.prefix));
    assert.match(written.find((c) => c.vm === 'dev')!.failClosed ?? '', /user chain USER-FW \(QWAMOS_FIREWALL_USER_CHAIN\) does not exist in the iptables filter table/);
    const view = await backend().observe();
    assert.match(view.userChain?.missing ?? '', /does not exist/);
    assert.ok(!view.chains.has('v4filter:QWAMOS-USER'));
    assert.match(view.chains.get(`v4filter:${iptVmChains('dev').out}`)!.at(-1)!, /fail closed.*REJECT/);
  });

  test('created by the user: direct accepts go through QWAMOS-USER to it; its rules stay; the setting removed: QWAMOS-USER goes', async () => {
    await ipt('-N', chain);
    await ipt('-A', chain, '-d', '192.0.2.9/32', '-j', 'DROP');
    const before = await userLines();
    const written = await backend().sync(seedCompiled(host.prefix));
    assert.equal(written.find((c) => c.vm === 'dev')!.failClosed, undefined);
    const view = await backend().observe();
    assert.deepEqual(view.userChain, { name: chain });
    assert.deepEqual(view.chains.get('v4filter:QWAMOS-USER'), [`-A QWAMOS-USER -j ${chain}`, '-A QWAMOS-USER -j ACCEPT']);
    assert.ok(view.chains.get(`v4filter:${iptVmChains('dev').out}`)!.some((l) => l.endsWith('-j QWAMOS-USER')), view.chains.get(`v4filter:${iptVmChains('dev').out}`)!.join('\n'));
    await backend().sync(seedCompiled(host.prefix));
    assert.deepEqual(await userLines(), before);
    await backend(null).sync(seedCompiled(host.prefix));
    const plain = await backend(null).observe();
    assert.ok(!plain.chains.has('v4filter:QWAMOS-USER'), [...plain.chains.keys()].join());
    assert.ok(!plain.chains.get(`v4filter:${iptVmChains('dev').out}`)!.some((l) => l.includes('QWAMOS-USER')));
    assert.deepEqual(await userLines(), before);
    await backend().sync([]);
    assert.deepEqual(await userLines(), before, 'removing every QWAMOS chain leaves the user chain');
  });
});

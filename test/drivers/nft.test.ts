// The nft driver against the real `nft`, inside a host netns created by the test harness: a table read
// as data, and replaced whole in one transaction. Generic: the tables here are the tests' own.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { processesSpawned } from '../../src/drivers/exec.ts';
import { detectUplink } from '../../src/drivers/netns.ts';
import { nftReplaceTransaction, observeNftTable, replaceNftTable, type NftTableContent } from '../../src/drivers/nft.ts';
import { createTestHost, tryIn, type TestHost } from '../helpers/hostns.ts';

const masq = (ip: string, oif: string, comment: string) => ({
  chain: 'post',
  comment,
  expr: [
    { match: { op: '==', left: { payload: { protocol: 'ip', field: 'saddr' } }, right: ip } },
    { match: { op: '==', left: { meta: { key: 'oifname' } }, right: oif } },
    { masquerade: null },
  ],
});
const content = (rules: ReturnType<typeof masq>[]): NftTableContent => ({
  chains: [
    { name: 'post', type: 'nat', hook: 'postrouting', prio: 100, policy: 'accept' },
    { name: 'fw', type: 'filter', hook: 'forward', prio: 0, policy: 'accept' },
  ],
  rules,
});

describe('nft driver (pure)', () => {
  test('one transaction: create-if-missing, delete, full content; or just delete', () => {
    const t = JSON.parse(nftReplaceTransaction('ip', 'tq', content([masq('10.8.0.2', 'eth0', 'a')]))).nftables;
    assert.deepEqual(t.slice(0, 3).map((c: object) => Object.keys(c)[0]), ['add', 'delete', 'add']);
    assert.equal(t.length, 6);
    assert.deepEqual(JSON.parse(nftReplaceTransaction('ip', 'tq', undefined)).nftables.length, 2);
    assert.throws(() => nftReplaceTransaction('ip', 'bad name;', undefined), /invalid nft table name/);
  });
});

describe('nft driver on a test host', () => {
  let th: TestHost;
  const table = 'tq_qwamos';
  const foreign = `table ip keepme {
  chain input {
    type filter hook input priority 0; policy accept;
    ip saddr 192.0.2.1 counter drop comment "not qwamos"
  }
}
`;
  const ruleset = async () => (await tryIn(th.hostNs, ['nft', 'list', 'ruleset'])).stdout;
  const foreignText = async () => (await tryIn(th.hostNs, ['nft', 'list', 'table', 'ip', 'keepme'])).stdout;

  before(async () => {
    th = await createTestHost();
    const r = await tryIn(th.hostNs, ['nft', '-f', '-'], foreign);
    assert.equal(r.exitCode, 0, r.stderr);
  });
  after(async () => th?.cleanup());

  test('detectUplink finds the host netns default-route interface', async () => {
    assert.equal(await detectUplink(th.hostNs), th.uplink);
    assert.equal(await detectUplink(th.internetNs), undefined);
  });

  test('an absent table observes as absent; forwarding read', async () => {
    const obs = await observeNftTable(th.hostNs, 'ip', table);
    assert.equal(obs.table, undefined);
    assert.equal(obs.ipv4Forwarding, false, 'a fresh netns has forwarding off');
  });

  test('replace writes the content in one process, forwarding on; observe reads back the same data', async () => {
    const keep = await foreignText();
    const want = content([masq('10.8.0.2', th.uplink, 'Route/a'), masq('10.8.1.2', th.uplink, 'Route/b')]);
    const before = processesSpawned();
    await replaceNftTable(th.hostNs, 'ip', table, want, { ipv4Forwarding: true });
    assert.equal(processesSpawned() - before, 1, 'one nft transaction (plus the sysctl) in one process');
    const obs = await observeNftTable(th.hostNs, 'ip', table);
    assert.equal(obs.ipv4Forwarding, true);
    assert.deepEqual(obs.table?.chains, want.chains);
    assert.deepEqual(obs.table?.rules.map(({ handle: _h, ...r }) => r), want.rules, 'the rules as data, exactly as written');
    assert.deepEqual(obs.table?.others, []);
    assert.equal(await foreignText(), keep, 'foreign table untouched');
    // Replaced again with other content: nothing of the old stays, nothing doubles.
    await replaceNftTable(th.hostNs, 'ip', table, content([masq('10.8.2.2', th.uplink, 'Route/c')]));
    assert.deepEqual((await observeNftTable(th.hostNs, 'ip', table)).table?.rules.map((r) => r.comment), ['Route/c']);
  });

  test('hand edits show in the data: chain policy, extra rule, foreign chain and set', async () => {
    for (const cmd of [
      `add chain ip ${table} fw { policy drop; }`,
      `add rule ip ${table} post masquerade`,
      `add chain ip ${table} sneaky`,
      `add set ip ${table} allow { type ipv4_addr; }`,
    ]) {
      const r = await tryIn(th.hostNs, ['nft', cmd]);
      assert.equal(r.exitCode, 0, r.stderr);
    }
    const t = (await observeNftTable(th.hostNs, 'ip', table)).table!;
    assert.equal(t.chains.find((c) => c.name === 'fw')?.policy, 'drop');
    assert.ok(t.chains.some((c) => c.name === 'sneaky' && c.hook === undefined));
    assert.deepEqual(t.rules.map((r) => r.comment ?? '(none)'), ['Route/c', '(none)']);
    assert.deepEqual(t.others, [{ kind: 'set', name: 'allow' }]);
  });

  test('a failing transaction changes nothing (atomic)', async () => {
    const beforeText = await ruleset();
    const bad = { chains: [{ name: 'post', type: 'nat', hook: 'nonsense', prio: 100, policy: 'accept' }], rules: [] };
    await assert.rejects(replaceNftTable(th.hostNs, 'ip', table, bad));
    assert.equal(await ruleset(), beforeText, 'the delete in the failed transaction did not happen');
  });

  test('no content deletes the table and only it; idempotent', async () => {
    const keep = await foreignText();
    await replaceNftTable(th.hostNs, 'ip', table, undefined);
    assert.equal((await observeNftTable(th.hostNs, 'ip', table)).table, undefined);
    assert.equal(await foreignText(), keep, 'foreign table untouched');
    await replaceNftTable(th.hostNs, 'ip', table, undefined);
    assert.equal((await observeNftTable(th.hostNs, 'ip', table)).ipv4Forwarding, true, 'forwarding is left on');
  });

  test('errors are one line and name the command', async () => {
    await assert.rejects(observeNftTable(`${th.prefix}_nope`, 'ip', table), (err: Error) => {
      assert.ok(!err.message.includes('\n'));
      assert.match(err.message, /nope/);
      return true;
    });
  });
});

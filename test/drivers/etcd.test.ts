// The etcd driver against a real etcd (Debian's etcd-server) on loopback ports, started by the test.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';
import { until } from '../helpers/poll.ts';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('etcd test harness', () => {
  it('starts one member on free loopback ports and stop() kills it by PID and removes its dir', async () => {
    const etcd = await startEtcd();
    const pid = etcd.members[0]!.pid!;
    assert.ok(alive(pid));
    assert.match(etcd.endpoints[0]!, /^http:\/\/127\.0\.0\.1:\d+$/);
    await etcd.stop();
    assert.equal(alive(pid), false);
    assert.equal(existsSync(etcd.dir), false);
  });

  it('starts three members; the client keeps working when the leader is killed', async () => {
    const etcd = await startEtcd({ members: 3 });
    const client = new EtcdClient(etcd.endpoints);
    try {
      await client.put('k', 'v1');
      const leader = await etcd.leader();
      await etcd.kill(leader);
      assert.equal(leader.pid, undefined);
      await until('a write after the leader was killed', async () => {
        try {
          await client.put('k', 'v2');
          return true;
        } catch {
          return false;
        }
      }, { timeoutMs: 15_000, intervalMs: 200 });
      assert.equal((await client.get('k'))?.value, 'v2');
    } finally {
      client.close();
      await etcd.stop();
    }
  });
});

describe('etcd driver', () => {
  let etcd: EtcdCluster;
  let client: EtcdClient;
  before(async () => {
    etcd = await startEtcd();
    client = new EtcdClient(etcd.endpoints);
  });
  after(async () => {
    client?.close();
    await etcd?.stop();
  });

  it('lists a prefix at one revision with create revisions and leases', async () => {
    const lease = await client.grantLease(5);
    await client.put('p/a', '1', lease.id);
    await client.put('p/b', '2');
    await client.put('q/c', '3');
    const { revision, entries } = await client.list('p/');
    assert.deepEqual(entries.map((e) => [e.key, e.value]), [['p/a', '1'], ['p/b', '2']]);
    assert.equal(entries[0]!.lease, lease.id);
    assert.equal(entries[1]!.lease, '0');
    assert.ok(Number(revision) >= Number(entries[1]!.modRevision));
    await client.revokeLease(lease.id);
    assert.equal(await client.get('p/a'), undefined, 'a revoked lease takes its keys along');
    // As of the earlier revision, p/a is still there.
    const past = await client.list('p/', revision);
    assert.equal(past.revision, revision);
    assert.deepEqual(past.entries.map((e) => e.key), ['p/a', 'p/b']);
  });

  it('keeps a lease alive with keepaliveOnce; once it expired the answer is 0 and its key is gone', async () => {
    const lease = await client.grantLease(2);
    assert.equal(lease.ttl, 2);
    await client.put('ka/x', 'v', lease.id);
    for (let i = 0; i < 4; i++) {
      await sleep(700);
      assert.equal(await client.keepaliveOnce(lease.id, 1000), 2);
    }
    assert.ok(await client.get('ka/x'), 'the key lives on while kept alive');
    const ttl = await client.leaseTimeToLive(lease.id);
    assert.ok(ttl && ttl.grantedTtl === 2 && ttl.ttl <= 2);
    await until('the lease to expire', async () => (await client.get('ka/x')) === undefined, { timeoutMs: 5000, intervalMs: 100 });
    assert.equal(await client.keepaliveOnce(lease.id, 1000), 0);
    assert.equal(await client.leaseTimeToLive(lease.id), undefined);
  });

  it('keeps answering keepalives sent many at once, some abandoned (no circuit breaker trips on cancelled streams)', async () => {
    // Regression: each finished keepalive stream was cancelled while still writable, which the client
    // counted as a failure of the member; three in a row opened its circuit breaker and every keepalive
    // was refused for 5 s ("Execution prevented because the circuit breaker is open").
    const lease = await client.grantLease(5);
    for (let round = 0; round < 3; round++) {
      const abort = new AbortController();
      const batch = Array.from({ length: 6 }, (_, i) => client.keepaliveOnce(lease.id, 2000, i % 2 ? abort.signal : undefined));
      abort.abort();
      const results = await Promise.allSettled(batch);
      for (const [i, r] of results.entries()) {
        if (i % 2 === 0) assert.deepEqual(r, { status: 'fulfilled', value: 5 }, `round ${round}, keepalive ${i}`);
      }
    }
    assert.equal(await client.keepaliveOnce(lease.id, 1000), 5);
    await client.revokeLease(lease.id);
  });

  it('applies a transaction only while its guards hold', async () => {
    const lease = await client.grantLease(5);
    await client.put('g/node', 'me', lease.id);
    const guards = [{ key: 'g/run', absent: true as const }, { key: 'g/node', lease: lease.id }];
    const first = await client.txn(guards, [{ put: 'g/run', value: 'me', lease: lease.id }]);
    assert.equal(first.succeeded, true);
    const run = await client.get('g/run');
    assert.equal(run?.createRevision, first.revision);
    assert.equal((await client.txn(guards, [{ put: 'g/run', value: 'again' }])).succeeded, false, 'not absent any more');
    assert.equal((await client.get('g/run'))?.value, 'me');
    // Guarded by the create revision (a fencing token).
    assert.equal((await client.txn([{ key: 'g/run', createRevision: first.revision }], [{ put: 'g/status', value: 'ok' }])).succeeded, true);
    assert.equal((await client.txn([{ key: 'g/run', createRevision: '1' }], [{ put: 'g/status', value: 'stale' }])).succeeded, false);
    assert.equal((await client.get('g/status'))?.value, 'ok');
    await client.txn([], [{ delete: 'g/run' }]);
    assert.equal(await client.get('g/run'), undefined);
  });

  it('keepaliveOnce rejects within its timeout when etcd is gone', async () => {
    const lone = await startEtcd();
    const c = new EtcdClient(lone.endpoints);
    try {
      const lease = await c.grantLease(5);
      await lone.kill(lone.members[0]!);
      const start = Date.now();
      await assert.rejects(c.keepaliveOnce(lease.id, 500));
      assert.ok(Date.now() - start < 1500, `took ${Date.now() - start} ms`);
    } finally {
      c.close();
      await lone.stop();
    }
  });
});

// Membership against a real etcd: the node key under its own lease, our own keepalive loop with its
// deadline, the lease file (0600) and re-attaching within the TTL.
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { clusterKeys, parseNodeRecord } from '../../src/cluster/keys.ts';
import { Membership, leaseFilePath, readLeaseFile, readNodes, type MembershipEvent, type MembershipOptions } from '../../src/cluster/membership.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';
import { until } from '../helpers/poll.ts';

const keys = clusterKeys();
const record = (name: string): MembershipOptions['record'] => ({
  name,
  role: 'worker',
  capacity: { cpus: 4, memoryMiB: 8192 },
  labels: { zone: 'a' },
  gpuLevels: ['low'],
});

describe('cluster membership', () => {
  let etcd: EtcdCluster;
  let client: EtcdClient;
  let dir: string;
  before(async () => {
    etcd = await startEtcd();
    client = new EtcdClient(etcd.endpoints);
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-member-'));
  });
  after(async () => {
    client?.close();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('joins with its node key under its own 5 s lease, keeps it past the TTL, and records the deadline', async () => {
    const stateDir = path.join(dir, 'a');
    const before = Date.now();
    const m = await Membership.join({ client, record: record('a'), stateDir });
    try {
      const entry = await client.get(keys.node('a'));
      assert.ok(entry);
      assert.equal(entry.lease, m.leaseId);
      const published = parseNodeRecord(entry.value);
      assert.deepEqual(published && { ...published, joinedAt: 'x' }, { ...record('a'), joinedAt: 'x' });
      assert.equal((await client.leaseTimeToLive(m.leaseId!))?.grantedTtl, 5);

      const file = await readLeaseFile(stateDir);
      assert.equal(file?.leaseId, m.leaseId);
      assert.equal((await stat(leaseFilePath(stateDir))).mode & 0o777, 0o600);
      // deadline = send time of the last acknowledged keepalive (here: the grant) + 5 s − 1 s
      assert.ok(file!.deadline >= before + 4000 && file!.deadline <= Date.now() + 4000, `deadline ${file!.deadline - before} ms after start`);

      await sleep(7000);
      assert.equal((await client.get(keys.node('a')))?.lease, m.leaseId, 'still there after more than one TTL');
      const later = await readLeaseFile(stateDir);
      assert.equal(later!.deadline, later!.lastAckSentAt + 4000);
      assert.ok(Date.now() - later!.lastAckSentAt < 500 + 1000, 'keepalives go out every ~0.5 s');
    } finally {
      await m.leave();
    }
    assert.equal(await client.get(keys.node('a')), undefined);
    assert.equal(await readLeaseFile(stateDir), undefined);
  });

  it('re-attaches to its lease after a restart within the TTL, and takes a new one after it', async () => {
    const stateDir = path.join(dir, 'b');
    const first = await Membership.join({ client, record: record('b'), stateDir });
    const leaseId = first.leaseId;
    await first.stop(); // a daemon stopping: the lease is kept
    await sleep(1500);
    const second = await Membership.join({ client, record: { ...record('b'), revision: 'main@sha1:1' }, stateDir });
    assert.equal(second.leaseId, leaseId);
    assert.equal((await client.get(keys.node('b')))?.lease, leaseId);
    assert.equal(parseNodeRecord((await client.get(keys.node('b')))!.value)?.revision, 'main@sha1:1');
    await second.stop();

    await until('the old lease to expire', async () => (await client.get(keys.node('b'))) === undefined, { timeoutMs: 8000, intervalMs: 200 });
    const third = await Membership.join({ client, record: record('b'), stateDir });
    try {
      assert.notEqual(third.leaseId, leaseId);
      assert.equal((await client.get(keys.node('b')))?.lease, third.leaseId);
    } finally {
      await third.leave();
    }
  });

  it('refuses a second controller with the same node name while the first one lives', async () => {
    const first = await Membership.join({ client, record: record('c'), stateDir: path.join(dir, 'c1') });
    try {
      await assert.rejects(
        Membership.join({ client, record: record('c'), stateDir: path.join(dir, 'c2'), ttlSeconds: 2 }),
        /node c is already in the cluster under another lease/,
      );
      assert.equal((await client.get(keys.node('c')))?.lease, first.leaseId);
    } finally {
      await first.leave();
    }
  });

  it('publishes its revision and lists nodes with their leases at one revision', async () => {
    const m = await Membership.join({ client, record: record('d'), stateDir: path.join(dir, 'd') });
    try {
      await m.setRevision('main@sha1:abc');
      const { revision, nodes } = await readNodes(client);
      assert.ok(Number(revision) > 0);
      const d = nodes.find((n) => n.record.name === 'd');
      assert.equal(d?.record.revision, 'main@sha1:abc');
      assert.equal(d?.lease, m.leaseId);
      assert.ok(d?.ttl && d.ttl.grantedTtl === 5 && d.ttl.ttl > 0);
    } finally {
      await m.leave();
    }
  });

  it('puts its node key back when it is deleted while the lease lives', async () => {
    const m = await Membership.join({ client, record: record('e'), stateDir: path.join(dir, 'e'), keepaliveMs: 300 });
    try {
      await client.delete(keys.node('e'));
      await until('the node key to come back', async () => (await client.get(keys.node('e')))?.lease === m.leaseId, 3000);
    } finally {
      await m.leave();
    }
  });

  it('gives its lease up once the deadline passes without an answer, and rejoins with a new lease', async () => {
    const lone = await startEtcd();
    const c = new EtcdClient(lone.endpoints, { callTimeoutMs: 500 });
    const stateDir = path.join(dir, 'f');
    const events: Array<MembershipEvent & { at: number }> = [];
    const m = await Membership.join({ client: c, record: record('f'), stateDir });
    m.on((e) => events.push({ ...e, at: Date.now() }));
    const oldLease = m.leaseId!;
    try {
      // Freeze etcd: every call goes unanswered (SIGSTOP, by PID), then let it go on.
      const pid = lone.members[0]!.pid!;
      process.kill(pid, 'SIGSTOP');
      const stoppedAt = Date.now();
      const deadline = m.deadline!; // can only grow from here (an answer already on its way)
      let lost: (MembershipEvent & { at: number }) | undefined;
      try {
        await until('the lease to be given up', () => (lost = events.find((e) => e.type === 'lost')) !== undefined, 10_000);
      } finally {
        process.kill(pid, 'SIGCONT');
      }
      // Lost no earlier than the deadline, and well before the client library's own ~2×TTL.
      assert.ok(lost!.at >= deadline, `lost ${deadline - lost!.at} ms before the deadline`);
      assert.ok(lost!.at - stoppedAt < 4000 + 1000, `lost ${lost!.at - stoppedAt} ms after etcd froze`);
      assert.equal((lost as { leaseId: string }).leaseId, oldLease);
      await until('a rejoin with a new lease', () => events.some((e) => e.type === 'joined' && e.leaseId !== oldLease), 10_000);
      const entry = await c.get(keys.node('f'));
      assert.ok(entry && entry.lease !== oldLease);
      assert.equal(await c.leaseTimeToLive(oldLease), undefined, 'the old lease is revoked, not kept');
    } finally {
      await m.leave().catch(() => {});
      c.close();
      await lone.stop();
    }
  });
});

// Membership never keeps a lease its fencer may have fenced: an answer processed after the deadline does
// not extend it, and a fence recorded for the current lease (cluster/fenced.json) makes the daemon give it
// up and rejoin with a new one. (A fake etcd client: the timing of a late answer cannot be forced on a
// real one.) Without this a fenced lease lived on and the fencer killed every VM started under it.
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { EtcdClient } from '../../src/drivers/etcd.ts';
import { fenceFilePath } from '../../src/cluster/fencer.ts';
import { Membership, readLeaseFile, type MembershipEvent } from '../../src/cluster/membership.ts';
import { until } from '../helpers/poll.ts';

/** Just enough of etcd for membership: leases, the node key, keepalives answered after `delayMs()`. */
function fakeEtcd(delayMs: () => number) {
  let next = 1;
  const live = new Set<string>();
  let nodeKeyLease: string | undefined;
  const revoked: string[] = [];
  const client = {
    endpoints: ['http://127.0.0.1:1'],
    async grantLease(ttl: number) {
      const id = String(next++);
      live.add(id);
      return { id, ttl };
    },
    async keepaliveOnce(id: string) {
      await sleep(delayMs());
      return live.has(id) ? 2 : 0;
    },
    async revokeLease(id: string) {
      live.delete(id);
      revoked.push(id);
      if (nodeKeyLease === id) nodeKeyLease = undefined;
    },
    async txn(_guards: unknown, ops: Array<{ lease?: string }>) {
      nodeKeyLease = ops[0]?.lease;
      return { succeeded: true, revision: '1' };
    },
    async get() {
      return nodeKeyLease ? { key: 'k', value: '{}', createRevision: '1', modRevision: '1', lease: nodeKeyLease } : undefined;
    },
  };
  return { client: client as unknown as EtcdClient, revoked };
}

const record = { name: 'n1', role: 'worker' as const, capacity: { cpus: 1, memoryMiB: 256 }, labels: {}, gpuLevels: [] };

describe('membership and the fence', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-mfence-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('gives the lease up when its keepalive answer comes after the deadline, never extends it', async () => {
    let delay = 10;
    const { client, revoked } = fakeEtcd(() => delay);
    const stateDir = path.join(dir, 'late');
    const events: MembershipEvent[] = [];
    // TTL 2 s: deadline 1 s after each acknowledged send.
    const m = await Membership.join({ client, stateDir, record, ttlSeconds: 2, keepaliveMs: 200 });
    m.on((e) => events.push(e));
    try {
      await sleep(500);
      const before = (await readLeaseFile(stateDir))!;
      delay = 600; // each answer 0.6 s late: the one sent 0.8 s after the last ack arrives after its deadline (1 s)
      await until('the lease to be given up', () => events.some((e) => e.type === 'lost'), 5000);
      const lost = events.find((e) => e.type === 'lost')!;
      assert.equal(lost.leaseId, before.leaseId);
      assert.match((lost as { reason: string }).reason, /deadline/);
      assert.ok(revoked.includes(before.leaseId));
      delay = 10;
      await until('a new lease', async () => (await readLeaseFile(stateDir))?.leaseId !== before.leaseId, 5000);
    } finally {
      await m.stop();
    }
  });

  it('gives the lease up once the fencer recorded a fence of it, and rejoins with a new one', async () => {
    const { client } = fakeEtcd(() => 10);
    const stateDir = path.join(dir, 'fenced');
    const events: MembershipEvent[] = [];
    const m = await Membership.join({ client, stateDir, record, ttlSeconds: 2, keepaliveMs: 200 });
    m.on((e) => events.push(e));
    try {
      const lease = m.leaseId!;
      await mkdir(path.dirname(fenceFilePath(stateDir)), { recursive: true });
      await writeFile(fenceFilePath(stateDir), JSON.stringify({ leaseId: lease, since: new Date().toISOString(), reason: 'test', killed: [] }));
      await until('the lease to be given up', () => events.some((e) => e.type === 'lost'), 3000);
      assert.match((events.find((e) => e.type === 'lost') as { reason: string }).reason, /the fencer fenced it/);
      await until('a new lease', () => m.leaseId !== undefined && m.leaseId !== lease, 3000);
      await sleep(600);
      assert.equal(events.filter((e) => e.type === 'lost').length, 1, 'an old fence record does not touch the new lease');
    } finally {
      await m.stop();
    }
  });
});

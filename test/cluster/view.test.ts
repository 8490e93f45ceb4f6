// The cluster view on a real etcd: one snapshot with the run records, the watch (a vanished claim with its
// holder and time, per-VM and whole-cluster notifications), claims only under a live lease, and the
// fresh re-check a start makes: refused once the lease is gone, whatever the cached view still says.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { Membership } from '../../src/cluster/membership.ts';
import { ClusterView } from '../../src/cluster/view.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';
import { until } from '../helpers/poll.ts';

const record = (name: string) => ({ name, role: 'worker' as const, capacity: { cpus: 2, memoryMiB: 2048 }, labels: {}, gpuLevels: [] });

describe('cluster view', () => {
  let etcd: EtcdCluster;
  let dir: string;
  let admin: EtcdClient;
  const clients: EtcdClient[] = [];
  const members: Membership[] = [];
  const views: ClusterView[] = [];
  const node = async (name: string) => {
    const client = new EtcdClient(etcd.endpoints);
    clients.push(client);
    const membership = await Membership.join({ client, stateDir: path.join(dir, name), record: record(name) });
    members.push(membership);
    const view = await ClusterView.open({ client, membership });
    views.push(view);
    return { membership, view };
  };
  before(async () => {
    etcd = await startEtcd();
    admin = new EtcdClient(etcd.endpoints);
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-view-'));
  });
  after(async () => {
    for (const v of views) await v.close();
    for (const m of members) await m.leave().catch(() => {});
    for (const c of clients) c.close();
    admin?.close();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('claims, records and re-checks; a vanished claim is seen with its holder; notifications name what changed', async () => {
    const a = await node('a');
    const b = await node('b');
    const told: Array<string[] | 'all'> = [];
    b.view.subscribe((vms) => told.push(vms));

    const claim = await a.view.claim('web');
    assert.ok(claim.claimed);
    assert.equal(await a.view.verifyHeld('web', claim.claim.token), undefined, 'held: the start may go on');
    assert.match((await b.view.verifyHeld('web', claim.claim.token)) ?? '', /no longer held by node b/, 'not b\'s');
    await until('b sees the claim', async () => (await b.view.current()).snapshot.claims.get('web')?.node === 'a', 5000);
    await until('b is told of the claim', () => told.some((t) => t === 'all'), 5000); // a claim concerns every VM (placement)
    // The record on its own (changes arriving together are told once, as 'all' when a claim is among them).
    const toldBefore = told.length;
    assert.ok(await a.view.recordRun('web', claim.claim.token, { node: 'a', token: claim.claim.token, startedAt: new Date().toISOString() }));
    await until('b sees the record', async () => (await b.view.current()).runs.get('web')?.node === 'a', 5000);
    await until('b is told the record concerns web', () => told.slice(toldBefore).some((t) => Array.isArray(t) && t.includes('web')), 5000);

    // a's lease is revoked (its node lost): the claim vanishes; b saw it go, and from whom.
    const before = Date.now();
    await admin.revokeLease(a.membership.leaseId!);
    await until('b sees web vanish', async () => !(await b.view.current()).snapshot.claims.has('web'), 5000);
    const vanished = (await b.view.current()).vanished.get('web');
    assert.equal(vanished?.from, 'a');
    assert.ok(vanished!.at >= before - 5 && vanished!.at <= Date.now());
    // a's cached view may still show its claim: the fresh check refuses the start.
    assert.match((await a.view.verifyHeld('web', claim.claim.token)) ?? '', /no longer held|no live lease/);
    assert.equal(await a.view.recordRun('web', claim.claim.token, { node: 'a', token: claim.claim.token, startedAt: '' }), false, 'a late write under the dead token is refused');
    // b claims it; a new token.
    const again = await b.view.claim('web');
    assert.ok(again.claimed && BigInt(again.claim.token) > BigInt(claim.claim.token));
  });

  it('a node whose lease deadline passed claims nothing and verifies nothing (its own clock, before asking etcd)', async () => {
    const fake = { name: 'c', leaseId: '123', deadline: Date.now() - 1, on: () => {} };
    const client = new EtcdClient(etcd.endpoints);
    clients.push(client);
    const view = await ClusterView.open({ client, membership: fake });
    views.push(view);
    assert.equal(view.liveLease(), undefined);
    const res = await view.claim('db');
    assert.deepEqual([res.claimed, !res.claimed && res.reason], [false, 'node c has no live lease']);
    assert.match((await view.verifyHeld('db', '5')) ?? '', /no live lease/);
  });
});

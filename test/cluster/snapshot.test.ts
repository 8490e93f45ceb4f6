// Membership, ownership and placement together on a real etcd: three nodes place six VMs identically
// from one snapshot, claim them, and when a node is lost only its VMs move (and nothing moves back).
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { Membership } from '../../src/cluster/membership.ts';
import { claimRun } from '../../src/cluster/ownership.ts';
import { placeOn, readSnapshot } from '../../src/cluster/snapshot.ts';
import type { Placement, VmRequest } from '../../src/cluster/placement.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';

const keys = clusterKeys();
const vms: VmRequest[] = ['web', 'db', 'mail', 'dev', 'tor', 'i2p'].map((name) => ({ name, cpus: 1, memoryMiB: 256 }));
const nodeOf = (p: Placement | undefined) => (p && 'node' in p ? p.node : undefined);

describe('cluster snapshot → placement → claims', () => {
  let etcd: EtcdCluster;
  let dir: string;
  const clients: EtcdClient[] = [];
  const members = new Map<string, Membership>();
  before(async () => {
    etcd = await startEtcd();
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-snap-'));
    for (const name of ['n1', 'n2', 'n3']) {
      const client = new EtcdClient(etcd.endpoints);
      clients.push(client);
      members.set(name, await Membership.join({ client, stateDir: path.join(dir, name), record: { name, role: 'worker', capacity: { cpus: 4, memoryMiB: 4096 }, labels: {}, gpuLevels: [] } }));
    }
  });
  after(async () => {
    for (const m of members.values()) await m.leave().catch(() => {});
    for (const c of clients) c.close();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** Each node reads a snapshot and claims the VMs placement gives it (only the winner tries). */
  async function round(): Promise<Map<string, string>> {
    const names = [...members.keys()];
    const clientOf = (name: string) => clients[['n1', 'n2', 'n3'].indexOf(name)]!;
    const snapshots = await Promise.all(names.map((name) => readSnapshot(clientOf(name), keys)));
    for (const [i, name] of names.entries()) {
      const m = members.get(name)!;
      const result = placeOn(snapshots[i]!, vms);
      for (const [vm, p] of result.placements) {
        if (nodeOf(p) === name && !snapshots[i]!.claims.has(vm)) {
          const r = await claimRun(clientOf(name), keys, vm, { name, lease: m.leaseId! });
          assert.ok(r.claimed, `${name} could not claim ${vm}: ${!r.claimed && r.reason}`);
        }
      }
    }
    const final = await readSnapshot(clients[0]!, keys);
    return new Map([...final.claims].map(([vm, c]) => [vm, c.node]));
  }

  it('every node computes the same placement at one revision, and the claims follow it', async () => {
    const snapshot = await readSnapshot(clients[0]!, keys);
    const answers = await Promise.all(clients.map((c) => readSnapshot(c, keys, snapshot.revision).then((s) => placeOn(s, vms))));
    for (const a of answers) assert.deepEqual([...a.placements], [...answers[0]!.placements]);
    const owners = await round();
    assert.equal(owners.size, 6);
    for (const [vm, node] of owners) assert.equal(nodeOf(answers[0]!.placements.get(vm)), node);
  });

  it('a lost node\'s VMs move, the others stay, and nothing moves back when it returns', async () => {
    const before = await round();
    const lost = before.get('web')!; // the node running web
    await members.get(lost)!.leave(); // its lease revoked: node key and run/ claims gone
    members.delete(lost);
    const after = await round();
    assert.equal(after.size, 6);
    for (const [vm, node] of before) {
      if (node === lost) assert.notEqual(after.get(vm), lost, `${vm} still on the lost node`);
      else assert.equal(after.get(vm), node, `${vm} moved although its node lives`);
    }
    const i = ['n1', 'n2', 'n3'].indexOf(lost);
    members.set(lost, await Membership.join({ client: clients[i]!, stateDir: path.join(dir, `${lost}-again`), record: { name: lost, role: 'worker', capacity: { cpus: 4, memoryMiB: 4096 }, labels: {}, gpuLevels: [] } }));
    const back = await round();
    assert.deepEqual([...back].sort(), [...after].sort());
  });
});

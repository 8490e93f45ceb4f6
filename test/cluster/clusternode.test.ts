// The ClusterNode controller against a real etcd: two joined nodes, a declared one that never joined, run/
// claims, a drain mark and a fence record, observed and reported as the engine would.
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { fenceFilePath } from '../../src/cluster/fencer.ts';
import { hex, Membership } from '../../src/cluster/membership.ts';
import { claimRun } from '../../src/cluster/ownership.ts';
import { ClusterNodeController } from '../../src/controllers/clusternode/index.ts';
import { makeWorld } from '../../src/engine/contract.ts';
import type { StoredResource } from '../../src/store/store.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';

const keys = clusterKeys();
const node = (name: string): StoredResource<'ClusterNode'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'ClusterNode', metadata: { name },
  spec: { address: '10.0.0.1', role: 'worker', publicKey: { alg: 'ml-dsa-65', value: 'AA==' } } as StoredResource<'ClusterNode'>['spec'],
  source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '',
});
const vm = (name: string, cpus: number, memory: string): StoredResource<'VirtualMachine'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'VirtualMachine', metadata: { name },
  spec: { cpus, memory } as StoredResource<'VirtualMachine'>['spec'],
  source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '',
});

describe('ClusterNode controller on a real etcd', () => {
  let etcd: EtcdCluster;
  let dir: string;
  let client: EtcdClient;
  const members = new Map<string, Membership>();
  before(async () => {
    etcd = await startEtcd();
    client = new EtcdClient(etcd.endpoints);
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-cnode-'));
    for (const name of ['n1', 'n2']) {
      members.set(name, await Membership.join({ client, stateDir: path.join(dir, name), record: { name, role: 'worker', capacity: { cpus: 8, memoryMiB: 8192 }, labels: {}, gpuLevels: [] } }));
    }
  });
  after(async () => {
    for (const m of members.values()) await m.leave().catch(() => {});
    client?.close();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('reports each declared node from etcd: Ready with lease and VMs, NotReady without a key, drained, fenced', async () => {
    const n1 = members.get('n1')!;
    for (const v of ['web', 'db']) assert.ok((await claimRun(client, keys, v, { name: 'n1', lease: n1.leaseId! })).claimed);
    assert.ok((await claimRun(client, keys, 'mail', { name: 'n2', lease: members.get('n2')!.leaseId! })).claimed);
    await client.put(keys.drain('n2'), JSON.stringify({ node: 'n2', drainedAt: new Date().toISOString() }));

    const resources = [node('n1'), node('n2'), node('n3')];
    const world = makeWorld([...resources, vm('web', 2, '1Gi'), vm('db', 1, '512Mi'), vm('mail', 1, '256Mi')]);
    const controller = new ClusterNodeController({ stateDir: path.join(dir, 'n1') }); // this host is n1
    try {
      const actual = await controller.observe(resources);
      const [p1, p2, p3] = resources.map((r) => controller.plan(r, actual.get(`ClusterNode/${r.metadata.name}`)));
      assert.deepEqual(p1, { actions: [] }, 'n1 Ready');
      assert.deepEqual(p2, { actions: [] }, 'n2 Ready (drained nodes are still Ready)');
      assert.equal(p3!.hold?.reason, 'NotJoined');

      const r1 = controller.report(node('n1'), actual.get('ClusterNode/n1'), world);
      assert.equal(r1.fields?.lease, hex(n1.leaseId!));
      assert.deepEqual(r1.fields?.vms, ['db', 'web']);
      assert.deepEqual(r1.fields?.allocated, { cpus: 3, memory: '1536Mi' });
      assert.ok(Date.now() - Date.parse(String(r1.fields?.lastKeepalive)) < 3000, 'a recent keepalive');
      assert.equal(r1.conditions?.find((c) => c.type === 'Fenced')?.status, 'False');
      const r2 = controller.report(node('n2'), actual.get('ClusterNode/n2'), world);
      assert.deepEqual([r2.fields?.drained, r2.fields?.vms, r2.fields?.allocated], [true, ['mail'], { cpus: 1, memory: '256Mi' }]);
      assert.equal(r2.conditions?.find((c) => c.type === 'SchedulingDisabled')?.status, 'True');

      // The fencer recorded a fence of n1's lease: n1 reports Fenced while that lease is its own.
      await mkdir(path.dirname(fenceFilePath(path.join(dir, 'n1'))), { recursive: true });
      const fence = { leaseId: n1.leaseId!, since: new Date().toISOString(), reason: 'the lease deadline passed 5 ms ago without an acknowledged keepalive', killed: [{ vm: 'web', pid: 1234 }] };
      await writeFile(fenceFilePath(path.join(dir, 'n1')), JSON.stringify(fence));
      const fenced = controller.report(node('n1'), (await controller.observe([node('n1')])).get('ClusterNode/n1'), world);
      assert.deepEqual(fenced.conditions?.find((c) => c.type === 'Fenced'), { type: 'Fenced', status: 'True', reason: 'LeaseLost', message: `since ${fence.since}: ${fence.reason}` });

      // n2 lost (lease revoked): NotReady.
      await members.get('n2')!.leave();
      members.delete('n2');
      const lost = await controller.observe([node('n2')]);
      assert.equal(controller.plan(node('n2'), lost.get('ClusterNode/n2')).hold?.reason, 'NotJoined');
    } finally {
      (controller as unknown as { client?: { client: EtcdClient } }).client?.client.close();
    }
  });

  it('on a host that joined no cluster: Ready, with Joined=False NoCluster', async () => {
    const controller = new ClusterNodeController({ stateDir: path.join(dir, 'lone') });
    const actual = await controller.observe([node('n1')]);
    assert.deepEqual(actual.get('ClusterNode/n1'), { joined: false });
    assert.deepEqual(controller.plan(node('n1'), actual.get('ClusterNode/n1')), { actions: [] });
    assert.equal(controller.report(node('n1'), actual.get('ClusterNode/n1'), makeWorld([node('n1')])).conditions?.[0]?.reason, 'NoCluster');
  });
});

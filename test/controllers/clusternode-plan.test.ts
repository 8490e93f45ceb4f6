// ClusterNode's pure plan and status report.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { makeWorld } from '../../src/engine/contract.ts';
import { allocated, planClusterNode, reportClusterNode } from '../../src/controllers/clusternode/plan.ts';
import type { ClusterNodeActual } from '../../src/controllers/clusternode/observe.ts';
import type { NodeView } from '../../src/cluster/status.ts';
import type { StoredResource } from '../../src/store/store.ts';

const node = (name: string): StoredResource<'ClusterNode'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'ClusterNode', metadata: { name },
  spec: { address: '10.0.0.1', role: 'worker', publicKey: { alg: 'ml-dsa-65', value: 'AA==' } } as StoredResource<'ClusterNode'>['spec'],
  source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '',
});
const vm = (name: string, cpus?: number, memory?: string): StoredResource<'VirtualMachine'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'VirtualMachine', metadata: { name },
  spec: { ...(cpus ? { cpus } : {}), ...(memory ? { memory } : {}) } as StoredResource<'VirtualMachine'>['spec'],
  source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '',
});
const view = (over: Partial<NodeView> = {}): NodeView => ({ name: 'n1', ready: true, role: 'worker', lease: '1a2b', lastKeepalive: Date.parse('2026-12-01T00:00:00Z'), ttlSeconds: 4, vms: [], declared: true, drained: false, ...over });
const world = makeWorld([node('n1'), node('n2'), vm('web', 2, '1Gi'), vm('db'), vm('big', 4, '4096Mi')]);
const cond = (report: ReturnType<typeof reportClusterNode>, type: string) => report.conditions?.find((c) => c.type === type);

describe('ClusterNode plan and report (pure)', () => {
  it('without a cluster: Ready (in sync) and a Joined=False NoCluster condition', () => {
    const actual: ClusterNodeActual = { joined: false };
    assert.deepEqual(planClusterNode(node('n1'), actual), { actions: [] });
    const report = reportClusterNode(node('n1'), actual, world);
    assert.deepEqual(cond(report, 'Joined'), { type: 'Joined', status: 'False', reason: 'NoCluster', message: 'this host joined no cluster (controller without --node/--etcd): the node is a declaration only' });
  });

  it('a live lease: Ready; the status has lease, last keepalive, allocated cpus/memory summed over its VMs, its VMs', () => {
    const actual: ClusterNodeActual = { joined: true, local: 'n1', revision: '42', view: view({ vms: ['db', 'web'] }) };
    assert.deepEqual(planClusterNode(node('n1'), actual), { actions: [] });
    const report = reportClusterNode(node('n1'), actual, world);
    assert.equal(cond(report, 'Joined')?.status, 'True');
    assert.equal(cond(report, 'Fenced')?.status, 'False');
    assert.equal(cond(report, 'SchedulingDisabled')?.status, 'False');
    assert.deepEqual(report.fields, {
      cluster: { etcdRevision: '42', thisHost: true },
      lease: '1a2b',
      lastKeepalive: '2026-12-01T00:00:00.000Z',
      leaseTtlSeconds: 4,
      fenced: null,
      drained: false,
      revision: null,
      allocated: { cpus: 3, memory: '1280Mi' }, // web 2 cpus 1Gi + db (defaults) 1 cpu 256Mi
      vms: ['db', 'web'],
    });
  });

  it('no node key: NotReady (Waiting NotJoined, looked at again); a dead lease: LeaseExpired', () => {
    const missing = planClusterNode(node('n2'), { joined: true, local: 'n1', revision: '42', view: { name: 'n2', ready: false, vms: [], declared: true, drained: false } });
    assert.equal(missing.hold?.type, 'Waiting');
    assert.equal(missing.hold?.reason, 'NotJoined');
    assert.match(missing.hold!.message, /node n2 has no key in etcd/);
    const expired = planClusterNode(node('n1'), { joined: true, local: 'n1', revision: '42', view: view({ ready: false }) });
    assert.equal(expired.hold?.reason, 'LeaseExpired');
    const report = reportClusterNode(node('n2'), { joined: true, local: 'n1', revision: '42', view: { name: 'n2', ready: false, vms: [], declared: true, drained: false } }, world);
    assert.deepEqual(cond(report, 'Joined'), { type: 'Joined', status: 'False', reason: 'NotJoined', message: 'no node key in etcd (this host is node n1)' });
    assert.equal(cond(report, 'Fenced')?.reason, 'NotThisHost');
  });

  it('fenced and drained are reported; an unreachable etcd holds the pass with its reason', () => {
    const fence = { leaseId: '1000', since: '2026-12-01T00:00:05Z', reason: 'the lease deadline passed 3 ms ago', killed: [{ vm: 'web', pid: 7 }] };
    const report = reportClusterNode(node('n1'), { joined: true, local: 'n1', revision: '42', view: view({ drained: true, lease: '3e8' }), fence }, world);
    assert.deepEqual(cond(report, 'Fenced'), { type: 'Fenced', status: 'True', reason: 'LeaseLost', message: 'since 2026-12-01T00:00:05Z: the lease deadline passed 3 ms ago' });
    assert.deepEqual(report.fields?.fenced, { lease: '3e8', since: '2026-12-01T00:00:05Z', reason: 'the lease deadline passed 3 ms ago', killed: ['web'] });
    assert.equal(cond(report, 'SchedulingDisabled')?.status, 'True');
    // Rejoined under a new lease: the fence is history.
    const rejoined = reportClusterNode(node('n1'), { joined: true, local: 'n1', revision: '43', view: view({ lease: 'ffff' }), fence }, world);
    assert.deepEqual(cond(rejoined, 'Fenced'), { type: 'Fenced', status: 'False', reason: 'Rejoined', message: 'fenced 2026-12-01T00:00:05Z (the lease deadline passed 3 ms ago); rejoined under a new lease' });
    assert.equal(rejoined.fields?.fenced, null);
    const down = planClusterNode(node('n1'), { joined: true, local: 'n1', unreachable: 'cannot read the cluster from etcd at http://x:1: down' });
    assert.deepEqual(down.hold && [down.hold.type, down.hold.reason], ['Waiting', 'EtcdUnreachable']);
  });

  it('allocated counts VMs the world does not declare as nothing, and names them', () => {
    assert.deepEqual(allocated(['big', 'ghost', 'web'], world), { cpus: 6, memoryMiB: 5120, undeclared: ['ghost'] });
  });
});

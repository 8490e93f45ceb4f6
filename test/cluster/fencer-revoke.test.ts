// The fencer revokes the lease it fenced: a keepalive sent just before the deadline and answered after it
// left etcd (and the daemon) holding a lease the fencer had fenced; the daemon then claimed VMs under it
// and the fencer killed every start (seen in the three-node tests: VMs placed on that node never ran).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Fencer, type VmProcess } from '../../src/cluster/fencer.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { leaseFilePath, type LeaseFile } from '../../src/cluster/membership.ts';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { processAlive, processStartTime } from '../../src/proc.ts';
import { ensureDir, writeFileAtomic } from '../../src/store/atomic.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';

describe('the fencer revokes the lease it fenced', () => {
  let etcd: EtcdCluster;
  let client: EtcdClient;
  let dir: string;
  before(async () => {
    etcd = await startEtcd();
    client = new EtcdClient(etcd.endpoints);
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-fence-revoke-'));
  });
  after(async () => {
    client?.close();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('deadline passed while etcd still keeps the lease (a late-acknowledged keepalive): VMs killed, then the lease revoked', async () => {
    const keys = clusterKeys();
    const lease = await client.grantLease(5);
    await client.put(keys.node('n1'), '{}', lease.id);
    const now = Date.now();
    const file: LeaseFile = { node: 'n1', leaseId: lease.id, ttlSeconds: 5, endpoints: etcd.endpoints, prefix: 'qwamos/', deadline: now - 10, lastAckSentAt: now - 4010, pid: process.pid, published: true };
    await ensureDir(path.dirname(leaseFilePath(dir)));
    await writeFileAtomic(leaseFilePath(dir), JSON.stringify(file));
    const vm = spawn('sleep', ['60'], { stdio: 'ignore' });
    const standIn: VmProcess = { vm: 'a', pid: vm.pid!, start: String(processStartTime(vm.pid!)) };
    const fencer = new Fencer({ stateDir: dir, client, vms: async () => (processAlive(standIn.pid, standIn.start) ? [standIn] : []) });
    try {
      assert.ok(await client.leaseTimeToLive(lease.id), 'etcd keeps the lease before the fence');
      await fencer.check();
      assert.equal(fencer.fence?.leaseId, lease.id);
      assert.deepEqual(fencer.fence?.killed, [{ vm: 'a', pid: vm.pid }]);
      assert.equal(processAlive(vm.pid!), false, 'the VM is dead before the lease goes');
      assert.equal(await client.leaseTimeToLive(lease.id), undefined, 'the fenced lease is revoked');
      assert.equal(await client.get(keys.node('n1')), undefined, 'and its keys with it');
    } finally {
      await fencer.stop();
      if (vm.exitCode === null && vm.signalCode === null) vm.kill('SIGKILL');
    }
  });
});

describe('the fencer\'s deadline check does not wait for etcd', () => {
  it('an etcd read that hangs (a node cut from etcd) does not delay the fence at the deadline', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-fence-hang-'));
    // etcd unreachable: every read hangs (as behind a firewall drop), revokes fail.
    const hanging = { get: () => new Promise(() => {}), revokeLease: () => Promise.reject(new Error('unreachable')) } as unknown as EtcdClient;
    const fences: number[] = [];
    const fencer = new Fencer({ stateDir: dir, client: hanging, vms: async () => [], etcdCheckMs: 0, onFence: () => fences.push(Date.now()) });
    try {
      const deadline = Date.now() + 400;
      const file: LeaseFile = { node: 'n1', leaseId: '7', ttlSeconds: 5, endpoints: ['http://127.0.0.1:1'], prefix: 'qwamos/', deadline, lastAckSentAt: deadline - 4000, pid: process.pid, published: true };
      await ensureDir(path.dirname(leaseFilePath(dir)));
      await writeFileAtomic(leaseFilePath(dir), JSON.stringify(file));
      fencer.start();
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(fences.length, 1, 'fenced');
      assert.ok(fences[0]! - deadline < 500, `fenced ${fences[0]! - deadline} ms after the deadline`);
    } finally {
      await Promise.race([fencer.stop(), new Promise((r) => setTimeout(r, 100))]);
      await rm(dir, { recursive: true, force: true });
    }
  });
});

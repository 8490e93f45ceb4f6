// One real daemon (`qwamos controller --node n1 --etcd`) running VMs through the engine in a cluster:
// a VM placed here is claimed, started (the ledger's start before the spawn) and reports its node and
// fencing token; a VM placed on another node is never started here and says where it is placed; one
// pinned to a node not in the cluster is Unschedulable; deleting the VM stops it, writes its ledger stop and releases the claim. (The three-daemon failover
// cases live in test/e2e/cluster-*.test.ts.) One booted guest, no network: the sandbox host netns is
// only where the daemon's host side runs.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { Membership } from '../../src/cluster/membership.ts';
import { parseLedger } from '../../src/cluster/ledger.ts';
import { qemuVmProcesses } from '../../src/cluster/fencer.ts';
import { Store } from '../../src/store/store.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';
import { createSandbox, installGuest, until, vm, type Sandbox } from '../e2e/harness.ts';

const keys = clusterKeys();

describe('a cluster daemon runs only the VMs placed on it', { timeout: 300_000 }, () => {
  let etcd: EtcdCluster;
  let client: EtcdClient;
  let sb: Sandbox;
  let other: Membership;
  let daemon: ChildProcess;
  let ledger: string;
  const status = async (name: string) => (await Store.open(sb.stateDir)).getStatus('VirtualMachine', name);
  const condition = async (name: string, type: string) => (await status(name))?.conditions.find((c) => c.type === type);
  const stopDaemon = async () => {
    const gone = new Promise((r) => daemon.once('exit', r));
    daemon.kill('SIGTERM');
    await gone;
  };

  before(async () => {
    etcd = await startEtcd();
    client = new EtcdClient(etcd.endpoints);
    sb = await createSandbox();
    await installGuest(sb);
    ledger = path.join(sb.dir, 'ledger.jsonl');
    sb.env.QWAMOS_LEDGER = ledger;
    // A second node, membership only: VMs placed on it are its business.
    other = await Membership.join({ client, stateDir: path.join(sb.dir, 'n2'), record: { name: 'n2', role: 'worker', capacity: { cpus: 4, memoryMiB: 4096 }, labels: {}, gpuLevels: [] } });
    daemon = await sb.startDaemon(['--node', 'n1', '--etcd', etcd.endpoints.join(',')]);
  });
  after(async () => {
    if (daemon && daemon.exitCode === null && daemon.signalCode === null) await stopDaemon().catch(() => {});
    await other?.leave().catch(() => {});
    client?.close();
    await sb?.cleanup();
    await etcd?.stop();
  });

  it('claims and starts a VM placed here; reports node and token; leaves one placed elsewhere alone; Unschedulable says why', async () => {
    const clusterNode = (n: string) =>
      `apiVersion: qwamos.io/v1alpha1\nkind: ClusterNode\nmetadata:\n  name: ${n}\nspec:\n  address: 10.0.0.${n.slice(1)}\n  role: worker\n  capacity: { cpus: 4, memory: 4Gi }\n  publicKey: { alg: ml-dsa-65, value: ${Buffer.alloc(1952).toString('base64')} }\n`;
    const files = await sb.manifests_({
      'nodes.yaml': ['n1', 'n2', 'n9'].map(clusterNode).join('---\n'),
      'solo.yaml': vm('solo', '  placement:\n    node: n1\n'),
      'away.yaml': vm('away', '  runStrategy: Paused\n  placement:\n    node: n2\n'),
      'lost.yaml': vm('lost', '  placement:\n    node: n9\n'),
    });
    const r = await sb.qwamos(['apply', ...files.flatMap((f) => ['-f', f])]);
    assert.equal(r.exitCode, 0, r.stderr);
    await until('solo running with its node and token', async () => (await status('solo'))?.fields.node === 'n1' && (await status('solo'))?.fields.state === 'running', 90_000);
    const claim = await client.get(keys.run('solo'));
    assert.ok(claim, 'run/solo is claimed');
    assert.equal((await status('solo'))?.fields.fencingToken, claim.createRevision);
    assert.equal(claim.lease, (await client.get(keys.node('n1')))?.lease, 'under n1\'s lease');
    const placed = await condition('solo', 'Placed');
    assert.deepEqual([placed?.status, placed?.reason], ['True', 'PlacedHere']);
    const log = parseLedger(await readFile(ledger, 'utf8'));
    assert.deepEqual(log.map((e) => [e.vm, e.node, e.event]), [['solo', 'n1', 'start']]);

    await until('away reported as placed on n2', async () => (await condition('away', 'Placed'))?.reason === 'PlacedElsewhere', 30_000);
    assert.match((await condition('away', 'Placed'))?.message ?? '', /^node n2/);
    assert.equal(await client.get(keys.run('away')), undefined, 'n1 did not claim it');
    await until('lost reported Unschedulable', async () => (await condition('lost', 'Unschedulable'))?.status === 'True', 30_000);
    assert.match((await condition('lost', 'Unschedulable'))?.message ?? '', /pinned to node n9, which is not in the cluster/);
    const running = new Set((await qemuVmProcesses(sb.stateDir)).map((p) => p.vm));
    assert.deepEqual([...running], ['solo'], 'only the VM placed here runs here');
  });

  it('deleting the VM stops it, writes its ledger stop once it is gone, and releases run/<vm>', async () => {
    const pid = Number((await status('solo'))?.fields.pid);
    const r = await sb.qwamos(['delete', 'vm/solo', '--wait', '--timeout', '60s']);
    assert.equal(r.exitCode, 0, r.stderr);
    await until('run/solo released', async () => (await client.get(keys.run('solo'))) === undefined, 10_000);
    const log = parseLedger(await readFile(ledger, 'utf8'));
    assert.deepEqual(log.map((e) => [e.vm, e.event, e.pid]), [['solo', 'start', null], ['solo', 'stop', pid]]);
    const record = await client.get(`qwamos/vms/solo`);
    assert.ok(record && JSON.parse(record.value).stoppedAt, 'the run record says it was stopped, not lost');
  });
});

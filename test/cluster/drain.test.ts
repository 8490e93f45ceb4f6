// `qwamos drain NODE` against a real etcd: the drain/ key, placement moving VMs off the node (nothing new
// lands there, nothing moves back after --undo), --wait following the run/ claims, and the one-line errors.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { Membership } from '../../src/cluster/membership.ts';
import { claimRun, releaseRun, type RunClaim } from '../../src/cluster/ownership.ts';
import { placeOn, readSnapshot } from '../../src/cluster/snapshot.ts';
import type { Placement, VmRequest } from '../../src/cluster/placement.ts';
import { freePort, startEtcd, type EtcdCluster } from '../helpers/etcd.ts';
import { until } from '../helpers/poll.ts';

const keys = clusterKeys();
const bin = new URL('../../bin/qwamos.js', import.meta.url).pathname;
const nodeOf = (p: Placement | undefined) => (p && 'node' in p ? p.node : undefined);
const vms: VmRequest[] = ['a', 'b', 'c', 'd'].map((name) => ({ name, cpus: 1, memoryMiB: 256 }));

describe('qwamos drain', () => {
  let etcd: EtcdCluster;
  let dir: string;
  let client: EtcdClient;
  const members = new Map<string, Membership>();
  const claims = new Map<string, RunClaim>();
  const qwamos = async (args: string[], stateDir = path.join(dir, 'n1')) => {
    const r = await execa('node', [bin, ...args], { env: { ...process.env, QWAMOS_STATE_DIR: stateDir }, reject: false, timeout: 60_000 });
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
  };

  before(async () => {
    etcd = await startEtcd();
    client = new EtcdClient(etcd.endpoints);
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-drain-'));
    for (const name of ['n1', 'n2']) {
      members.set(name, await Membership.join({ client, stateDir: path.join(dir, name), record: { name, role: 'worker', capacity: { cpus: 8, memoryMiB: 8192 }, labels: {}, gpuLevels: [] } }));
    }
    // Every VM claimed where placement puts it.
    const placed = placeOn(await readSnapshot(client, keys), vms);
    for (const [vm, p] of placed.placements) {
      const node = nodeOf(p)!;
      const r = await claimRun(client, keys, vm, { name: node, lease: members.get(node)!.leaseId! });
      assert.ok(r.claimed);
      claims.set(vm, r.claim);
    }
  });
  after(async () => {
    for (const m of members.values()) await m.leave().catch(() => {});
    client?.close();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('marks the node drained: placement moves its VMs to the other node and puts nothing new there; get nodes shows it', async () => {
    const onN1 = [...claims.values()].filter((c) => c.node === 'n1').map((c) => c.vm).sort();
    assert.ok(onN1.length > 0, 'placement spread some VMs onto n1');
    const r = await qwamos(['drain', 'n1']); // the cluster from n1's lease file
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /^node\/n1 cordoned: placement puts no VM there$/m);
    assert.match(r.stdout, new RegExp(`^node/n1 drained; moving ${onN1.length} VM\\(s\\) away: ${onN1.join(', ')}$`, 'm'));
    const mark = await client.get(keys.drain('n1'));
    assert.ok(mark, 'the drain key exists');
    assert.equal(mark.lease, '0', 'not bound to a lease');

    const snapshot = await readSnapshot(client, keys);
    assert.deepEqual(snapshot.nodeSet.nodes.find((n) => n.name === 'n1')?.drained, true);
    const placed = placeOn(snapshot, [...vms, { name: 'e', cpus: 1, memoryMiB: 256 }]);
    for (const vm of [...vms.map((v) => v.name), 'e']) assert.equal(nodeOf(placed.placements.get(vm)), 'n2', `${vm} placed on n2`);

    const table = await qwamos(['get', 'nodes']);
    assert.equal(table.exitCode, 0, table.stderr);
    assert.match(table.stdout, /^n1\s+True,SchedulingDisabled\s+worker/m);
    assert.match(table.stdout, /^n2\s+True\s+worker/m);
    const json = JSON.parse((await qwamos(['get', 'nodes', '-o', 'json'])).stdout) as { nodes: Array<{ name: string; drained: boolean }> };
    assert.deepEqual(json.nodes.map((n) => [n.name, n.drained]), [['n1', true], ['n2', false]]);

    const again = await qwamos(['drain', 'n1']);
    assert.equal(again.exitCode, 0, again.stderr);
    assert.match(again.stdout, /^node\/n1 already drained$/m);
  });

  it('--wait returns once the node holds no run/ claim, naming each VM as it leaves; times out with one line', async () => {
    const onN1 = [...claims.values()].filter((c) => c.node === 'n1');
    const timedOut = await qwamos(['drain', 'n1', '--wait', '--timeout', '1s']);
    assert.equal(timedOut.exitCode, 1);
    assert.match(timedOut.stderr, /^error: timed out after 1s waiting for node n1 to stop /);
    assert.equal(timedOut.stderr.trim().split('\n').length, 1, timedOut.stderr);

    // What n1's VM controller does for a drained node: stop each VM there and release its claim.
    const child = spawn('node', [bin, 'drain', 'n1', '--wait'], { env: { ...process.env, QWAMOS_STATE_DIR: path.join(dir, 'n1') }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c) => (out += String(c)));
    child.stderr.on('data', (c) => (out += String(c)));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    await until('drain --wait to start waiting', () => /waiting for \d+ VM\(s\) to leave node n1/.test(out) || child.exitCode !== null, 60_000);
    await sleep(1000);
    assert.equal(child.exitCode, null, `--wait returned while n1 still holds claims: ${out}`);
    for (const c of onN1) {
      assert.ok(await releaseRun(client, keys, c));
      claims.delete(c.vm);
      // ... and the placement winner claims it.
      const r = await claimRun(client, keys, c.vm, { name: 'n2', lease: members.get('n2')!.leaseId! });
      assert.ok(r.claimed);
      claims.set(c.vm, r.claim);
    }
    assert.equal(await exited, 0, out);
    for (const c of onN1) assert.match(out, new RegExp(`^vm/${c.vm} left node n1$`, 'm'));
    assert.match(out, /^node\/n1 drained$/m);
  });

  it('--undo removes the mark; nothing moves back by itself', async () => {
    const r = await qwamos(['drain', 'n1', '--undo']);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /^node\/n1 uncordoned/m);
    assert.equal(await client.get(keys.drain('n1')), undefined);
    const snapshot = await readSnapshot(client, keys);
    assert.equal(snapshot.nodeSet.nodes.find((n) => n.name === 'n1')?.drained, undefined);
    const placed = placeOn(snapshot, vms);
    for (const v of vms) assert.equal(nodeOf(placed.placements.get(v.name)), 'n2', `${v.name} stays on n2`);
    const twice = await qwamos(['drain', 'n1', '--undo']);
    assert.equal(twice.exitCode, 0);
    assert.match(twice.stdout, /^node\/n1 is not drained$/m);
  });

  it('errors are one line: an unknown node, a host in no cluster, an unreachable etcd, a bad name', async () => {
    const unknown = await qwamos(['drain', 'n9']);
    assert.equal(unknown.exitCode, 1);
    assert.equal(unknown.stderr, 'error: node n9 is not in the cluster (no node key in etcd, no ClusterNode/n9 declared)');
    assert.equal(await client.get(keys.drain('n9')), undefined);

    const lone = await qwamos(['drain', 'n1'], path.join(dir, 'lone'));
    assert.equal(lone.exitCode, 1);
    assert.match(lone.stderr, /^error: this host joined no cluster: .*--etcd URL/);
    assert.equal(lone.stderr.trim().split('\n').length, 1);

    const nobody = `http://127.0.0.1:${await freePort()}`;
    const down = await qwamos(['drain', 'n1', '--etcd', nobody], path.join(dir, 'lone'));
    assert.equal(down.exitCode, 1);
    assert.match(down.stderr, new RegExp(`^error: cannot reach etcd at ${nobody}: `));
    assert.equal(down.stderr.trim().split('\n').length, 1, down.stderr);

    const bad = await qwamos(['drain', 'N_1']);
    assert.equal(bad.exitCode, 2);
    const both = await qwamos(['drain', 'n1', '--undo', '--wait']);
    assert.equal(both.exitCode, 2);
  });
});

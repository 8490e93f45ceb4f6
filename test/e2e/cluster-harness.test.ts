// The three-node harness itself (test/helpers/cluster.ts), with stand-in QEMUs: three daemons join one
// etcd from their own netns, `get nodes` sees them; a node cut from etcd by a firewall drop in its netns
// passes its lease deadline and its fencer kills its VMs; healed, it rejoins with a new lease; the /proc
// observer sees a duplicate when there is one; cleanup leaves no process and no netns behind.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { vmPaths } from '../../src/controllers/vm/context.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { liveCopies } from '../helpers/cluster-ledger.ts';
import { pidLive, startCluster, type ClusterNodeHandle, type TestCluster } from '../helpers/cluster.ts';
import { until } from '../helpers/poll.ts';

const keys = clusterKeys();

/** A process with the command line of VM `vm`'s QEMU on this node (how the fencer and controller find QEMUs). */
async function standIn(node: ClusterNodeHandle, vm: string): Promise<ChildProcess> {
  await mkdir(path.join(node.stateDir, 'vms', vm), { recursive: true });
  const runDir = vmPaths({ stateDir: node.stateDir }, vm).runDir;
  return spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e6)', '--', '-qmp', `unix:${runDir}/qmp.sock,server=on,wait=off`, '-name', `guest=${vm},debug-threads=on`], {
    argv0: 'qemu-system-x86_64',
    stdio: 'ignore',
  });
}

describe('the three-node cluster harness', { timeout: 240_000 }, () => {
  let cluster: TestCluster;
  const standIns: ChildProcess[] = [];
  before(async () => {
    const t0 = Date.now();
    cluster = await startCluster({ nodes: 3 });
    await Promise.all(cluster.nodes.map(async (n) => {
      await n.startDaemon();
      await n.startFencer();
    }));
    console.log(`# cluster up (etcd in a netns, 3 daemons + fencers) in ${Date.now() - t0} ms`);
  });
  after(async () => {
    for (const s of standIns) if (s.exitCode === null && s.signalCode === null) s.kill('SIGKILL');
    await cluster?.cleanup();
  });

  test('three daemons join from their own netns; get nodes (inside a node netns) shows all three Ready', async () => {
    for (const n of cluster.nodes) {
      const entry = await cluster.client.get(keys.node(n.name));
      assert.ok(entry, `${n.name} has its node key`);
      assert.equal(entry.lease, (await n.leaseFile())?.leaseId, `${n.name}'s key carries the lease of its lease file`);
      assert.match(n.daemon!.output(), new RegExp(`cluster: node ${n.name} joined with lease`));
    }
    const r = await cluster.nodes[0]!.qwamos(['get', 'nodes', '-o', 'json']);
    assert.equal(r.exitCode, 0, r.stderr);
    const view = JSON.parse(r.stdout) as { nodes: Array<{ name: string; ready: boolean }> };
    assert.deepEqual(view.nodes.map((n) => [n.name, n.ready]).sort(), [['n1', true], ['n2', true], ['n3', true]]);
    // The test process itself reaches etcd only through the relay: the nodes' address is not routable here.
    assert.match(cluster.etcd.endpoints[0]!, /^http:\/\/10\.99\.0\.1:/);
    assert.match(cluster.etcd.localEndpoints[0]!, /^http:\/\/127\.0\.0\.1:/);
  });

  test('the observer sees two live copies of one VM on two nodes (its positive control)', async () => {
    const [n1, , n3] = cluster.nodes;
    const a = await standIn(n1!, 'dup');
    const b = await standIn(n3!, 'dup');
    standIns.push(a, b);
    cluster.observer.start();
    try {
      await until('the observer to see the duplicate', () => cluster.observer.duplicates.some((d) => d.vm === 'dup' && d.copies.length === 2), 5000);
    } finally {
      a.kill('SIGKILL');
      b.kill('SIGKILL');
      await until('stand-ins gone', () => !pidLive(a.pid!) && !pidLive(b.pid!), 5000);
    }
    await cluster.observer.stop();
    cluster.observer.duplicates.length = 0;
  });

  test('a node cut from etcd by a firewall drop in its netns: its fencer kills its VMs within 4.5 s; healed, it rejoins with a new lease', async () => {
    const n2 = cluster.node('n2');
    const before = (await n2.leaseFile())!;
    const vms = [await standIn(n2, 'sa'), await standIn(n2, 'sb')];
    standIns.push(...vms);
    await until('the stand-ins to be seen as n2\'s VMs', async () => (await n2.qemus()).length === 2, 5000);
    await sleep(2000);
    assert.ok(vms.every((v) => pidLive(v.pid!)), 'nothing is killed while the node holds its lease');

    await n2.cut();
    const cutAt = Date.now();
    const deadAt = new Map<number, number>();
    await until('n2\'s stand-ins killed', () => {
      for (const v of vms) if (!deadAt.has(v.pid!) && !pidLive(v.pid!)) deadAt.set(v.pid!, Date.now());
      return deadAt.size === vms.length;
    }, { timeoutMs: 10_000, intervalMs: 20 });
    const killMs = Math.max(...deadAt.values()) - cutAt;
    console.log(`# cut → stand-ins dead: ${killMs} ms (bound 4500)`);
    assert.ok(killMs <= 4500, `killed ${killMs} ms after the cut`);
    await n2.fencer!.waitFor(/fenced lease \d+: the lease deadline passed/, 5000);
    // etcd expires the lease on its own: the node key goes.
    await until('n2\'s node key to expire', async () => (await cluster.client.get(keys.node('n2'))) === undefined, { timeoutMs: 10_000, intervalMs: 100 });
    console.log(`# cut → n2's key expired in etcd: ${Date.now() - cutAt} ms`);

    await n2.heal();
    const healedAt = Date.now();
    await until('n2 to rejoin with a new lease', async () => {
      const e = await cluster.client.get(keys.node('n2')).catch(() => undefined);
      return e !== undefined && e.lease !== before.leaseId && e.lease === (await n2.leaseFile())?.leaseId;
    }, { timeoutMs: 20_000, intervalMs: 100 });
    console.log(`# heal → n2 rejoined with a new lease: ${Date.now() - healedAt} ms`);
    assert.ok(n2.daemon!.alive() && n2.fencer!.alive(), 'daemon and fencer live through the cut');
  });

  test('killNode ends the daemon, fencer and QEMUs by PID and records the stops', async () => {
    const n3 = cluster.node('n3');
    const v = await standIn(n3, 'sc');
    standIns.push(v);
    await until('seen', async () => (await n3.qemus()).length === 1, 5000);
    const daemonPid = n3.daemon!.pid;
    const fencerPid = n3.fencer!.pid;
    const killed = await cluster.killNode('n3');
    assert.deepEqual(killed, [{ vm: 'sc', pid: v.pid }]);
    assert.ok(!pidLive(daemonPid) && !pidLive(fencerPid) && !pidLive(v.pid!));
    assert.equal((await liveCopies(cluster.nodes)).get('sc'), undefined);
  });

  test('cleanup ends every process and removes every netns', async () => {
    const pids = [...cluster.nodes.flatMap((n) => [n.daemon?.pid, n.fencer?.pid]), ...cluster.etcd.members.map((m) => m.pid)].filter((p): p is number => p !== undefined);
    const prefixes = [cluster.nodes[0]!.netns.split('_')[0]!, ...cluster.nodes.map((n) => n.host.prefix)];
    const v = await standIn(cluster.node('n1'), 'sd');
    await until('seen', async () => (await cluster.node('n1').qemus()).length === 1, 5000);
    await cluster.cleanup();
    assert.ok(!pidLive(v.pid!), 'a QEMU of a node is killed');
    for (const p of pids) assert.ok(!pidLive(p), `pid ${p} ended`);
    const left = (await readdir('/run/netns').catch(() => [] as string[])).filter((n) => prefixes.some((p) => n.startsWith(p)));
    assert.deepEqual(left, []);
    cluster = undefined as unknown as TestCluster;
  });
});

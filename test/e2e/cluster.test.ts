// `qwamos controller --node NAME --etcd URL` joins a real etcd; `qwamos get nodes` shows the cluster;
// a restart within the TTL re-attaches to the same lease; the controller supervises its fencer.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { vmPaths } from '../../src/controllers/vm/context.ts';
import { fencerLogPath, fencerPidPath, liveFencer } from '../../src/cluster/fencer-supervisor.ts';
import { processAlive, procStat } from '../../src/proc.ts';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { clusterKeys, parseNodeRecord } from '../../src/cluster/keys.ts';
import { hex } from '../../src/cluster/membership.ts';
import { claimRun, releaseRun } from '../../src/cluster/ownership.ts';
import { freePort, startEtcd, type EtcdCluster } from '../helpers/etcd.ts';
import { createSandbox, until, type Sandbox } from './harness.ts';

const keys = clusterKeys();
const output = (d: ChildProcess) => (d as unknown as { output: () => string }).output();

async function stop(daemon: ChildProcess): Promise<void> {
  if (daemon.exitCode !== null || daemon.signalCode !== null) return;
  daemon.kill('SIGTERM');
  const [code] = await once(daemon, 'exit');
  assert.equal(code, 0, output(daemon));
}

describe('cluster membership from the CLI', () => {
  let etcd: EtcdCluster;
  let client: EtcdClient;
  let sb: Sandbox;
  before(async () => {
    etcd = await startEtcd();
    client = new EtcdClient(etcd.endpoints);
    sb = await createSandbox();
  });
  after(async () => {
    client?.close();
    await sb?.cleanup();
    await etcd?.stop();
  });

  test('controller --node --etcd joins; get nodes shows it Ready with its lease, and a declared node NotReady', async (t) => {
    const node = await sb.manifest(
      'nodes.yaml',
      ['n1', 'n2']
        .map((n) => `apiVersion: qwamos.io/v1alpha1\nkind: ClusterNode\nmetadata:\n  name: ${n}\n  labels: {}\nspec:\n  address: 10.0.0.${n.slice(1)}\n  role: worker\n  capacity: { cpus: 3, memory: 2Gi }\n  labels: { zone: a }\n  publicKey: { alg: ml-dsa-65, value: ${Buffer.alloc(1952).toString('base64')} }\n`)
        .join('---\n'),
    );
    const applied = await sb.qwamos(['apply', '-f', node]);
    assert.equal(applied.exitCode, 0, applied.stderr);

    const daemon = await sb.startDaemon(['--node', 'n1', '--etcd', etcd.endpoints.join(','), '--gpu-levels', 'low,medium']);
    try {
      assert.match(output(daemon), /cluster: node n1 joined with lease [0-9a-f]+ \(TTL 5s\)/);
      const entry = await client.get(keys.node('n1'));
      assert.ok(entry, 'the node key exists');
      const record = parseNodeRecord(entry.value);
      assert.deepEqual(
        { role: record?.role, capacity: record?.capacity, labels: record?.labels, gpu: record?.gpuLevels },
        { role: 'worker', capacity: { cpus: 3, memoryMiB: 2048 }, labels: { zone: 'a' }, gpu: ['low', 'medium'] },
      );

      const table = await sb.qwamos(['get', 'nodes']);
      assert.equal(table.exitCode, 0, table.stderr);
      const lines = table.stdout.trim().split('\n');
      assert.match(lines[0]!, /^NAME\s+READY\s+ROLE\s+LEASE\s+LAST KEEPALIVE\s+REVISION/);
      assert.match(lines[1]!, new RegExp(`^n1\\s+True\\s+worker\\s+${hex(entry.lease)}\\s+\\d+(\\.\\d)?s ago\\s+-`));
      assert.match(lines[2]!, /^n2\s+False\s+-\s+-\s+-\s+-/);

      const json = await sb.qwamos(['get', 'nodes', '-o', 'json', '--etcd', etcd.endpoints[0]!]);
      assert.equal(json.exitCode, 0, json.stderr);
      const view = JSON.parse(json.stdout) as { nodes: Array<{ name: string; ready: boolean; lastKeepalive?: number }> };
      const n1 = view.nodes.find((n) => n.name === 'n1');
      assert.equal(n1?.ready, true);
      assert.ok(n1?.lastKeepalive && Date.now() - n1.lastKeepalive < 3000, 'a keepalive went out within ~0.5 s');

      // ClusterNode status through the daemon's ClusterNode controller: n1 Ready with its lease, n2 NotJoined.
      type Status = { status: { conditions: Array<{ type: string; status: string; reason: string }>; fields: Record<string, unknown> } | null };
      const statusOf = async (name: string) => JSON.parse((await sb.qwamos(['get', 'clusternode', name, '-o', 'json'])).stdout) as Status;
      const cond = (s: Status, type: string) => s.status?.conditions.find((c) => c.type === type);
      await until('ClusterNode statuses from etcd', async () => {
        const [a, b] = [await statusOf('n1'), await statusOf('n2')];
        return cond(a, 'Ready')?.status === 'True' && a.status?.fields.lease === hex(entry.lease) && cond(b, 'Ready')?.reason === 'NotJoined';
      }, 30_000);
      const n1Status = await statusOf('n1');
      assert.equal(cond(n1Status, 'Joined')?.status, 'True');
      assert.deepEqual(n1Status.status?.fields.allocated, { cpus: 0, memory: '0Mi' });

      // -o wide: size, GPU levels, labels and the VMs whose run/ claim the node holds.
      const claim = await claimRun(client, keys, 'web', { name: 'n1', lease: entry.lease });
      assert.ok(claim.claimed);
      const wide = await sb.qwamos(['get', 'nodes', '-o', 'wide']);
      assert.equal(wide.exitCode, 0, wide.stderr);
      assert.match(wide.stdout.split('\n')[0]!, /CPUS\s+MEMORY\s+GPU LEVELS\s+LABELS\s+VMS$/);
      assert.match(wide.stdout.split('\n')[1]!, /\s3\s+2048Mi\s+low,medium\s+zone=a\s+web$/);
      assert.ok(await releaseRun(client, keys, claim.claim));

      // A restart within the TTL re-attaches to the same lease. (The stopping daemon sends a last
      // keepalive; the new one has TTL − 1 s = 4 s to come up. Under tsx on a loaded machine it may not:
      // then it must say so and take a new lease, never keep the old one.)
      await stop(daemon);
      const again = await sb.startDaemon(['--node', 'n1', '--etcd', etcd.endpoints.join(',')]);
      try {
        const late = /lease ([0-9a-f]+) of an earlier run passed its deadline (\d+) ms ago/.exec(output(again));
        if (late) {
          t.diagnostic(`restart slower than the deadline (by ${late[2]} ms): a new lease`);
          assert.equal(late[1], hex(entry.lease));
          assert.notEqual((await client.get(keys.node('n1')))?.lease, entry.lease);
          assert.equal(await client.leaseTimeToLive(entry.lease), undefined, 'the old lease is revoked');
        } else {
          assert.match(output(again), new RegExp(`node n1 re-attached to lease ${hex(entry.lease)}`));
          assert.equal((await client.get(keys.node('n1')))?.lease, entry.lease);
        }
      } finally {
        await stop(again);
      }
    } finally {
      await stop(daemon);
    }
  });

  test('flags are checked; an unreachable etcd is one line naming it', async () => {
    const noEtcd = await sb.qwamos(['controller', '--node', 'n1']);
    assert.equal(noEtcd.exitCode, 2);
    assert.match(noEtcd.stderr, /--node and --gpu-levels need --etcd/);
    const badUrl = await sb.qwamos(['controller', '--node', 'n1', '--etcd', 'etcd.local']);
    assert.equal(badUrl.exitCode, 2);
    assert.match(badUrl.stderr, /"etcd\.local" is not an etcd client URL/);
    const badName = await sb.qwamos(['controller', '--node', 'N_1', '--etcd', etcd.endpoints[0]!]);
    assert.equal(badName.exitCode, 2);

    const nobody = `http://127.0.0.1:${await freePort()}`;
    const down = await sb.qwamos(['controller', '--node', 'n3', '--etcd', nobody]);
    assert.equal(down.exitCode, 1);
    assert.match(down.stderr, new RegExp(`^error: cannot join the cluster at ${nobody} as node n3: `));
    assert.equal(down.stderr.trim().split('\n').length, 1, down.stderr);
    assert.equal(await client.get(keys.node('n3')), undefined);
  });

  test('the controller starts a detached fencer that survives its kill -9 and kills the QEMUs within 4.5 s; it is adopted, restarted when killed, never doubled', async () => {
    // Stand-in QEMUs: processes whose command line is that of the VM's QEMU (argv0 qemu-system-x86_64,
    // the VM's QMP socket and -name), as the VM controller and the fencer find them.
    const standIns: Array<{ vm: string; child: ChildProcess; exitedAt?: number }> = [];
    const startStandIn = async (vm: string) => {
      await mkdir(path.join(sb.stateDir, 'vms', vm), { recursive: true });
      const runDir = vmPaths({ stateDir: sb.stateDir }, vm).runDir;
      const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e6)', '--', '-qmp', `unix:${runDir}/qmp.sock,server=on,wait=off`, '-name', `guest=${vm},debug-threads=on`], {
        argv0: 'qemu-system-x86_64',
        stdio: 'ignore',
      });
      const entry: { vm: string; child: ChildProcess; exitedAt?: number } = { vm, child };
      child.once('exit', () => (entry.exitedAt = Date.now()));
      standIns.push(entry);
    };
    const fencerLog = () => readFile(fencerLogPath(sb.stateDir), 'utf8').catch(() => '');
    const daemon = await sb.startDaemon(['--node', 'n4', '--etcd', etcd.endpoints.join(',')]);
    let again: ChildProcess | undefined;
    try {
      const fencer = await liveFencer(sb.stateDir);
      assert.ok(fencer, `a fencer runs once the controller started: ${output(daemon)}`);
      assert.match(output(daemon), new RegExp(`fencer (started|\\(pid ${fencer.pid}\\) already runs)`));
      // Its own session and process group: not the daemon's.
      const [, , pgrp, session] = procStat(fencer.pid)!;
      assert.deepEqual([Number(pgrp), Number(session)], [fencer.pid, fencer.pid]);
      assert.equal((await stat(fencerPidPath(sb.stateDir))).mode & 0o777, 0o600);

      await startStandIn('a');
      await startStandIn('b');
      await sleep(2500);
      assert.deepEqual(standIns.map((s) => s.exitedAt), [undefined, undefined], `nothing is killed while the node holds its lease; fencer log:\n${await fencerLog()}\ndaemon:\n${output(daemon)}`);

      daemon.kill('SIGKILL');
      const killedAt = Date.now();
      await until('the stand-in QEMUs to be killed', () => standIns.every((s) => s.exitedAt !== undefined), 8000);
      for (const s of standIns) assert.ok(s.exitedAt! - killedAt <= 4500, `${s.vm} dead ${s.exitedAt! - killedAt} ms after the daemon`);
      assert.ok(processAlive(fencer.pid), 'the fencer outlives the daemon');
      await until('the fence in the fencer log', async () => /fencer: fenced lease \d+: the lease deadline passed/.test(await fencerLog()), 2000);
      assert.match(await fencerLog(), /killed (a|b) \(pid \d+\), (a|b) \(pid \d+\)/);

      // A new controller adopts the live fencer instead of starting a second one.
      again = await sb.startDaemon(['--node', 'n4', '--etcd', etcd.endpoints.join(',')]);
      assert.match(output(again), new RegExp(`fencer \\(pid ${fencer.pid}\\) already runs for this state dir: adopted`));
      assert.equal((await liveFencer(sb.stateDir))?.pid, fencer.pid);

      // A second fencer started by hand sees the first and exits.
      const second = await sb.qwamos(['fencer']);
      assert.equal(second.exitCode, 0, second.stderr);
      assert.match(second.stdout, new RegExp(`a fencer already runs for .* \\(pid ${fencer.pid}\\); exiting`));

      // The fencer killed: the controller starts a new one within a few seconds.
      process.kill(fencer.pid, 'SIGKILL');
      await until('a new fencer', async () => {
        const now = await liveFencer(sb.stateDir);
        return now !== undefined && now.pid !== fencer.pid;
      }, 20_000);
      assert.match(output(again), new RegExp(`fencer \\(pid ${fencer.pid}\\) is gone: starting a new one`));

      // A clean stop leaves the fencer guarding (VMs outlive the daemon).
      const guard = (await liveFencer(sb.stateDir))!;
      await stop(again);
      await sleep(1500);
      assert.ok(processAlive(guard.pid), 'the fencer keeps running after a clean stop');
    } finally {
      for (const s of standIns) if (s.exitedAt === undefined) s.child.kill('SIGKILL');
      if (daemon.exitCode === null && daemon.signalCode === null) daemon.kill('SIGKILL');
      if (again && again.exitCode === null && again.signalCode === null) again.kill('SIGKILL');
    }
  });

  test('the fencer exits by itself once the lease file is gone and no VM of the state dir runs', async () => {
    const fencer = await liveFencer(sb.stateDir);
    assert.ok(fencer, 'the fencer of the earlier tests still runs');
    await rm(path.join(sb.stateDir, 'cluster', 'lease.json'));
    await until('the fencer to exit', () => !processAlive(fencer.pid), 5000);
    assert.match(await readFile(fencerLogPath(sb.stateDir), 'utf8'), /nothing left to guard/);
    assert.equal(await liveFencer(sb.stateDir), undefined);
  });
});

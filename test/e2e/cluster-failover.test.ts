// Issue 11 point 6: three controller daemons on one machine, one etcd of three members, real tiny guests
// (microvm, TCG), TTL 5 s. One cluster is shared by the cases, in this order (each starts from what the one
// before left: VMs stay where they run, so each case picks the node that holds the most VMs; n3, the only
// node with GPU level low, is the one lost whole in the last case):
//   six VMs placed (within 5 s, the same placement on every node) · a daemon restart within the TTL (no VM
//   restarted) · the etcd leader killed (no fence, no restart for 15 s) · daemon kill -9 (old copies dead
//   ≤ 4.5 s, running elsewhere ≤ 10 s) · a node cut by a firewall drop in its netns (same bounds; healed,
//   it rejoins and nothing moves back) · daemon SIGSTOP for 15 s (fenced, restarted elsewhere, SIGCONT
//   makes no duplicate) · a whole node lost (restarted ≤ 8 s; the VM needing a GPU level only it had is
//   Unschedulable).
// After every case the ledger (written by the nodes' VM drivers and fencers) shows no two copies of a VM at
// one time, and neither did the /proc observer; a last test checks that over the whole run. Timings are
// printed as `# ...` lines. "Placed" is timed to the claims (run/<vm> in etcd); every node's own status
// is then checked to report the same placement. Each fault is injected into a settled cluster: every
// running guest has finished booting. Under TCG a booting kernel keeps a core busy for seconds, and
// four of them booting on two cores (the copies the case before moved) once made a failover miss its
// bound by 0.6 s: the time then went to emulating CPUs, not to the cluster. With KVM, boots cost little.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Store } from '../../src/store/store.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { readOwners } from '../../src/cluster/ownership.ts';
import { assertLedgerClean, liveCopies, readLedger, type Copy } from '../helpers/cluster-ledger.ts';
import { guestBooted, pidLive, startCluster, vmManifest, type ClusterNodeHandle, type TestCluster } from '../helpers/cluster.ts';
import { until } from '../helpers/poll.ts';

const keys = clusterKeys();
const VMS = ['va', 'vb', 'vc', 'vd', 've', 'vf'];
const GPU_VM = 'vg';
const GPU_NODE = 'n3';
const timings: string[] = [];
const timing = (line: string) => {
  timings.push(line);
  console.log(`# ${line}`);
};

// Room for every VM on any two nodes: placement's capacity filter must not be what a case tests.
const clusterNodes = ['n1', 'n2', 'n3']
  .map((n) => `apiVersion: qwamos.io/v1alpha1\nkind: ClusterNode\nmetadata:\n  name: ${n}\nspec:\n  address: 10.99.0.1${n.slice(1)}\n  role: worker\n  capacity: { cpus: 16, memory: 8Gi }\n  publicKey: { alg: ml-dsa-65, value: ${Buffer.alloc(1952).toString('base64')} }\n`)
  .join('---\n');

describe('three daemons, one etcd of three members, real guests: placement, fencing, failover exactly once', { timeout: 420_000 }, () => {
  let cluster: TestCluster;

  /** Where each VM runs now: its live copies (QMP says running) per VM. */
  const running = async (): Promise<Map<string, Copy[]>> => {
    // The observer's last /proc scan (≤ 100 ms old): one scan of /proc, not two, on a loaded machine.
    const copies = cluster.observer.latest;
    const out = new Map<string, Copy[]>();
    for (const [vm, list] of copies) {
      const up: Copy[] = [];
      for (const c of list) if ((await cluster.node(c.node).qmpStatus(vm)) === 'running') up.push(c);
      if (up.length) out.set(vm, up);
    }
    return out;
  };
  /** Waits until every running copy's guest has booted (its serial console says so); timed in the output. */
  const settled = async (what: string) => {
    const t0 = Date.now();
    await until('every running guest booted', async () => {
      for (const [vm, copies] of await running()) for (const c of copies) if (!(await guestBooted(cluster.node(c.node).stateDir, vm))) return false;
      return true;
    }, { timeoutMs: 120_000, intervalMs: 200 });
    timing(`before ${what}: every running guest booted (${Date.now() - t0} ms of waiting)`);
  };
  const where = (m: Map<string, Copy[]>) => [...m].map(([vm, cs]) => `${vm}@${cs.map((c) => c.node).join('+')}`).sort().join(' ');
  /** The node with the most running VMs among `candidates`, and those VMs. */
  const busiest = async (candidates = cluster.nodes): Promise<{ node: ClusterNodeHandle; vms: Array<{ vm: string; pid: number }> }> => {
    const now = await running();
    const per = candidates.map((n) => ({ node: n, vms: [...now].flatMap(([vm, cs]) => cs.filter((c) => c.node === n.name).map((c) => ({ vm, pid: c.pid }))) }));
    per.sort((a, b) => b.vms.length - a.vms.length || a.node.name.localeCompare(b.node.name));
    return per[0]!;
  };
  /** Waits until every VM of `vms` runs (QMP) on a node other than `lost`; returns ms from `since` per VM. */
  const runningElsewhere = async (vms: string[], lost: string, since: number, timeoutMs: number): Promise<Map<string, { node: string; pid: number; ms: number }>> => {
    const seen = new Map<string, { node: string; pid: number; ms: number }>();
    await until(`${vms.join(', ')} running on a node other than ${lost}`, async () => {
      // Only the copies still awaited are asked (QMP of every VM 20 times a second competes with the
      // launches being timed for the monitor socket and the CPU).
      for (const vm of vms) {
        if (seen.has(vm)) continue;
        for (const c of cluster.observer.latest.get(vm) ?? []) {
          if (c.node !== lost && (await cluster.node(c.node).qmpStatus(vm)) === 'running') {
            seen.set(vm, { ...c, ms: Date.now() - since });
            break;
          }
        }
      }
      return seen.size === vms.length;
    }, { timeoutMs, intervalMs: 50 });
    return seen;
  };
  /** Polls the PIDs until all are gone; returns ms from `since` until the last one died. */
  const deadWithin = async (pids: number[], since: number, timeoutMs: number): Promise<number> => {
    let last = since;
    const gone = new Set<number>();
    await until(`pids ${pids.join(', ')} to die`, () => {
      for (const p of pids) if (!gone.has(p) && !pidLive(p)) (gone.add(p), (last = Date.now()));
      return gone.size === pids.length;
    }, { timeoutMs, intervalMs: 20 });
    return last - since;
  };
  const fenceCount = (n: ClusterNodeHandle) => (n.fencer?.output().match(/fenced lease \d+/g) ?? []).length;
  const assertClean = async (what: string) => {
    const report = await assertLedgerClean(cluster.ledger);
    assert.deepEqual(cluster.observer.duplicates, [], `the observer saw two live copies (${what}):\n${cluster.observer.describe()}`);
    return report;
  };
  /** Placement as each node's store reports it (status fields.placedOn), by node. */
  const placements = async (vms: string[]) => {
    const out = new Map<string, string>();
    for (const n of cluster.nodes) {
      if (!n.daemon?.alive()) continue;
      const store = await Store.open(n.stateDir);
      const line = await Promise.all(vms.map(async (vm) => `${vm}=${String((await store.getStatus('VirtualMachine', vm))?.fields.placedOn ?? '?')}`));
      out.set(n.name, line.join(' '));
    }
    return out;
  };

  before(async () => {
    const t0 = Date.now();
    cluster = await startCluster({ nodes: 3, etcdMembers: 3, guest: true, gpuLevels: { [GPU_NODE]: ['low'] } });
    // Before the daemons: a node publishes its declared capacity when it joins.
    await cluster.applyAll({ 'nodes.yaml': clusterNodes });
    await Promise.all(cluster.nodes.map(async (n) => {
      await n.startDaemon();
      await n.startFencer();
    }));
    cluster.observer.start();
    timing(`cluster up (etcd ×3 in a netns, 3 daemons + fencers): ${Date.now() - t0} ms`);
  });
  after(async () => {
    if (timings.length) console.log(`# timings:\n${timings.map((t) => `#   ${t}`).join('\n')}`);
    await cluster?.cleanup();
  });

  test('six VMs are placed within 5 s, the same placement on every node, and run (QMP running)', async () => {
    const files = Object.fromEntries(VMS.map((vm) => [`${vm}.yaml`, vmManifest(vm)]));
    const applyStart = Date.now();
    await cluster.applyAll(files);
    const applied = Date.now();
    // Placed = claimed: run/<vm> exists for every VM (a node claims only what placement gives it). Each
    // node's own view (status placedOn) is written at the end of its pass, after the QEMU launch: it is
    // checked to agree, but not timed.
    await until('every VM claimed', async () => {
      const { owners } = await readOwners(cluster.client, keys);
      return VMS.every((vm) => owners.has(vm));
    }, { timeoutMs: 30_000, intervalMs: 50 });
    const placedMs = Date.now() - applied;
    let agreed = '';
    const claimedOn = new Map<string, string>();
    await until('every node reports the placement the claims show', async () => {
      const { owners } = await readOwners(cluster.client, keys);
      if (!VMS.every((vm) => owners.has(vm))) return false;
      const views = await placements(VMS);
      for (const vm of VMS) claimedOn.set(vm, owners.get(vm)!.node);
      agreed = VMS.map((vm) => `${vm}=${claimedOn.get(vm)}`).join(' ');
      return views.size === 3 && [...views.values()].every((v) => v === agreed);
    }, { timeoutMs: 30_000, intervalMs: 50 });
    timing(`six VMs placed and claimed: ${placedMs} ms after the stores had them (${Date.now() - applyStart} ms after the three applies began until every node reported the same placement; bound 5000 for the claims) — ${agreed}`);
    assert.ok(placedMs <= 5000, `placed in ${placedMs} ms`);
    assert.ok(new Set(claimedOn.values()).size >= 2, `spread over the nodes: ${agreed}`);
    await until('six VMs running', async () => (await running()).size === VMS.length, { timeoutMs: 90_000, intervalMs: 200 });
    const now = await running();
    timing(`six VMs running (QMP): ${Date.now() - applied} ms — ${where(now)}`);
    for (const [vm, cs] of now) {
      assert.equal(cs.length, 1, `${vm} runs once`);
      assert.equal(cs[0]!.node, claimedOn.get(vm), `${vm} runs where it was placed`);
    }
    await assertClean('placement');
  });

  test('a daemon restarted within the TTL restarts no VM (same QEMU PIDs)', async () => {
    await settled('the daemon restart');
    const { node, vms } = await busiest();
    const before = await liveCopies(cluster.nodes);
    const linesBefore = (await readLedger(cluster.ledger)).length;
    const lease = (await node.leaseFile())!.leaseId;
    const t0 = Date.now();
    await node.stopDaemon();
    await node.startDaemon();
    const kept = /the fencer kept it alive during the restart/.test(node.daemon!.output());
    timing(`daemon of ${node.name} (${vms.length} VMs) restarted in ${Date.now() - t0} ms${kept ? ' (the fencer kept the lease alive meanwhile)' : ''}`);
    assert.match(node.daemon!.output(), new RegExp(`node ${node.name} re-attached to lease`), 'it re-attached within the TTL');
    assert.equal((await node.leaseFile())!.leaseId, lease);
    await sleep(3000); // a reconcile pass after the restart
    assert.deepEqual(await liveCopies(cluster.nodes), before, 'no VM restarted or moved');
    assert.equal(fenceCount(node), 0, 'no fence');
    assert.equal((await readLedger(cluster.ledger)).length, linesBefore, 'no start or stop in the ledger');
    await assertClean('daemon restart');
  });

  test('the etcd leader of three members killed: no fence and no VM restart within 15 s', async () => {
    await settled('the etcd leader kill');
    const before = await liveCopies(cluster.nodes);
    const leases = await Promise.all(cluster.nodes.map(async (n) => (await n.leaseFile())?.leaseId));
    const fences = cluster.nodes.map(fenceCount);
    const linesBefore = (await readLedger(cluster.ledger)).length;
    const leader = await cluster.etcd.leader();
    await cluster.etcd.kill(leader);
    const t0 = Date.now();
    try {
      await sleep(15_000);
      assert.deepEqual(cluster.nodes.map(fenceCount), fences, 'no fencer fenced');
      assert.deepEqual(await Promise.all(cluster.nodes.map(async (n) => (await n.leaseFile())?.leaseId)), leases, 'every node kept its lease');
      assert.deepEqual(await liveCopies(cluster.nodes), before, 'no VM restarted or moved');
      assert.equal((await readLedger(cluster.ledger)).length, linesBefore, 'no start or stop in the ledger');
      timing(`etcd leader ${leader.name} killed: ${Date.now() - t0} ms without a fence or a VM restart`);
    } finally {
      await cluster.etcd.restart(leader);
    }
    await assertClean('etcd leader killed');
  });

  test('daemon kill -9 (fencer alive): the old copies dead within 4.5 s, running on another node within 10 s', async () => {
    await settled('kill -9');
    const { node, vms } = await busiest();
    assert.ok(vms.length > 0, 'a node runs VMs');
    process.kill(node.daemon!.pid, 'SIGKILL');
    const t0 = Date.now();
    try {
      const deadMs = await deadWithin(vms.map((v) => v.pid), t0, 15_000);
      const moved = await runningElsewhere(vms.map((v) => v.vm), node.name, t0, 30_000);
      const worst = Math.max(...[...moved.values()].map((m) => m.ms));
      timing(`kill -9 of ${node.name}'s daemon: its ${vms.length} copies dead in ${deadMs} ms (bound 4500); running elsewhere in ${worst} ms (bound 10000) — ${[...moved].map(([vm, m]) => `${vm}@${m.node} ${m.ms} ms`).join(', ')}`);
      assert.ok(deadMs <= 4500, `old copies dead after ${deadMs} ms`);
      assert.ok(worst <= 10_000, `running elsewhere after ${worst} ms`);
      await assertClean('kill -9');
    } finally {
      // The node comes back (also when the case failed: the next ones need three nodes).
      if (!node.daemon?.alive()) await node.startDaemon();
    }
    const afterMove = await liveCopies(cluster.nodes);
    await sleep(4000);
    assert.deepEqual(await liveCopies(cluster.nodes), afterMove, 'nothing moved back to the returning node');
    await assertClean('kill -9, return');
  });

  test('a node cut from etcd by a firewall drop in its netns: same bounds; healed, it rejoins and nothing moves back', async () => {
    await settled('the cut');
    const { node, vms } = await busiest();
    assert.ok(vms.length > 0, 'a node runs VMs');
    const lease = (await node.leaseFile())!.leaseId;
    await node.cut();
    const t0 = Date.now();
    try {
      const deadMs = await deadWithin(vms.map((v) => v.pid), t0, 15_000);
      const moved = await runningElsewhere(vms.map((v) => v.vm), node.name, t0, 30_000);
      const worst = Math.max(...[...moved.values()].map((m) => m.ms));
      timing(`${node.name} cut from etcd: its ${vms.length} copies dead in ${deadMs} ms (bound 4500); running elsewhere in ${worst} ms (bound 10000)`);
      assert.ok(deadMs <= 4500, `old copies dead after ${deadMs} ms`);
      assert.ok(worst <= 10_000, `running elsewhere after ${worst} ms`);
    } finally {
      await node.heal();
    }
    const healed = Date.now();
    const afterMove = await liveCopies(cluster.nodes);
    await until(`${node.name} to rejoin with a new lease`, async () => {
      const e = await cluster.client.get(keys.node(node.name)).catch(() => undefined);
      return e !== undefined && e.lease !== lease && e.lease === (await node.leaseFile())?.leaseId;
    }, { timeoutMs: 30_000, intervalMs: 100 });
    timing(`${node.name} healed: rejoined with a new lease in ${Date.now() - healed} ms`);
    await sleep(4000);
    assert.deepEqual(await liveCopies(cluster.nodes), afterMove, 'nothing moved back to the healed node');
    await assertClean('cut');
  });

  test('daemon SIGSTOP for 15 s: its fencer kills its VMs, they restart elsewhere; SIGCONT makes no duplicate', async () => {
    await settled('SIGSTOP');
    const { node, vms } = await busiest();
    assert.ok(vms.length > 0, 'a node runs VMs');
    process.kill(node.daemon!.pid, 'SIGSTOP');
    const t0 = Date.now();
    try {
      const deadMs = await deadWithin(vms.map((v) => v.pid), t0, 15_000);
      const moved = await runningElsewhere(vms.map((v) => v.vm), node.name, t0, 30_000);
      const worst = Math.max(...[...moved.values()].map((m) => m.ms));
      timing(`${node.name}'s daemon stopped (SIGSTOP): its ${vms.length} copies dead in ${deadMs} ms; running elsewhere in ${worst} ms`);
      assert.ok(deadMs <= 4500, `old copies dead after ${deadMs} ms`);
      assert.ok(worst <= 10_000, `running elsewhere after ${worst} ms`);
    } finally {
      await sleep(Math.max(0, 15_000 - (Date.now() - t0)));
      process.kill(node.daemon!.pid, 'SIGCONT');
    }
    const afterMove = await liveCopies(cluster.nodes);
    await sleep(6000); // the woken daemon finds its lease gone; nothing of it may run again
    assert.deepEqual(await liveCopies(cluster.nodes), afterMove, 'SIGCONT started no copy and moved nothing');
    assert.ok(node.daemon!.alive(), 'the daemon lives on after SIGCONT');
    await assertClean('SIGSTOP');
  });

  test('a whole node lost (daemon, fencer, VMs killed): restarted within 8 s; a VM needing a GPU level only it had is Unschedulable', async () => {
    await settled('the node loss');
    // The GPU VM runs on the one node that provides its level.
    await cluster.applyAll({ [`${GPU_VM}.yaml`]: vmManifest(GPU_VM, '  gpu:\n    trustLevel: low\n') });
    await until(`${GPU_VM} running on ${GPU_NODE}`, async () => (await running()).get(GPU_VM)?.[0]?.node === GPU_NODE, { timeoutMs: 60_000, intervalMs: 200 });
    const vms = [...(await running())].flatMap(([vm, cs]) => (cs.some((c) => c.node === GPU_NODE) && vm !== GPU_VM ? [vm] : []));
    const killed = await cluster.killNode(GPU_NODE);
    const t0 = Date.now();
    assert.ok(killed.some((k) => k.vm === GPU_VM));
    assert.ok(vms.length > 0, `${GPU_NODE} runs VMs besides ${GPU_VM} (the earlier cases moved VMs to it, never away)`);
    const moved = await runningElsewhere(vms, GPU_NODE, t0, 30_000);
    const worst = Math.max(...[...moved.values()].map((m) => m.ms));
    timing(`${GPU_NODE} lost whole: its ${vms.length} VMs running elsewhere in ${worst} ms (bound 8000) — ${[...moved].map(([vm, m]) => `${vm}@${m.node} ${m.ms} ms`).join(', ')}`);
    assert.ok(worst <= 8000, `restarted after ${worst} ms`);
    await until(`${GPU_VM} Unschedulable on the surviving nodes`, async () => {
      for (const n of cluster.nodes.filter((x) => x.name !== GPU_NODE)) {
        const st = await (await Store.open(n.stateDir)).getStatus('VirtualMachine', GPU_VM);
        if (!st?.conditions.some((c) => (c.type as string) === 'Unschedulable' && c.status === 'True' && /GPU trust level low/.test(c.message))) return false;
      }
      return true;
    }, { timeoutMs: 20_000, intervalMs: 200 });
    timing(`${GPU_VM} Unschedulable on n1 and n2 ${Date.now() - t0} ms after ${GPU_NODE} was lost`);
    assert.equal((await running()).get(GPU_VM), undefined, `${GPU_VM} runs nowhere`);
    await assertClean('whole node lost');
  });

  test('over the whole run: the ledger shows no overlapping copies of any VM, and the observer saw no two live copies', async () => {
    const report = await assertLedgerClean(cluster.ledger);
    const starts = report.events.filter((e) => e.event === 'start').length;
    timing(`ledger: ${starts} starts, ${report.events.length - starts} stops, ${report.overlaps.length} overlapping copies; observer: ${cluster.observer.pollCount} scans, ${cluster.observer.duplicates.length} duplicates`);
    assert.ok(starts >= VMS.length, 'the VM drivers wrote the ledger');
    assert.ok(cluster.observer.pollCount > 100, 'the observer ran');
    assert.deepEqual(cluster.observer.duplicates, [], cluster.observer.describe());
  });
});

// The VM controller in a cluster, against a real etcd and real QEMU guests: three nodes in one process,
// each with its own state dir, membership (lease), cluster view, VM controller and fencer, and a small
// reconcile loop standing in for the engine (observe → plan → apply, again on every cluster change).
// Six VMs are placed identically by every node, each is claimed before it starts, and when one node's
// lease is revoked its fencer kills its copies and the other nodes start them after the grace, exactly
// once: the ledger (written by the VM driver and the fencers) shows no two copies of a VM at any time.
// Cheap guests: two boot the tiny guest (TCG), four are started paused (a QEMU whose CPU never runs).
// The VMs have no network: nothing here touches a network namespace.
import assert from 'node:assert/strict';
import { link, mkdir, mkdtemp, readFile, rm, copyFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execa } from 'execa';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { Membership } from '../../src/cluster/membership.ts';
import { ClusterView, FAILOVER_GRACE_MS } from '../../src/cluster/view.ts';
import { Fencer, qemuVmProcesses } from '../../src/cluster/fencer.ts';
import { parseLedger, type LedgerEntry } from '../../src/cluster/ledger.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { VmController, type VmActual, type VmAction } from '../../src/controllers/vm/index.ts';
import { makeWorld, OutcomeError } from '../../src/engine/contract.ts';
import { keyOf } from '../../src/resources/keys.ts';
import type { StoredResource } from '../../src/store/store.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';
import { killQemusIn } from '../helpers/leftovers.ts';
import { until } from '../helpers/poll.ts';

const repo = path.resolve(import.meta.dirname, '../..');
const GUEST_CACHE = '/tmp/qwamos-guest-cache';
const keys = clusterKeys();
const NAMES = ['web', 'db', 'mail', 'dev', 'tor', 'i2p'];
const BOOTED = new Set(['web', 'db']);

const vmResource = (name: string): StoredResource<'VirtualMachine'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'VirtualMachine', metadata: { name },
  spec: {
    memory: '128Mi',
    runStrategy: BOOTED.has(name) ? 'Running' : 'Paused',
    boot: { kernel: 'guest/vmlinux', initrd: 'guest/initrd.cpio', cmdline: 'console=ttyS0 quiet panic=-1' },
  },
  source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '',
});
const resources = NAMES.map(vmResource);

/** One cluster node: membership, view, VM controller, fencer and a reconcile loop. */
class TestNode {
  membership!: Membership;
  view!: ClusterView;
  controller!: VmController;
  fencer!: Fencer;
  last = new Map<string, VmActual>();
  errors: string[] = [];
  private readonly client: EtcdClient;
  private readonly fencerClient: EtcdClient;
  private running = false;
  private loop: Promise<void> = Promise.resolve();
  private wake: (() => void) | undefined;
  private watch: { close(): void } | undefined;

  constructor(readonly name: string, readonly dir: string, endpoints: string[], private readonly imageRoot: string, private readonly ledger: string) {
    this.client = new EtcdClient(endpoints);
    this.fencerClient = new EtcdClient(endpoints, { callTimeoutMs: 1000 });
  }

  async start(): Promise<void> {
    this.fencer = new Fencer({ stateDir: this.dir, client: this.fencerClient, vms: () => qemuVmProcesses(this.dir), ledger: this.ledger });
    this.fencer.start();
    await this.startDaemon();
  }

  /** The daemon's part: membership, view, controller and its loop (the fencer is separate). */
  async startDaemon(): Promise<void> {
    // TTL 10 s, not 5: three nodes share this process's event loop and the machine's two cores with the
    // guests booting, and a keepalive starved past its deadline would (rightly) fence everything. The
    // TTL 5 s bounds are measured with separate daemon processes (test/e2e/cluster-*.test.ts).
    this.membership = await Membership.join({ client: this.client, stateDir: this.dir, ttlSeconds: 10, record: { name: this.name, role: 'worker', capacity: { cpus: 4, memoryMiB: 4096 }, labels: {}, gpuLevels: [] } });
    this.view = await ClusterView.open({ client: this.client, membership: this.membership });
    this.controller = new VmController({ layout: { prefix: 'qc' }, stateDir: this.dir, imageRoot: this.imageRoot, stopTimeoutMs: 2000, cluster: this.view, ledger: { file: this.ledger, node: this.name } });
    this.watch = this.controller.watch(() => this.wake?.(), () => makeWorld(resources, Date.now()));
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        await this.pass().catch((err: Error) => this.errors.push(err.message));
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          setTimeout(resolve, 500);
        });
      }
    })();
  }

  /** One reconcile of every VM, as the engine does it: observe, plan, apply (a refused step is retried next pass). */
  private async pass(): Promise<void> {
    const world = makeWorld(resources, Date.now());
    const actuals = await this.controller.observe(world.list('VirtualMachine'), world);
    const actions: VmAction[] = [];
    for (const r of world.list('VirtualMachine')) {
      const actual = actuals.get(keyOf(r));
      if (actual) this.last.set(r.metadata.name, actual);
      actions.push(...this.controller.plan(r, actual, world).actions);
    }
    if (actions.length) await this.controller.apply(actions).catch((err: unknown) => {
      if (!(err instanceof OutcomeError)) throw err;
    });
  }

  /** This node's live QEMUs by VM (found by command line). */
  async qemus(): Promise<Map<string, number>> {
    return new Map((await qemuVmProcesses(this.dir)).map((p) => [p.vm, p.pid]));
  }

  /** As a daemon killed with -9 would: no more keepalives or passes; the lease is left to expire; the fencer stays. */
  async killDaemon(): Promise<void> {
    this.running = false;
    this.wake?.();
    await this.loop;
    this.watch?.close();
    await this.view.close();
    await this.membership.stop();
  }

  async stop(): Promise<void> {
    if (this.running) await this.killDaemon();
    await this.fencer?.stop();
    await this.membership?.leave().catch(() => {});
    this.client.close();
    this.fencerClient.close();
  }
}

/** Every interval during which a copy of a VM ran on a node (start → stop); unterminated ones run to now. */
function overlaps(entries: LedgerEntry[]): string[] {
  const problems: string[] = [];
  const byVm = new Map<string, LedgerEntry[]>();
  for (const e of entries) byVm.set(e.vm, [...(byVm.get(e.vm) ?? []), e]);
  for (const [vm, list] of byVm) {
    const open = new Map<string, string>();
    for (const e of list.sort((a, b) => Date.parse(a.at) - Date.parse(b.at))) {
      if (e.event === 'start') {
        const others = [...open.keys()].filter((n) => n !== e.node);
        if (others.length) problems.push(`${vm}: started on ${e.node} at ${e.at} while open on ${others.join(', ')} (since ${others.map((n) => open.get(n)).join(', ')})`);
        open.set(e.node, e.at);
      } else {
        open.delete(e.node);
      }
    }
  }
  return problems;
}

describe('VMs placed, claimed and failed over on a real etcd with real QEMU', { timeout: 240_000 }, () => {
  let etcd: EtcdCluster;
  let dir: string;
  let ledger: string;
  let admin: EtcdClient;
  const nodes: TestNode[] = [];
  const readLedger = async () => parseLedger(await readFile(ledger, 'utf8').catch(() => ''));

  before(async () => {
    const built = await execa('bash', [path.join(repo, 'scripts/build-guest.sh'), GUEST_CACHE], { reject: false, timeout: 300_000 });
    if (built.exitCode !== 0) throw new Error(`build-guest.sh failed: ${built.stderr}`);
    etcd = await startEtcd();
    admin = new EtcdClient(etcd.endpoints);
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-vmfo-'));
    ledger = path.join(dir, 'ledger.jsonl');
    const imageRoot = path.join(dir, 'images');
    await mkdir(path.join(imageRoot, 'guest'), { recursive: true });
    for (const f of ['vmlinux', 'initrd.cpio']) await link(path.join(GUEST_CACHE, f), path.join(imageRoot, 'guest', f)).catch(() => copyFile(path.join(GUEST_CACHE, f), path.join(imageRoot, 'guest', f)));
    for (const name of ['n1', 'n2', 'n3']) nodes.push(new TestNode(name, path.join(dir, name), etcd.endpoints, imageRoot, ledger));
    await Promise.all(nodes.map((n) => n.start()));
  });
  after(async () => {
    for (const n of nodes) await n.stop().catch(() => {});
    for (const n of nodes) {
      for (const p of await qemuVmProcesses(n.dir).catch(() => [])) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      await killQemusIn(n.dir);
    }
    admin?.close();
    await etcd?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** Where each VM's QEMU runs, over all nodes (a VM on two nodes is listed twice). */
  const copies = async () => {
    const out = new Map<string, string[]>();
    for (const n of nodes) for (const vm of (await n.qemus()).keys()) out.set(vm, [...(out.get(vm) ?? []), n.name]);
    return out;
  };
  const placementOf = (n: TestNode) => new Map(NAMES.map((vm) => {
    const p = n.last.get(vm)?.cluster?.placement;
    return [vm, p && 'node' in p ? p.node : undefined];
  }));

  /** What each node saw and planned for these VMs, and the ledger: the story of a failed wait. */
  const dump = async (vms: string[], t0: number) => {
    const lines = [`copies: ${JSON.stringify([...(await copies())])}`];
    const world = makeWorld(resources, Date.now());
    for (const n of nodes) {
      lines.push(`${n.name}: lease ${n.view.liveLease()} errors ${JSON.stringify(n.errors.slice(-8))}`);
      for (const vm of vms) {
        const a = n.last.get(vm);
        const plan = a ? n.controller.plan(resources.find((r) => r.metadata.name === vm)!, a, world) : undefined;
        lines.push(`  ${vm}: ${JSON.stringify({ ...a?.cluster, lastRun: undefined })} proc ${JSON.stringify(a?.proc)} → ${plan?.actions.map((x) => x.type).join(',')} ${plan?.hold ? `${plan.hold.reason}: ${plan.hold.message}` : ''}`);
      }
    }
    for (const l of await readLedger()) lines.push(`${Date.parse(l.at) - t0} ms ${l.node} ${l.vm} ${l.event} ${l.pid}`);
    return lines.join('\n');
  };

  it('every node places the six VMs identically; each runs once, on its placed node, and was claimed before its start', async () => {
    const t0 = Date.now();
    await until('six VMs running, one copy each', async () => {
      const c = await copies();
      return NAMES.every((vm) => c.get(vm)?.length === 1);
    }, { timeoutMs: 120_000, intervalMs: 200 }).catch(async (err: Error) => {
      throw new Error(`${err.message}\n${await dump(NAMES, t0)}`);
    });
    if (process.env.QWAMOS_TEST_DEBUG) console.log(await dump(NAMES, t0));
    await until('every node observed the same revision', () => new Set(nodes.map((n) => n.last.get('web')?.cluster?.revision)).size === 1, { timeoutMs: 10_000, intervalMs: 100 });
    const placements = nodes.map(placementOf);
    assert.deepEqual([...placements[1]!], [...placements[0]!]);
    assert.deepEqual([...placements[2]!], [...placements[0]!]);
    const c = await copies();
    for (const vm of NAMES) assert.deepEqual(c.get(vm), [placements[0]!.get(vm)], `${vm} runs where it is placed`);
    assert.ok(new Set(placements[0]!.values()).size >= 2, `spread over the nodes: ${JSON.stringify([...placements[0]!])}`);
    // Claimed before started: the claim's time precedes the ledger's start (written before the spawn).
    const { entries } = await admin.list(keys.runs);
    const log = await readLedger();
    for (const e of entries) {
      const vm = e.key.slice(keys.runs.length);
      const claimedAt = Date.parse((JSON.parse(e.value) as { claimedAt: string }).claimedAt);
      const start = log.findLast((l) => l.vm === vm && l.event === 'start');
      assert.ok(start && Date.parse(start.at) >= claimedAt, `${vm}: started ${start?.at} before its claim ${new Date(claimedAt).toISOString()}`);
    }
    assert.deepEqual(overlaps(log), [], 'no two copies of a VM at any time');
    assert.equal(log.filter((l) => l.event === 'start').length, 6, `one start per VM (no lease lost): ${JSON.stringify(log)}`);
    // Status: the node and the token, on every node (a node that does not run it says where it runs).
    for (const n of nodes) {
      for (const vm of NAMES) {
        const r = resources.find((x) => x.metadata.name === vm)!;
        const report = n.controller.report(r, n.last.get(vm), makeWorld(resources));
        const claim = entries.find((e) => e.key === keys.run(vm))!;
        assert.equal(report.fields?.node, placements[0]!.get(vm));
        assert.equal(report.fields?.fencingToken, claim.createRevision);
      }
    }
  });

  it('a node whose daemon died and lease expired: its fencer kills its copies, the others start them after the grace, exactly once; back, nothing moves back', async () => {
    const before = await copies();
    const count = (node: string) => NAMES.filter((vm) => before.get(vm)?.[0] === node).length;
    const victim = [...nodes].sort((a, b) => count(b.name) - count(a.name))[0]!;
    const moved = NAMES.filter((vm) => before.get(vm)?.[0] === victim.name);
    const stayed = NAMES.filter((vm) => !moved.includes(vm));
    const pidsBefore = new Map<string, number>();
    for (const n of nodes) for (const [vm, pid] of await n.qemus()) pidsBefore.set(vm, pid);
    assert.ok(moved.length > 0);

    // The daemon dies (no keepalive, no rejoin); its lease ends (revoked here rather than waited for).
    await victim.killDaemon();
    const revokedAt = Date.now();
    await admin.revokeLease(victim.membership.leaseId!);
    await until(`${moved.join(', ')} running again off ${victim.name}`, async () => {
      const c = await copies();
      return moved.every((vm) => c.get(vm)?.length === 1 && c.get(vm)![0] !== victim.name);
    }, { timeoutMs: 30_000, intervalMs: 100 }).catch(async (err: Error) => {
      throw new Error(`${err.message}\n${await dump(moved, revokedAt)}`);
    });
    const tookMs = Date.now() - revokedAt;

    const after = await copies();
    for (const vm of NAMES) assert.equal(after.get(vm)?.length, 1, `${vm}: one copy, got ${after.get(vm)}`);
    for (const n of nodes) for (const [vm, pid] of await n.qemus()) if (stayed.includes(vm)) assert.equal(pid, pidsBefore.get(vm), `${vm} was not touched`);
    const log = await readLedger();
    assert.deepEqual(overlaps(log), [], 'no two copies of a VM at any time');
    for (const vm of moved) {
      const starts = log.filter((l) => l.vm === vm && l.event === 'start');
      assert.equal(starts.length, 2, `${vm}: started once more, got ${JSON.stringify(starts)}`);
      const stop = log.find((l) => l.vm === vm && l.event === 'stop' && l.node === victim.name);
      assert.ok(stop && Date.parse(stop.at) <= Date.parse(starts[1]!.at), `${vm}: stopped on ${victim.name} before its new start`);
      assert.ok(Date.parse(starts[1]!.at) - revokedAt >= FAILOVER_GRACE_MS, `${vm}: started ${Date.parse(starts[1]!.at) - revokedAt} ms after the revoke, before the grace`);
      // FailedOver on the node running it now: from the victim, with the gap.
      const owner = nodes.find((n) => n.name === after.get(vm)![0])!;
      await until(`${owner.name} observed ${vm} running`, () => owner.last.get(vm)?.launched?.failedOver !== undefined && owner.last.get(vm)?.cluster?.holder?.node === owner.name, { timeoutMs: 10_000, intervalMs: 100 });
      const report = owner.controller.report(resources.find((r) => r.metadata.name === vm)!, owner.last.get(vm), makeWorld(resources));
      const fo = report.conditions?.find((c) => c.type === 'FailedOver');
      assert.equal(fo?.status, 'True', JSON.stringify(fo));
      assert.match(fo?.message ?? '', new RegExp(`from node ${victim.name} at .*, \\d+ ms after its claim vanished`));
      const gap = Number(/, (\d+) ms after/.exec(fo!.message)![1]);
      assert.ok(gap >= FAILOVER_GRACE_MS, `gap ${gap} ms ≥ the grace`);
    }
    // The victim's daemon starts again: a new lease (the old one is gone), the fence reported, nothing moves back.
    await victim.startDaemon();
    await until(`${victim.name} rejoined and observed`, () => victim.view.liveLease() !== undefined && victim.last.get(moved[0]!)?.cluster?.lease === victim.view.liveLease(), { timeoutMs: 15_000, intervalMs: 100 });
    await new Promise((r) => setTimeout(r, 2000));
    const settled = await copies();
    for (const vm of moved) assert.deepEqual(settled.get(vm), after.get(vm), `${vm} did not move back`);
    const fenced = victim.last.get(moved[0]!)?.cluster?.fence;
    assert.ok(fenced, `${victim.name} reports the fence`);
    console.log(`failover of ${moved.join(', ')} from ${victim.name}: running elsewhere ${tookMs} ms after the revoke`);
  });
});

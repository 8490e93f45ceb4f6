// The VM plan in a cluster is pure too: from the cluster facts observe gathered (placement on one etcd
// snapshot, the run/<vm> claim, this node's live lease, when the claim vanished, where the VM last ran),
// whether this node claims, starts, stops or leaves a VM alone. And the apply side: a start re-checks its
// claim in etcd right before the launch and starts nothing on a stale view.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { VmController, type VmActual, type VmAction } from '../../src/controllers/vm/index.ts';
import { vmPaths, type VmContext } from '../../src/controllers/vm/context.ts';
import { failoverOf, observeCluster, type VmClusterFacts } from '../../src/controllers/vm/placement.ts';
import { applyVmActions } from '../../src/controllers/vm/apply.ts';
import { VmWatchers } from '../../src/controllers/vm/watch.ts';
import { makeWorld, OutcomeError, type Plan } from '../../src/engine/contract.ts';
import type { QemuProbe } from '../../src/drivers/qemu.ts';
import type { StoredResource } from '../../src/store/store.ts';
import type { ClusterState, ClusterVmView } from '../../src/cluster/view.ts';
import type { ConditionPatch } from '../../src/store/store.ts';

const ctx = { layout: { prefix: 'qw' }, stateDir: '/state', imageRoot: '/images', stopTimeoutMs: 1000 };
const controller = new VmController(ctx);
const now = Date.parse('2026-12-01T01:00:00Z');
const vm = (spec: Record<string, unknown> = {}, name = 'web'): StoredResource<'VirtualMachine'> => ({
  apiVersion: 'qwamos.io/v1alpha1', kind: 'VirtualMachine', metadata: { name },
  spec: { boot: { kernel: 'guest/vmlinux' }, ...spec },
  source: { path: '/m', digest: 'd' }, generation: 2, appliedAt: '',
});
const world = makeWorld([vm()], now);
const probe: QemuProbe = {
  version: '7.2.0', devices: new Set(['virtio-gpu-device']), displays: new Set(['none']),
  gl: { usable: false, reason: 'no GL', venus: false }, renderNodes: [], vfioContainer: false, kvmUsable: false, kvmReason: 'no vmx/svm',
};
const paths = vmPaths(ctx, 'web');
const LEASE = '7001';
/** Cluster facts of `web` on node n1 (placed here, unclaimed for long, live lease) with changes. */
const facts = (over: Partial<VmClusterFacts> = {}): VmClusterFacts => ({
  node: 'n1', lease: LEASE, revision: '42', placement: { vm: 'web', node: 'n1', stayed: false }, unclaimedSince: now - 60_000, graceMs: 1000, ...over,
});
const held = (node = 'n1', lease = LEASE, token = '17') => ({ holder: { vm: 'web', node, lease, token } });
const actual = (cluster: VmClusterFacts, over: Partial<VmActual> = {}): VmActual => ({
  paths, proc: { state: 'none' }, disks: [], images: { 'guest/vmlinux': { exists: true } }, leftovers: false,
  host: { probe, vmUser: { uid: 64055, gid: 64055 }, tscKhz: 2000000, pci: {} }, cluster, ...over,
});
const running = { proc: { state: 'running' as const, pid: 42 }, status: 'running', gpuDevices: [] };
const planOf = (a: VmActual, r = vm(), w = world): Plan<VmAction> => controller.plan(r, a, w);
const types = (p: Plan<VmAction>) => p.actions.map((a) => a.type);
const condition = (a: VmActual, type: string, r = vm()): ConditionPatch | undefined => controller.report(r, a, world).conditions?.find((c) => c.type === type);

test('placed here and unclaimed: claim run/<vm>, then start (the start re-checks the claim); disks after the claim', () => {
  const p = planOf(actual(facts(), { disks: [{ name: 'd', path: '/images/disks/web/d.qcow2', exists: false, sizeMiB: 8 }] }));
  assert.deepEqual(types(p), ['claim', 'create-disk', 'start']);
  assert.equal(p.hold, undefined);
  const start = p.actions[2]!;
  assert.ok(start.type === 'start' && start.cluster, 'a cluster start carries what apply verifies');
  assert.equal(start.cluster.token, undefined, 'the token comes from the claim just before');
});

test('placed here and held by this node under its live lease: start with its token, no new claim; running: nothing', () => {
  const p = planOf(actual(facts(held())));
  assert.deepEqual(types(p), ['start']);
  assert.ok(p.actions[0]!.type === 'start' && p.actions[0]!.cluster?.token === '17');
  assert.deepEqual(types(planOf(actual(facts(held()), running))), []);
});

test('placed on another node: never started here; a copy running here is stopped, then its claim released', () => {
  const elsewhere = { placement: { vm: 'web', node: 'n2', stayed: true } };
  const idle = planOf(actual(facts({ ...elsewhere, ...held('n2', '8002', '30') })));
  assert.deepEqual([types(idle), idle.hold], [[], undefined], 'nothing to do here: in sync');
  // Held here but placed elsewhere (its node drained or no longer matching): stop first, then release.
  const moving = planOf(actual(facts({ ...elsewhere, ...held() }), running));
  assert.deepEqual(types(moving), ['stop', 'release-claim']);
  assert.ok(moving.actions[1]!.type === 'release-claim' && moving.actions[1]!.token === '17');
  // Not held here and placed elsewhere, but running here: stop (hard), no release (not ours).
  const stray = planOf(actual(facts({ ...elsewhere, ...held('n2', '8002', '30') }), running));
  assert.deepEqual(types(stray), ['stop']);
  assert.ok(stray.actions[0]!.type === 'stop' && !stray.actions[0]!.graceful);
  assert.match(stray.actions[0]!.describe, /held by node n2/);
});

test('a copy running here whose claim is under an old lease of this node (it rejoined), or with no live lease, is stopped', () => {
  const old = planOf(actual(facts(held('n1', '6000')), running));
  assert.deepEqual(types(old), ['stop']);
  assert.equal(old.hold?.reason, 'NotOwner');
  const noLease = planOf(actual(facts({ ...held(), lease: undefined }), running));
  assert.deepEqual(types(noLease), ['stop']);
  assert.match(noLease.actions[0]!.describe, /no live lease/);
});

test('stale lease: a node whose lease deadline passed claims and starts nothing', () => {
  const p = planOf(actual(facts({ lease: undefined })));
  assert.deepEqual(types(p), []);
  assert.deepEqual([p.hold?.type, p.hold?.reason], ['Waiting', 'NoLease']);
});

test('failover grace: a claim gone for less than the grace is not taken yet; the wait is what is left', () => {
  const p = planOf(actual(facts({ unclaimedSince: now - 300, vanishedFrom: 'n2' })));
  assert.deepEqual(types(p), []);
  assert.deepEqual([p.hold?.type, p.hold?.reason], ['Waiting', 'FailoverGrace']);
  assert.equal(p.hold?.type === 'Waiting' && p.hold.afterMs, 700);
  assert.deepEqual(types(planOf(actual(facts({ unclaimedSince: now - 1000 })))), ['claim', 'start'], 'at the grace: claimed');
});

test('placed here but still held by another node (it is stopping it): wait, claim nothing', () => {
  const p = planOf(actual(facts(held('n2', '8002', '30'))));
  assert.deepEqual([types(p), p.hold?.reason], [[], 'WaitingForRelease']);
});

test('failover from a lost node: Restart claims and starts with where it came from; Never keeps it down and says so', () => {
  const lost = facts({ unclaimedSince: now - 2000, vanishedFrom: 'n2', lastRun: { node: 'n2', token: '30', startedAt: '2026-12-01T00:00:00Z' } });
  const p = planOf(actual(lost));
  assert.deepEqual(types(p), ['claim', 'start']);
  const start = p.actions[1]!;
  assert.ok(start.type === 'start');
  assert.deepEqual(start.cluster?.failedOverFrom, { node: 'n2', vanishedAt: now - 2000 });
  const never = planOf(actual(lost), vm({ failover: 'Never' }));
  assert.deepEqual([types(never), never.hold?.type, never.hold?.reason], [[], 'Stalled', 'FailoverNever']);
  assert.match(never.hold?.message ?? '', /node n2 running web was lost; failover: Never/);
  const c = condition(actual(lost), 'FailedOver', vm({ failover: 'Never' }));
  assert.deepEqual([c?.status, c?.reason], ['False', 'FailoverNever']);
  // Stopped on purpose there (drained, moved): not a loss, started here whatever failover says.
  const moved = facts({ lastRun: { node: 'n2', token: '30', startedAt: '2026-12-01T00:00:00Z', stoppedAt: '2026-12-01T00:10:00Z' } });
  assert.deepEqual(types(planOf(actual(moved), vm({ failover: 'Never' }))), ['claim', 'start']);
  // It last ran here: this node starts it again.
  assert.deepEqual(types(planOf(actual(facts({ lastRun: { node: 'n1', token: '9', startedAt: '' } })), vm({ failover: 'Never' }))), ['claim', 'start']);
});

test('failover defaults: Never for a VM pinned to a node or with a passthrough GPU, else Restart', () => {
  assert.equal(failoverOf(vm(), world), 'Restart');
  assert.equal(failoverOf(vm({ placement: { node: 'n1' } }), world), 'Never');
  assert.equal(failoverOf(vm({ gpu: { trustLevel: 'system' } }), world), 'Never', 'the built-in vfio level');
  assert.equal(failoverOf(vm({ gpu: { trustLevel: 'low' } }), world), 'Restart', 'virtio-gpu is not passthrough');
  assert.equal(failoverOf(vm({ placement: { node: 'n1' }, failover: 'Restart' }), world), 'Restart', 'declared wins');
});

test('Unschedulable: waits with placement\'s reason; a copy this node held is stopped and released', () => {
  const reason = '0/3 nodes fit: 3 cannot provide GPU trust level high';
  const p = planOf(actual(facts({ placement: { vm: 'web', unschedulable: reason } })));
  assert.deepEqual([types(p), p.hold?.type, p.hold?.reason, p.hold?.message], [[], 'Waiting', 'Unschedulable', reason]);
  const held_ = planOf(actual(facts({ placement: { vm: 'web', unschedulable: reason }, ...held() }), running));
  assert.deepEqual(types(held_), ['stop', 'release-claim']);
  const c = condition(actual(facts({ placement: { vm: 'web', unschedulable: reason } })), 'Unschedulable');
  assert.deepEqual([c?.status, c?.message], ['True', reason]);
  assert.equal(condition(actual(facts({ placement: { vm: 'web', unschedulable: reason } })), 'Placed')?.status, 'False');
});

test('deleting a VM this node holds: stop and clean up here first, then release run/<vm>', () => {
  const p = controller.plan({ ...vm(), deletionRequestedAt: '2026-12-01T01:00:00Z' }, actual(facts(held()), running), world);
  assert.deepEqual(types(p), ['stop', 'clean-up', 'release-claim']);
  const other = controller.plan({ ...vm(), deletionRequestedAt: '2026-12-01T01:00:00Z' }, actual(facts(held('n2', '8002', '30'))), world);
  assert.ok(!types(other).includes('release-claim'), 'not ours to release');
});

test('status: the node and fencing token, Placed, FailedOver with from/at/gap, Fenced after this node\'s fencer killed it', () => {
  const a = actual(facts(held()), { ...running, launched: { specHash: 'h', generation: 2, startedAt: '2026-12-01T00:59:00Z', crashes: 0, failedOver: { from: 'n2', at: '2026-12-01T00:59:00Z', gapMs: 1450 } } });
  const report = controller.report(vm(), a, world);
  assert.equal(report.fields?.node, 'n1');
  assert.equal(report.fields?.fencingToken, '17');
  const placed = report.conditions?.find((c) => c.type === 'Placed');
  assert.deepEqual([placed?.status, placed?.reason], ['True', 'PlacedHere']);
  const fo = report.conditions?.find((c) => c.type === 'FailedOver');
  assert.equal(fo?.status, 'True');
  assert.match(fo?.message ?? '', /from node n2 at 2026-12-01T00:59:00Z, 1450 ms after its claim vanished/);
  // A node that does not run it reports where it runs.
  const elsewhere = controller.report(vm(), actual(facts({ placement: { vm: 'web', node: 'n2', stayed: true }, ...held('n2', '8002', '30') })), world);
  assert.deepEqual([elsewhere.fields?.node, elsewhere.fields?.fencingToken], ['n2', '30']);
  // Fenced: this node's fencer killed it after its last start.
  const fenced = actual(facts({ placement: { vm: 'web', node: 'n2', stayed: false }, fence: { since: '2026-12-01T01:00:00Z', reason: 'the lease deadline passed' } }), { launched: { specHash: 'h', generation: 2, startedAt: '2026-12-01T00:50:00Z', crashes: 0 } });
  const f = condition(fenced, 'Fenced');
  assert.deepEqual([f?.status, f?.reason], ['True', 'LeaseLost']);
  assert.match(f?.message ?? '', /deadline passed/);
  const restarted = actual(facts({ fence: { since: '2026-12-01T00:40:00Z', reason: 'x' } }), { launched: { specHash: 'h', generation: 2, startedAt: '2026-12-01T00:50:00Z', crashes: 0 } });
  assert.equal(condition(restarted, 'Fenced')?.status, 'False', 'started again after the fence');
});

test('without a cluster nothing changes: no claim, no cluster conditions', () => {
  const { cluster: _c, ...local } = actual(facts());
  assert.deepEqual(types(planOf(local)), ['start']);
  assert.equal(condition(local, 'Placed'), undefined);
});

/** A cluster view with a fixed state and scripted answers. */
function fakeView(state: Partial<ClusterState> & Pick<ClusterState, 'snapshot'>, over: Partial<ClusterVmView> = {}): ClusterVmView {
  return {
    node: 'n1', graceMs: 1000,
    current: async () => ({ runs: new Map(), vanished: new Map(), since: 0, ...state }),
    liveLease: () => LEASE,
    claim: async () => ({ claimed: false, reason: 'no' }),
    verifyHeld: async () => undefined,
    release: async () => true,
    recordRun: async () => true,
    subscribe: () => () => {},
    ...over,
  };
}

test('observe: one placement of every desired VM on the snapshot, the same on every node; anti-affinity spreads a group', async () => {
  const group = ['a', 'b', 'c'].map((n) => vm({ placement: { antiAffinityGroup: 'g' } }, n));
  const w = makeWorld(group, now);
  const nodes = ['n1', 'n2', 'n3'].map((name) => ({ name, role: 'worker' as const, capacity: { cpus: 8, memoryMiB: 8192 }, labels: {}, gpuLevels: [] }));
  const snapshot = { revision: '5', nodeSet: { revision: '5', nodes }, claims: new Map() };
  const seen = await Promise.all(['n1', 'n2', 'n3'].map((node) => observeCluster({ ...fakeView({ snapshot }), node }, '/nonexistent', group, w)));
  const placedOn = (m: Map<string, VmClusterFacts>) => group.map((r) => { const p = m.get(r.metadata.name)!.placement!; return 'node' in p ? p.node : '-'; });
  assert.deepEqual(placedOn(seen[1]!), placedOn(seen[0]!));
  assert.deepEqual(placedOn(seen[2]!), placedOn(seen[0]!));
  assert.deepEqual(new Set(placedOn(seen[0]!)), new Set(['n1', 'n2', 'n3']), 'one member of the group per node');
  assert.equal(seen[0]!.get('a')!.unclaimedSince, 0, 'unclaimed: since the view started');
});

test('apply: a start re-checks its claim in etcd first; a claim lost meanwhile (stale view, lease gone) starts nothing and writes no ledger line', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-vmc-'));
  try {
    const ledger = path.join(dir, 'ledger.jsonl');
    const checked: string[] = [];
    const view = fakeView({ snapshot: { revision: '1', nodeSet: { revision: '1', nodes: [] }, claims: new Map() } }, {
      verifyHeld: async (vmName, token) => (checked.push(`${vmName}@${token}`), 'node n1 has no live lease (its deadline passed)'),
      claim: async (vmName) => ({ claimed: true, claim: { vm: vmName, node: 'n1', lease: LEASE, token: '99' } }),
    });
    const c: VmContext = { ...ctx, stateDir: dir, runRoot: path.join(dir, 'run'), cluster: view, ledger: { file: ledger, node: 'n1' } };
    const start = planOf(actual(facts())).actions.filter((a) => a.type === 'claim' || a.type === 'start');
    const err = await applyVmActions(c, new VmWatchers(c), start.map((a) => (a.type === 'start' ? { ...a, paths: vmPaths(c, 'web') } : a))).then(() => undefined, (e: unknown) => e);
    assert.ok(err instanceof OutcomeError, `refused with an outcome, got ${String(err)}`);
    assert.equal(err.outcome.reason, 'ClaimLost');
    assert.deepEqual(checked, ['web@99'], 'verified with the token of the claim just taken');
    assert.equal(await readFile(ledger, 'utf8').catch(() => ''), '', 'no start in the ledger');
    // A refused claim stops before the start.
    const refused = { ...c, cluster: fakeView({ snapshot: { revision: '1', nodeSet: { revision: '1', nodes: [] }, claims: new Map() } }, { claim: async () => ({ claimed: false, reason: 'run/web is held by node n2', owner: 'n2' }) }) };
    const err2 = await applyVmActions(refused, new VmWatchers(refused), start).then(() => undefined, (e: unknown) => e);
    assert.ok(err2 instanceof OutcomeError && err2.outcome.reason === 'ClaimRefused');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a cluster node\'s state dir reconciled without the cluster (in-process apply, no --etcd) starts no VM, but still stops one', () => {
  const { cluster: _c, ...local } = actual(facts());
  const p = planOf({ ...local, clusterNodeOutside: 'n1' });
  assert.deepEqual([types(p), p.hold?.type, p.hold?.reason], [[], 'Stalled', 'ClusterNodeWithoutCluster']);
  assert.match(p.hold?.message ?? '', /qwamos controller --node n1 --etcd/);
  assert.deepEqual(types(planOf({ ...local, ...running, clusterNodeOutside: 'n1' }, vm({ runStrategy: 'Stopped' }))), ['stop']);
});

// Deterministic placement: filters, rendezvous hashing, stability, minimal movement.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { place, rendezvousScore, vmRequestOf, type NodeInfo, type Placement, type VmRequest } from '../../src/cluster/placement.ts';

function node(name: string, extra: Partial<NodeInfo> = {}): NodeInfo {
  return { name, role: 'worker', capacity: { cpus: 64, memoryMiB: 65536 }, labels: {}, gpuLevels: [], ...extra };
}
function vm(name: string, extra: Partial<VmRequest> = {}): VmRequest {
  return { name, cpus: 1, memoryMiB: 256, ...extra };
}
function nodesOf(result: ReturnType<typeof place>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, p] of result.placements) out[name] = 'node' in p ? p.node : `!${p.unschedulable}`;
  return out;
}
function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let s = seed;
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}
const none = new Map<string, string>();
const manyVms = Array.from({ length: 60 }, (_, i) => vm(`vm${i}`));
const threeNodes = [node('n1'), node('n2'), node('n3')];

describe('placement', () => {
  it('is deterministic: the same inputs in any order give the same answer', () => {
    const expected = nodesOf(place(manyVms, { revision: '7', nodes: threeNodes }, none));
    for (let seed = 1; seed <= 20; seed++) {
      const again = place(shuffled(manyVms, seed), { revision: '7', nodes: shuffled(threeNodes, seed * 7) }, none);
      assert.deepEqual(nodesOf(again), expected);
      assert.equal(again.revision, '7');
    }
  });

  it('spreads VMs over equal nodes and follows the weights', () => {
    const even = Object.values(nodesOf(place(manyVms, { revision: '1', nodes: threeNodes }, none)));
    for (const n of ['n1', 'n2', 'n3']) {
      const count = even.filter((x) => x === n).length;
      assert.ok(count >= 10 && count <= 30, `${n} got ${count} of 60`);
    }
    const vms = Array.from({ length: 300 }, (_, i) => vm(`w${i}`));
    const weighted = Object.values(nodesOf(place(vms, { revision: '1', nodes: [node('big', { capacity: { cpus: 480, memoryMiB: 1 << 20 } }), node('small', { capacity: { cpus: 160, memoryMiB: 1 << 20 } })] }, none)));
    const big = weighted.filter((x) => x === 'big').length;
    // weight 480:160 → 3/4 of the VMs expected on big
    assert.ok(big > 195 && big < 255, `big got ${big} of 300`);
  });

  it('keeps a running VM on its node even where hashing would choose another', () => {
    const fresh = nodesOf(place([vm('a')], { revision: '1', nodes: threeNodes }, none));
    const other = ['n1', 'n2', 'n3'].find((n) => n !== fresh.a)!;
    const result = place([vm('a')], { revision: '2', nodes: threeNodes }, new Map([['a', other]]));
    assert.deepEqual(result.placements.get('a'), { vm: 'a', node: other, stayed: true });
  });

  it('moves only the VMs of a lost node, and nothing moves back when it returns', () => {
    const before = nodesOf(place(manyVms, { revision: '1', nodes: threeNodes }, none));
    const owners = new Map(Object.entries(before));
    const lost = place(manyVms, { revision: '2', nodes: [node('n1'), node('n3')] }, owners);
    const after = nodesOf(lost);
    for (const v of manyVms) {
      if (before[v.name] === 'n2') {
        assert.notEqual(after[v.name], 'n2');
        assert.equal((lost.placements.get(v.name) as { stayed: boolean }).stayed, false);
      } else {
        assert.equal(after[v.name], before[v.name], `${v.name} moved although its node lives`);
      }
    }
    // n2 returns: everything stays where it runs now.
    const back = nodesOf(place(manyVms, { revision: '3', nodes: threeNodes }, new Map(Object.entries(after))));
    assert.deepEqual(back, after);
    assert.ok(!Object.values(back).includes('n2'));
  });

  it('moves the VMs of a drained node and places nothing new on it', () => {
    const before = nodesOf(place(manyVms, { revision: '1', nodes: threeNodes }, none));
    const drained = [node('n1'), node('n2', { drained: true }), node('n3')];
    const after = nodesOf(place([...manyVms, vm('new')], { revision: '2', nodes: drained }, new Map(Object.entries(before))));
    assert.ok(!Object.values(after).includes('n2'));
    for (const v of manyVms) if (before[v.name] !== 'n2') assert.equal(after[v.name], before[v.name]);
  });

  it('honours placement.node, and a pinned VM whose node is gone is Unschedulable', () => {
    const pinned = place([vm('p', { node: 'n3' })], { revision: '1', nodes: threeNodes }, none);
    assert.deepEqual(pinned.placements.get('p'), { vm: 'p', node: 'n3', stayed: false });
    const gone = place([vm('p', { node: 'n3' })], { revision: '2', nodes: [node('n1'), node('n2')] }, new Map([['p', 'n3']]));
    assert.deepEqual(gone.placements.get('p'), { vm: 'p', unschedulable: 'pinned to node n3, which is not in the cluster (lost or not joined)' });
  });

  it('honours nodeSelector, and moves a running VM whose node no longer matches', () => {
    const nodes = [node('n1', { labels: { zone: 'a' } }), node('n2', { labels: { zone: 'b' } }), node('n3', { labels: { zone: 'b', disk: 'ssd' } })];
    const sel = place([vm('s', { nodeSelector: { zone: 'b', disk: 'ssd' } })], { revision: '1', nodes }, none);
    assert.equal((sel.placements.get('s') as { node: string }).node, 'n3');
    const moved = place([vm('s', { nodeSelector: { zone: 'a' } })], { revision: '2', nodes }, new Map([['s', 'n3']]));
    assert.deepEqual(moved.placements.get('s'), { vm: 's', node: 'n1', stayed: false });
    const none2 = place([vm('s', { nodeSelector: { zone: 'c' } })], { revision: '3', nodes }, none);
    assert.deepEqual(none2.placements.get('s'), { vm: 's', unschedulable: '0/3 nodes fit: 3 does not match nodeSelector zone=c' });
  });

  it('places a GPU VM only on a node that provides its trust level; Unschedulable once that node is lost', () => {
    const nodes = [node('n1', { gpuLevels: ['low'] }), node('n2', { gpuLevels: ['low', 'high'] }), node('n3')];
    const gpu = place([vm('g', { gpuLevel: 'high' })], { revision: '1', nodes }, none);
    assert.equal((gpu.placements.get('g') as { node: string }).node, 'n2');
    const lost = place([vm('g', { gpuLevel: 'high' })], { revision: '2', nodes: [nodes[0]!, nodes[2]!] }, new Map([['g', 'n2']]));
    assert.deepEqual(lost.placements.get('g'), { vm: 'g', unschedulable: '0/2 nodes fit: 2 cannot provide GPU trust level high' });
  });

  it('counts free cpus and memory, the running VMs included, and names what is short', () => {
    const small = [node('n1', { capacity: { cpus: 2, memoryMiB: 1024 } }), node('n2', { capacity: { cpus: 4, memoryMiB: 512 } })];
    // r1 runs on n1 and uses all of its memory; big needs 768Mi: n1 has none left, n2 too little.
    const result = place([vm('r1', { memoryMiB: 1024 }), vm('big', { memoryMiB: 768 }), vm('cpu', { cpus: 8 })], { revision: '1', nodes: small }, new Map([['r1', 'n1']]));
    assert.deepEqual(result.placements.get('r1'), { vm: 'r1', node: 'n1', stayed: true });
    assert.deepEqual(result.placements.get('big'), { vm: 'big', unschedulable: '0/2 nodes fit: 2 has too little free memory (needs 768Mi)' });
    assert.deepEqual(result.placements.get('cpu'), { vm: 'cpu', unschedulable: '0/2 nodes fit: 2 has too few free cpus (needs 8)' });
    // Room is used up as VMs are placed: four 256Mi VMs on a node with 512Mi → two of them elsewhere.
    const fill = place(['a', 'b', 'c', 'd'].map((n) => vm(n)), { revision: '1', nodes: [node('only', { capacity: { cpus: 8, memoryMiB: 512 } })] }, none);
    const placed = [...fill.placements.values()].filter((p: Placement) => 'node' in p);
    assert.equal(placed.length, 2);
  });

  it('places the most demanding VM first so a small one does not take its only room', () => {
    const nodes = [node('n1', { capacity: { cpus: 4, memoryMiB: 1024 } }), node('n2', { capacity: { cpus: 4, memoryMiB: 256 } })];
    // Hashing prefers n1 for a3 (checked below) and a3 sorts before big: placed in name order, a3 would
    // take n1 and big would fit nowhere.
    assert.ok(rendezvousScore('a3', 'n1', 4) > rendezvousScore('a3', 'n2', 4));
    const result = nodesOf(place([vm('a3'), vm('big', { memoryMiB: 1024 })], { revision: '1', nodes }, none));
    assert.equal(result.big, 'n1');
    assert.equal(result.a3, 'n2');
  });

  it('uses standby nodes only when no other node fits', () => {
    const nodes = [node('s1', { role: 'standby' }), node('w1', { capacity: { cpus: 1, memoryMiB: 256 } })];
    const result = nodesOf(place([vm('a'), vm('b'), vm('c')], { revision: '1', nodes }, none));
    assert.equal(Object.values(result).filter((n) => n === 'w1').length, 1);
    assert.equal(Object.values(result).filter((n) => n === 's1').length, 2);
  });

  it('never places two VMs of one anti-affinity group on one node; Unschedulable when the group outnumbers the nodes', () => {
    const group = ['g1', 'g2', 'g3'].map((n) => vm(n, { antiAffinityGroup: 'db' }));
    for (const seed of [1, 2, 3, 4, 5]) {
      const result = nodesOf(place(shuffled([...group, vm('free')], seed), { revision: '1', nodes: shuffled(threeNodes, seed) }, none));
      assert.deepEqual(new Set([result.g1, result.g2, result.g3]), new Set(['n1', 'n2', 'n3']), `seed ${seed}: ${JSON.stringify(result)}`);
    }
    const two = nodesOf(place(group, { revision: '1', nodes: [node('n1'), node('n2')] }, none));
    assert.equal(Object.values(two).filter((n) => n.startsWith('!')).length, 1);
    assert.match(Object.values(two).find((n) => n.startsWith('!'))!, /^!0\/2 nodes fit: 2 runs a VM of anti-affinity group db$/);
    // A lost node's group member moves only where no other member runs.
    const before = place(group, { revision: '1', nodes: threeNodes }, none);
    const owners = new Map([...before.placements].map(([name, p]) => [name, 'node' in p ? p.node : '']));
    const lost = owners.get('g1')!;
    const after = nodesOf(place(group, { revision: '2', nodes: threeNodes.filter((n) => n.name !== lost) }, owners));
    assert.match(after.g1!, /^!0\/2 nodes fit: 2 runs a VM of anti-affinity group db/);
    // Two members on one node (the group added to a running VM): the first by name stays, the other moves.
    const shared = nodesOf(place(group.slice(0, 2), { revision: '1', nodes: threeNodes }, new Map([['g1', 'n1'], ['g2', 'n1']])));
    assert.equal(shared.g1, 'n1');
    assert.notEqual(shared.g2, 'n1');
    // VMs of different groups, or without one, share nodes freely.
    const mixed = nodesOf(place([vm('a', { antiAffinityGroup: 'x' }), vm('b', { antiAffinityGroup: 'y' }), vm('c')], { revision: '1', nodes: [node('n1')] }, none));
    assert.deepEqual(mixed, { a: 'n1', b: 'n1', c: 'n1' });
  });

  it('says so when there is no node at all', () => {
    assert.deepEqual(place([vm('a')], { revision: '1', nodes: [] }, none).placements.get('a'), { vm: 'a', unschedulable: 'no node is in the cluster' });
  });

  it('scores with weight / -ln(hash): positive, deterministic, and higher with more weight', () => {
    assert.equal(rendezvousScore('a', 'n1', 1), rendezvousScore('a', 'n1', 1));
    assert.ok(rendezvousScore('a', 'n1', 2) > rendezvousScore('a', 'n1', 1));
    assert.notEqual(rendezvousScore('a', 'n1', 1), rendezvousScore('a', 'n2', 1));
    assert.ok(rendezvousScore('a', 'n1', 1) > 0);
  });

  it('reads a VirtualMachine with the schema defaults', () => {
    assert.deepEqual(vmRequestOf({ metadata: { name: 'x' }, spec: {} }), { name: 'x', cpus: 1, memoryMiB: 256 });
    assert.deepEqual(
      vmRequestOf({ metadata: { name: 'y' }, spec: { cpus: 2, memory: '2Gi', gpu: { trustLevel: 'high' }, placement: { nodeSelector: { zone: 'a' }, antiAffinityGroup: 'db' } } }),
      { name: 'y', cpus: 2, memoryMiB: 2048, nodeSelector: { zone: 'a' }, gpuLevel: 'high', antiAffinityGroup: 'db' },
    );
  });
});

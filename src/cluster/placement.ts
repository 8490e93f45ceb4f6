// Deterministic placement: which node runs which VM, as a pure function of the desired VMs, the node set
// read at one etcd revision and the current owners (who holds run/<vm>). Every node computes the same
// answer from the same inputs, in whatever order they come.
//
// Rules, in order:
//  1. A VM stays on the node that runs it while that node is in the set, not drained, and still passes the
//     VM's own filters (pinned node, selector, GPU level). Capacity is not re-checked: a running VM is
//     never evicted for room. So nothing moves back when a lost node returns: its VMs run elsewhere.
//     Anti-affinity is the exception: of two VMs of one group on one node (the group was added to a
//     running VM), the first by name stays and the other is placed again.
//  2. Every other VM (new, or its node lost/drained) is placed, most demanding first: hard filters
//     (placement.node, nodeSelector, drained, GPU trust level the node provides, anti-affinity group, free
//     cpus, free memory),
//     standby nodes only when no other node fits, then weighted rendezvous hashing (weight: the node's
//     cpus) picks one. Moving one VM never moves another: only VMs without a live home are placed.
import { createHash } from 'node:crypto';
import { sizeMiB } from '../resources/checks.ts';
import type { VirtualMachine } from '../resources/generated.ts';

export type NodeRole = 'coordinator' | 'worker' | 'standby';

export interface NodeInfo {
  name: string;
  role: NodeRole;
  capacity: { cpus: number; memoryMiB: number };
  labels: Readonly<Record<string, string>>;
  /** GPU trust levels (by name) this node can provide. */
  gpuLevels: readonly string[];
  /** A drained node keeps nothing and takes nothing. */
  drained?: boolean;
}

/** The live nodes as read at one etcd revision. */
export interface NodeSet {
  revision: string;
  nodes: readonly NodeInfo[];
}

export interface VmRequest {
  name: string;
  cpus: number;
  memoryMiB: number;
  /** placement.node */
  node?: string;
  /** placement.nodeSelector */
  nodeSelector?: Readonly<Record<string, string>>;
  /** gpu.trustLevel */
  gpuLevel?: string;
  /** placement.antiAffinityGroup: never on a node that runs another VM of the group. */
  antiAffinityGroup?: string;
}

export type Placement =
  | { vm: string; node: string; stayed: boolean }
  | { vm: string; unschedulable: string };

export interface PlacementResult {
  /** The etcd revision of the node set the answer was computed from. */
  revision: string;
  /** One entry per desired VM, by name. */
  placements: ReadonlyMap<string, Placement>;
}

/** A VirtualMachine's demands as placement sees them (schema defaults: 1 cpu, 256Mi). */
export function vmRequestOf(vm: Pick<VirtualMachine, 'metadata' | 'spec'>): VmRequest {
  const { spec } = vm;
  return {
    name: vm.metadata.name,
    cpus: spec.cpus ?? 1,
    memoryMiB: sizeMiB(spec.memory ?? '256Mi'),
    ...(spec.placement?.node ? { node: spec.placement.node } : {}),
    ...(spec.placement?.nodeSelector ? { nodeSelector: stringLabels(spec.placement.nodeSelector) } : {}),
    ...(spec.gpu ? { gpuLevel: spec.gpu.trustLevel } : {}),
    ...(spec.placement?.antiAffinityGroup ? { antiAffinityGroup: spec.placement.antiAffinityGroup } : {}),
  };
}

export function place(vms: readonly VmRequest[], nodeSet: NodeSet, owners: ReadonlyMap<string, string>): PlacementResult {
  const nodes = [...nodeSet.nodes].sort((a, b) => cmp(a.name, b.name));
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const free = new Map(nodes.map((n) => [n.name, { cpus: n.capacity.cpus, memoryMiB: n.capacity.memoryMiB }]));
  const placements = new Map<string, Placement>();
  /** Anti-affinity groups each node runs a VM of. */
  const groups = new Map(nodes.map((n) => [n.name, new Set<string>()]));
  const take = (vm: VmRequest, node: string) => {
    const room = free.get(node)!;
    room.cpus -= vm.cpus;
    room.memoryMiB -= vm.memoryMiB;
    if (vm.antiAffinityGroup !== undefined) groups.get(node)!.add(vm.antiAffinityGroup);
  };
  const groupMismatch = (vm: VmRequest, node: string) =>
    vm.antiAffinityGroup !== undefined && groups.get(node)!.has(vm.antiAffinityGroup) ? `runs a VM of anti-affinity group ${vm.antiAffinityGroup}` : undefined;

  // 1. VMs that keep their home.
  const homeless: VmRequest[] = [];
  for (const vm of [...vms].sort((a, b) => cmp(a.name, b.name))) {
    const owner = owners.get(vm.name);
    const home = owner !== undefined ? byName.get(owner) : undefined;
    if (home && !home.drained && identityMismatch(vm, home) === undefined && groupMismatch(vm, home.name) === undefined) {
      placements.set(vm.name, { vm: vm.name, node: home.name, stayed: true });
      take(vm, home.name);
    } else {
      homeless.push(vm);
    }
  }

  // 2. The rest, most demanding first so that small VMs do not take the only room a big one fits in.
  homeless.sort((a, b) => b.memoryMiB - a.memoryMiB || b.cpus - a.cpus || cmp(a.name, b.name));
  for (const vm of homeless) {
    const rejected = new Map<string, number>();
    const fitting: NodeInfo[] = [];
    for (const node of nodes) {
      const reason = identityMismatch(vm, node) ?? (node.drained ? 'is drained' : undefined) ?? groupMismatch(vm, node.name) ?? roomMismatch(vm, free.get(node.name)!);
      if (reason === undefined) fitting.push(node);
      else rejected.set(reason, (rejected.get(reason) ?? 0) + 1);
    }
    const preferred = fitting.some((n) => n.role !== 'standby') ? fitting.filter((n) => n.role !== 'standby') : fitting;
    const winner = highestScore(vm.name, preferred);
    if (winner) {
      placements.set(vm.name, { vm: vm.name, node: winner.name, stayed: false });
      take(vm, winner.name);
    } else {
      placements.set(vm.name, { vm: vm.name, unschedulable: unschedulableReason(vm, nodes.length, byName, rejected) });
    }
  }
  return { revision: nodeSet.revision, placements };
}

/** Why a node can never run this VM, whatever its load (undefined: it could). */
function identityMismatch(vm: VmRequest, node: NodeInfo): string | undefined {
  if (vm.node !== undefined && vm.node !== node.name) return `is not the pinned node ${vm.node}`;
  for (const [key, value] of Object.entries(vm.nodeSelector ?? {})) {
    if (node.labels[key] !== value) return `does not match nodeSelector ${key}=${value}`;
  }
  if (vm.gpuLevel !== undefined && !node.gpuLevels.includes(vm.gpuLevel)) return `cannot provide GPU trust level ${vm.gpuLevel}`;
  return undefined;
}

function roomMismatch(vm: VmRequest, room: { cpus: number; memoryMiB: number }): string | undefined {
  if (room.cpus < vm.cpus) return `has too few free cpus (needs ${vm.cpus})`;
  if (room.memoryMiB < vm.memoryMiB) return `has too little free memory (needs ${vm.memoryMiB}Mi)`;
  return undefined;
}

function unschedulableReason(vm: VmRequest, nodeCount: number, byName: ReadonlyMap<string, NodeInfo>, rejected: ReadonlyMap<string, number>): string {
  if (nodeCount === 0) return 'no node is in the cluster';
  if (vm.node !== undefined && !byName.has(vm.node)) return `pinned to node ${vm.node}, which is not in the cluster (lost or not joined)`;
  const parts = [...rejected].sort((a, b) => b[1] - a[1] || cmp(a[0], b[0])).map(([reason, n]) => `${n} ${reason}`);
  return `0/${nodeCount} nodes fit: ${parts.join(', ')}`;
}

/** Weighted rendezvous hashing: the node with the highest weight / -ln(hash) wins; ties go to the lower name. */
function highestScore(vm: string, nodes: readonly NodeInfo[]): NodeInfo | undefined {
  let best: NodeInfo | undefined;
  let bestScore = -Infinity;
  for (const node of nodes) {
    const score = rendezvousScore(vm, node.name, Math.max(1, node.capacity.cpus));
    if (score > bestScore) {
      best = node;
      bestScore = score;
    }
  }
  return best;
}

export function rendezvousScore(vm: string, node: string, weight: number): number {
  const digest = createHash('sha256').update(vm).update('\0').update(node).digest();
  // 48 bits into (0, 1): never 0 (ln 0) nor 1 (division by 0).
  const u = (digest.readUIntBE(0, 6) + 0.5) / 2 ** 48;
  return weight / -Math.log(u);
}

function stringLabels(labels: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (v !== undefined) out[k] = v;
  return out;
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

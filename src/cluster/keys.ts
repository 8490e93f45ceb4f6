// The cluster's key layout in etcd and the node record stored under a node's key.
import type { NodeInfo, NodeRole } from './placement.ts';

export const DEFAULT_CLUSTER_PREFIX = 'qwamos/';

export function clusterKeys(prefix: string = DEFAULT_CLUSTER_PREFIX) {
  return {
    nodes: `${prefix}nodes/`,
    node: (name: string) => `${prefix}nodes/${name}`,
    runs: `${prefix}run/`,
    run: (vm: string) => `${prefix}run/${vm}`,
    /** The desired-state revision the cluster agreed on. */
    revision: `${prefix}revision`,
    /** The revision the cluster agreed on for one GitSource. */
    sourceRevision: (source: string) => `${prefix}revision/${source}`,
    /** `qwamos drain NODE`: placement puts nothing new there (not lease-bound: survives the node's restarts). */
    drains: `${prefix}drain/`,
    drain: (node: string) => `${prefix}drain/${node}`,
  };
}

export type ClusterKeys = ReturnType<typeof clusterKeys>;

/** What a node publishes under its key (bound to its lease). */
export interface NodeRecord {
  name: string;
  role: NodeRole;
  capacity: { cpus: number; memoryMiB: number };
  labels: Record<string, string>;
  gpuLevels: string[];
  /** The desired-state revision this node applies (its git sources' applied revisions), if any. */
  revision?: string;
  drained?: boolean;
  /** When the node (re)joined, ISO 8601. */
  joinedAt: string;
}

/** Parses a node key's value; undefined when it is not a node record (written by hand, another version). */
export function parseNodeRecord(value: string): NodeRecord | undefined {
  let v: unknown;
  try {
    v = JSON.parse(value);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const r = v as Partial<NodeRecord>;
  const ok =
    typeof r.name === 'string' &&
    (r.role === 'coordinator' || r.role === 'worker' || r.role === 'standby') &&
    typeof r.capacity?.cpus === 'number' &&
    typeof r.capacity?.memoryMiB === 'number' &&
    typeof r.labels === 'object' && r.labels !== null &&
    Array.isArray(r.gpuLevels) && r.gpuLevels.every((g) => typeof g === 'string') &&
    typeof r.joinedAt === 'string';
  return ok ? (r as NodeRecord) : undefined;
}

/** What a drain/<node> key holds. */
export interface DrainRecord {
  node: string;
  /** ISO 8601. */
  drainedAt: string;
}

/** The nodes with a drain/ key among `entries` (a listing of `keys.drains`). */
export function drainedNodes(keys: ClusterKeys, entries: ReadonlyArray<{ key: string }>): Set<string> {
  return new Set(entries.map((e) => e.key.slice(keys.drains.length)).filter(Boolean));
}

export function nodeInfoOf(r: NodeRecord): NodeInfo {
  return { name: r.name, role: r.role, capacity: r.capacity, labels: r.labels, gpuLevels: r.gpuLevels, ...(r.drained ? { drained: true } : {}) };
}

// The cluster as this node's VM controller sees it: the node set, the run/ claims and the VMs' run records,
// read at one etcd revision (readSnapshot), cached and invalidated by an etcd watch on the whole cluster
// prefix, which also tells the controller at once when something changed (a node lost: its VMs are
// reconsidered now, not at the next resync). It also makes this node's etcd writes about VMs: claims
// (only while the node key carries our live lease), the re-check right before a launch, releases and the
// run records, all guarded by the claim's fencing token.
import type { EtcdChange, EtcdClient } from '../drivers/etcd.ts';
import { oneLine } from '../errors.ts';
import { clusterKeys, type ClusterKeys } from './keys.ts';
import type { MembershipEvent } from './membership.ts';
import { claimRun, fencedPut, ownerOf, releaseRun, type ClaimResult, type RunClaim } from './ownership.ts';
import { readSnapshot, type ClusterSnapshot } from './snapshot.ts';

/**
 * How long a VM's run/ key must have been gone before another node claims it. By construction the old
 * node's fencer has killed the VM ≥ 1 s before etcd can drop the key (its deadline is TTL − 1 s after
 * the last acknowledged keepalive was sent, and etcd renews no earlier than that send); the grace adds
 * 0.5 s, so a fencer may be up to 1.5 s late (the worst stall measured under load: 1.3 s). After a kill -9
 * the fencer revokes the lease only once its kills are confirmed. At TTL 5 s: key gone ≤ ~5.5 s after a
 * cut, + 0.5 s + the launch (1–3 s for four TCG launches on two cores) < 10 s. It was 1 s: the cut case
 * then ran 8.6–9.9 s in CI against its 10 s bound.
 */
export const FAILOVER_GRACE_MS = 500;
/** A snapshot older than this is read again even without a watch event (a watch that broke silently). */
const MAX_SNAPSHOT_AGE_MS = 5000;
/** Changes arriving together are told to listeners once. */
const NOTIFY_COALESCE_MS = 10;

/** qwamos/vms/<vm>: where a VM last ran, written by its owner under its fencing token (no lease: it outlives the node). */
export interface VmRunRecord {
  node: string;
  token: string;
  startedAt: string;
  /** Set when the owner stopped it on purpose (deleted, moved, drained) before giving its claim up. */
  stoppedAt?: string;
  failedOver?: FailoverRecord;
}

export interface FailoverRecord {
  /** The node it ran on before. */
  from: string;
  /** When it started here, ISO 8601. */
  at: string;
  /** From the old run/ key vanishing (as this node saw it) to the new start, when this node saw it vanish. */
  gapMs?: number;
}

export interface ClusterState {
  snapshot: ClusterSnapshot;
  /** qwamos/vms/<vm> records at the snapshot's revision, by VM name. */
  runs: ReadonlyMap<string, VmRunRecord>;
  /** run/<vm> deletions this view saw: the holder then, and when (epoch ms). */
  vanished: ReadonlyMap<string, { from: string; at: number }>;
  /** When this view began following the cluster (epoch ms): an unclaimed VM counts as vanished since then. */
  since: number;
}

/** What the VM controller needs of the cluster (implemented by ClusterView; fakes in tests). */
export interface ClusterVmView {
  /** This node's name. */
  readonly node: string;
  readonly graceMs: number;
  /** The state at one revision, re-read when the watch said it changed. */
  current(): Promise<ClusterState>;
  /** This node's lease while its deadline has not passed, else undefined (start nothing). */
  liveLease(): string | undefined;
  claim(vm: string): Promise<ClaimResult>;
  /** Fresh from etcd: undefined when this node holds run/<vm> with `token` under its live lease, else why not. */
  verifyHeld(vm: string, token: string): Promise<string | undefined>;
  release(vm: string, token: string): Promise<boolean>;
  /** Writes qwamos/vms/<vm>, only while run/<vm> still has `token` (fencedPut). */
  recordRun(vm: string, token: string, record: VmRunRecord): Promise<boolean>;
  /**
   * Called (coalesced) after changes in the cluster prefix or of this node's lease: with the VMs whose
   * run/ or vms/ key changed, or 'all' (a node came or went, the lease changed: placement may move any).
   */
  subscribe(listener: (vms: string[] | 'all') => void): () => void;
}

export function vmRecordsPrefix(prefix: string): string {
  return `${prefix}vms/`;
}

export interface MembershipLike {
  readonly name: string;
  readonly leaseId: string | undefined;
  readonly deadline: number | undefined;
  on(listener: (e: MembershipEvent) => void): void;
}

export class ClusterView implements ClusterVmView {
  readonly node: string;
  readonly graceMs: number;
  private readonly keys: ClusterKeys;
  private readonly since = Date.now();
  private readonly vanished = new Map<string, { from: string; at: number }>();
  private readonly listeners = new Set<(vms: string[] | 'all') => void>();
  /** What changed since listeners were last told. */
  private pending: Set<string> | 'all' = new Set();
  private cached: { state: ClusterState; at: number; generation: number } | undefined;
  /** Bumped on every change seen: a read started before it is stale. */
  private generation = 1;
  private reading: Promise<void> | undefined;
  private notifyTimer: NodeJS.Timeout | undefined;
  private watch: { close(): Promise<void> } | undefined;
  private closed = false;

  private constructor(
    private readonly client: EtcdClient,
    private readonly membership: MembershipLike,
    private readonly prefix: string,
    graceMs: number,
    private readonly log: (line: string) => void,
  ) {
    this.node = membership.name;
    this.graceMs = graceMs;
    this.keys = clusterKeys(prefix);
  }

  static async open(opts: { client: EtcdClient; membership: MembershipLike; prefix?: string; graceMs?: number; log?: (line: string) => void }): Promise<ClusterView> {
    const view = new ClusterView(opts.client, opts.membership, opts.prefix ?? 'qwamos/', opts.graceMs ?? FAILOVER_GRACE_MS, opts.log ?? (() => {}));
    view.watch = await opts.client.watchPrefix(view.prefix, (c) => view.changed(c), (err) => view.log(`cluster watch: ${oneLine(err)}`));
    opts.membership.on(() => view.invalidate('all'));
    await view.current();
    return view;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.notifyTimer);
    this.listeners.clear();
    await this.watch?.close().catch(() => {});
  }

  async current(): Promise<ClusterState> {
    for (;;) {
      const c = this.cached;
      if (c && c.generation === this.generation && Date.now() - c.at < MAX_SNAPSHOT_AGE_MS) return c.state;
      this.reading ??= this.read().finally(() => (this.reading = undefined));
      await this.reading;
      // Old cache past its age with no change meanwhile: the read just done is current.
      if (this.cached && this.cached.generation === this.generation) return this.cached.state;
    }
  }

  liveLease(): string | undefined {
    const { leaseId, deadline } = this.membership;
    return leaseId !== undefined && deadline !== undefined && Date.now() < deadline ? leaseId : undefined;
  }

  async claim(vm: string): Promise<ClaimResult> {
    const lease = this.liveLease();
    if (!lease) return { claimed: false, reason: `node ${this.node} has no live lease` };
    try {
      return await claimRun(this.client, this.keys, vm, { name: this.node, lease });
    } finally {
      this.invalidate([]);
    }
  }

  async verifyHeld(vm: string, token: string): Promise<string | undefined> {
    const lease = this.liveLease();
    if (!lease) return `node ${this.node} has no live lease (its deadline passed)`;
    const res = await this.client.txn(
      [{ key: this.keys.run(vm), createRevision: token }, { key: this.keys.run(vm), lease }, { key: this.keys.node(this.node), lease }],
      [],
    );
    if (!res.succeeded) return `run/${vm} is no longer held by node ${this.node} under lease ${lease} with token ${token}`;
    // The answer may have taken long (a frozen daemon): the deadline must still be ahead.
    if (this.liveLease() !== lease) return `node ${this.node}'s lease deadline passed while checking run/${vm}`;
    return undefined;
  }

  async release(vm: string, token: string): Promise<boolean> {
    try {
      return await releaseRun(this.client, this.keys, this.claimOf(vm, token));
    } finally {
      this.invalidate([]);
    }
  }

  async recordRun(vm: string, token: string, record: VmRunRecord): Promise<boolean> {
    return fencedPut(this.client, this.keys, this.claimOf(vm, token), `${vmRecordsPrefix(this.prefix)}${vm}`, JSON.stringify(record));
  }

  subscribe(listener: (vms: string[] | 'all') => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private claimOf(vm: string, token: string): RunClaim {
    return { vm, node: this.node, lease: this.liveLease() ?? '0', token };
  }

  private async read(): Promise<void> {
    const generation = this.generation;
    const snapshot = await readSnapshot(this.client, this.keys);
    const records = await this.client.list(vmRecordsPrefix(this.prefix), snapshot.revision);
    const runs = new Map<string, VmRunRecord>();
    for (const e of records.entries) {
      const rec = parseRunRecord(e.value);
      if (rec) runs.set(e.key.slice(vmRecordsPrefix(this.prefix).length), rec);
    }
    // A claim the snapshot shows is no longer vanished (a watch event may still be on its way).
    for (const vm of snapshot.claims.keys()) this.vanished.delete(vm);
    this.cached = { state: { snapshot, runs, vanished: new Map(this.vanished), since: this.since }, at: Date.now(), generation };
  }

  private changed(c: EtcdChange): void {
    const key = c.entry.key;
    const records = vmRecordsPrefix(this.prefix);
    if (key.startsWith(this.keys.runs)) {
      const vm = key.slice(this.keys.runs.length);
      if (c.type === 'delete') this.vanished.set(vm, { from: c.previous ? (ownerOf(c.previous.value) ?? '?') : '?', at: Date.now() });
      else this.vanished.delete(vm);
      // A claim taken or freed changes what placement leaves to the others (capacity, anti-affinity).
      this.invalidate('all');
    } else if (key.startsWith(records)) {
      this.invalidate([key.slice(records.length)]);
    } else {
      this.invalidate('all');
    }
  }

  private invalidate(vms: string[] | 'all' = 'all'): void {
    this.generation++;
    if (this.closed) return;
    if (vms === 'all') this.pending = 'all';
    else if (this.pending !== 'all') for (const vm of vms) this.pending.add(vm);
    if (this.notifyTimer) return;
    this.notifyTimer = setTimeout(() => {
      this.notifyTimer = undefined;
      const pending = this.pending;
      this.pending = new Set();
      const told = pending === 'all' ? 'all' : [...pending];
      if (told !== 'all' && told.length === 0) return;
      for (const l of this.listeners) l(told);
    }, NOTIFY_COALESCE_MS);
  }
}

export function parseRunRecord(value: string): VmRunRecord | undefined {
  try {
    const v = JSON.parse(value) as Partial<VmRunRecord>;
    return typeof v.node === 'string' && typeof v.token === 'string' && typeof v.startedAt === 'string' ? (v as VmRunRecord) : undefined;
  } catch {
    return undefined;
  }
}

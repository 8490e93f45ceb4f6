// Cluster membership: this node's key in etcd, bound to its own lease, kept alive by our own keepalive
// loop with a deadline (never by the client's `lost` event, which fires ~2×TTL too late).
//
// Deadline = send time of the last acknowledged keepalive + TTL − 1 s: etcd cannot have expired the lease
// before it (it renewed the lease to TTL no earlier than we sent), and the 1 s margin covers etcd's 500 ms
// expiry check. The deadline and lease id are kept in <state>/cluster/lease.json (0600), for the fencer
// (who kills this node's VMs once the deadline passes) and for a restart within the TTL to re-attach to
// the same lease without touching the VMs. Once the deadline passed, the lease is given up for good: the
// node rejoins only with a new lease (its run/ claims die with the old one).
import { setMaxListeners } from 'node:events';
import path from 'node:path';
import type { EtcdClient } from '../drivers/etcd.ts';
import { oneLine } from '../errors.ts';
import { ensureDir, readJsonFile, removeFile, writeFileAtomic } from '../store/atomic.ts';
import { clusterKeys, parseNodeRecord, type ClusterKeys, type NodeRecord } from './keys.ts';

export const LEASE_TTL_SECONDS = 5;
/**
 * Keepalives go out this often: the last acknowledged one is then at most this old when etcd's leader
 * dies, leaving deadline − interval (3.5 s) for the election (1–2 s after the leader's death with etcd's
 * default 1 s election timeout, measured up to 2.7 s until a member answers). At 1.7 s only 2.3 s were
 * left and the deadline passed during some elections.
 */
export const KEEPALIVE_INTERVAL_MS = 500;
/** How often the node key is checked (it must carry our lease). */
const NODE_KEY_CHECK_MS = 1700;
/** While a keepalive waits for its answer, another one goes out this often (until the deadline). */
export const KEEPALIVE_RETRY_MS = 250;
/** Margin below the TTL the deadline keeps (etcd checks expiry every 500 ms). */
export const DEADLINE_MARGIN_MS = 1000;
/**
 * After a clean stop the fencer keeps the lease alive this long, so that a restart re-attaches even when
 * the new daemon needs more than TTL − 1 s to come up (a host busy with booting guests: 3–4.5 s measured).
 * A daemon that does not come back within it loses the lease; its VMs are fenced and fail over.
 */
export const RESTART_HANDOVER_MS = 30_000;

/** <state>/cluster/lease.json: what the fencer and a restarted daemon read. */
export interface LeaseFile {
  node: string;
  leaseId: string;
  ttlSeconds: number;
  endpoints: string[];
  prefix: string;
  /** Epoch ms: send time of the last acknowledged keepalive + TTL − 1 s. */
  deadline: number;
  /** Epoch ms: when the last acknowledged keepalive was sent. */
  lastAckSentAt: number;
  /** The daemon that keeps it alive. */
  pid: number;
  /** False between taking a new lease and putting the node key under it (the fencer ignores the key then). */
  published: boolean;
  /**
   * Epoch ms: set by a clean stop. Until then the fencer keeps the lease alive for the restart (its own
   * deadline in cluster/handover.json); a restarted daemon re-attaches and writes the file without it.
   */
  handoverUntil?: number;
}

/** <state>/cluster/handover.json: the fencer's keepalives of a handed-over lease (it alone writes it). */
export interface HandoverFile {
  leaseId: string;
  /** Epoch ms: send time of the fencer's last acknowledged keepalive + TTL − 1 s. */
  deadline: number;
  lastAckSentAt: number;
}

export function handoverFilePath(stateDir: string): string {
  return path.join(stateDir, 'cluster', 'handover.json');
}

/** The fencer's deadline for `leaseId` during a handover, if it kept that lease alive. */
export async function handoverDeadline(stateDir: string, leaseId: string): Promise<number | undefined> {
  const file = await readJsonFile<Partial<HandoverFile>>(handoverFilePath(stateDir)).catch(() => undefined);
  return file?.leaseId === leaseId && typeof file.deadline === 'number' ? file.deadline : undefined;
}

export function leaseFilePath(stateDir: string): string {
  return path.join(stateDir, 'cluster', 'lease.json');
}

export async function readLeaseFile(stateDir: string): Promise<LeaseFile | undefined> {
  return readJsonFile<LeaseFile>(leaseFilePath(stateDir));
}

/** <state>/cluster/fenced.json: the fencer's record of its last fence. */
export function fenceFilePath(stateDir: string): string {
  return path.join(stateDir, 'cluster', 'fenced.json');
}

/** Whether the fencer's last fence was of `leaseId`. */
async function fencedLease(stateDir: string, leaseId: string): Promise<boolean> {
  const fence = await readJsonFile<{ leaseId?: unknown }>(fenceFilePath(stateDir)).catch(() => undefined);
  return fence?.leaseId === leaseId;
}

/** The lease file when this very process keeps it alive (a daemon in a cluster), else undefined. */
export async function ownLeaseFile(stateDir: string): Promise<LeaseFile | undefined> {
  const file = await readLeaseFile(stateDir).catch(() => undefined);
  return file?.pid === process.pid ? file : undefined;
}

export interface MembershipOptions {
  client: EtcdClient;
  /** What this node publishes (joinedAt is set on joining). */
  record: Omit<NodeRecord, 'joinedAt'>;
  stateDir: string;
  prefix?: string;
  ttlSeconds?: number;
  keepaliveMs?: number;
  /** How long the fencer keeps the lease alive after a clean stop (RESTART_HANDOVER_MS). */
  handoverMs?: number;
  log?: (line: string) => void;
}

export type MembershipEvent =
  | { type: 'joined'; leaseId: string; reattached: boolean }
  | { type: 'lost'; leaseId: string; reason: string };

export class Membership {
  private readonly client: EtcdClient;
  private readonly keys: ClusterKeys;
  private readonly prefix: string;
  private readonly ttlSeconds: number;
  private readonly keepaliveMs: number;
  private readonly log: (line: string) => void;
  private record: NodeRecord;
  private lease: { id: string; deadline: number; lastAckSentAt: number } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private round: Promise<number> = Promise.resolve(0);
  private published = false;
  private handoverUntil: number | undefined;
  /** Lease file writes, one after the other; `queued` has not started yet (it writes the state it finds then). */
  private writes: Promise<void> = Promise.resolve();
  private queued: Promise<void> | undefined;
  private checkingKey = false;
  private lastKeyCheck = 0;
  /** Leases this process gave up: a node key still under one of them is ours to clear. */
  private readonly givenUp = new Set<string>();
  private readonly listeners: Array<(e: MembershipEvent) => void> = [];

  private constructor(private readonly opts: MembershipOptions) {
    this.client = opts.client;
    this.prefix = opts.prefix ?? 'qwamos/';
    this.keys = clusterKeys(this.prefix);
    this.ttlSeconds = opts.ttlSeconds ?? LEASE_TTL_SECONDS;
    this.keepaliveMs = opts.keepaliveMs ?? KEEPALIVE_INTERVAL_MS;
    this.log = opts.log ?? (() => {});
    this.record = { ...opts.record, joinedAt: new Date().toISOString() };
  }

  /** Joins (or re-attaches to the lease of a restart within the TTL) and starts the keepalive loop. */
  static async join(opts: MembershipOptions): Promise<Membership> {
    const m = new Membership(opts);
    await m.attach();
    m.running = true;
    m.schedule(m.keepaliveMs);
    return m;
  }

  get leaseId(): string | undefined {
    return this.lease?.id;
  }

  /** Epoch ms after which this node must consider its lease lost (undefined while it has none). */
  get deadline(): number | undefined {
    return this.lease?.deadline;
  }

  get name(): string {
    return this.record.name;
  }

  on(listener: (e: MembershipEvent) => void): void {
    this.listeners.push(listener);
  }

  /** Publishes the desired-state revision this node applies. */
  async setRevision(revision: string | undefined): Promise<void> {
    if (this.record.revision === revision) return;
    const { revision: _old, ...rest } = this.record;
    this.record = { ...rest, ...(revision !== undefined ? { revision } : {}) };
    if (this.lease) await this.publish(this.lease.id);
  }

  /**
   * Stops the keepalive loop and keeps the lease: a restart re-attaches to it. One last keepalive first,
   * so the restart gets a whole TTL − 1 s from now; with `handover` (a clean stop of the daemon) the lease
   * file also asks the fencer to keep the lease alive for RESTART_HANDOVER_MS.
   */
  async stop(opts: { handover?: boolean } = {}): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    await this.round;
    const lease = this.lease;
    if (!lease || Date.now() >= lease.deadline) return;
    const sentAt = Date.now();
    const ttl = await this.client.keepaliveOnce(lease.id, Math.min(1000, lease.deadline - sentAt)).catch(() => 0);
    if (ttl > 0 && Date.now() < lease.deadline) {
      lease.lastAckSentAt = sentAt;
      lease.deadline = sentAt + ttl * 1000 - DEADLINE_MARGIN_MS;
      if (opts.handover) {
        const handoverMs = this.opts.handoverMs ?? RESTART_HANDOVER_MS;
        this.handoverUntil = Date.now() + handoverMs;
        this.log(`cluster: the fencer keeps lease ${hex(lease.id)} alive for ${handoverMs / 1000}s: a restart within that re-attaches without touching the VMs`);
      }
      await this.saveLeaseFile();
    }
  }

  /** Leaves the cluster: stops, revokes the lease (the node key and its run/ claims go with it). */
  async leave(): Promise<void> {
    await this.stop();
    if (this.lease) await this.client.revokeLease(this.lease.id);
    this.lease = undefined;
    await this.removeLeaseFile();
  }

  private emit(e: MembershipEvent): void {
    for (const l of this.listeners) l(e);
  }

  private async attach(): Promise<void> {
    const saved = await readLeaseFile(this.opts.stateDir);
    const mine = saved && saved.node === this.record.name && saved.prefix === this.prefix ? saved : undefined;
    // After a clean stop the fencer kept the lease alive: its deadline counts too.
    const kept = mine?.handoverUntil !== undefined ? await handoverDeadline(this.opts.stateDir, mine.leaseId) : undefined;
    const deadline = Math.max(mine?.deadline ?? 0, kept ?? 0);
    // Past its deadline the fencer has killed (or is killing) the VMs that ran under it: never re-attach.
    if (mine && Date.now() >= deadline) {
      this.log(`cluster: lease ${hex(mine.leaseId)} of an earlier run passed its deadline ${Date.now() - deadline} ms ago; joining with a new lease`);
      this.givenUp.add(mine.leaseId);
      await this.client.revokeLease(mine.leaseId).catch(() => {});
    }
    if (mine && Date.now() < deadline) {
      const saved = mine;
      // Retried until the deadline like every keepalive: a new client's first call can take a second
      // (connection, name resolution), and one lost attempt must not cost the lease and the VMs with it.
      const answer = await this.keepaliveUntil(saved.leaseId, deadline);
      const ttl = 'ttl' in answer ? answer.ttl : 0;
      const sentAt = 'sentAt' in answer ? answer.sentAt : 0;
      // Never a lease the fencer fenced, nor one renewed only after its deadline.
      if (ttl > 0 && Date.now() < deadline && !(await fencedLease(this.opts.stateDir, saved.leaseId))) {
        this.lease = { id: saved.leaseId, lastAckSentAt: sentAt, deadline: sentAt + ttl * 1000 - DEADLINE_MARGIN_MS };
        this.published = saved.published !== false;
        await this.saveLeaseFile();
        await this.publish(saved.leaseId);
        this.published = true;
        await this.saveLeaseFile();
        this.log(`cluster: node ${this.record.name} re-attached to lease ${hex(saved.leaseId)}${kept !== undefined && kept > saved.deadline ? ' (the fencer kept it alive during the restart)' : ''}`);
        this.emit({ type: 'joined', leaseId: saved.leaseId, reattached: true });
        return;
      }
      this.givenUp.add(saved.leaseId);
      this.log(`cluster: cannot re-attach to lease ${hex(saved.leaseId)} of an earlier run (${'error' in answer ? oneLine(answer.error) : ttl === 0 ? 'etcd says it expired' : 'fenced, or renewed only after its deadline'}); joining with a new lease`);
    }
    await this.joinWithNewLease();
  }

  private async joinWithNewLease(): Promise<void> {
    // Before the new lease exists, so that waiting cannot eat into its deadline.
    await this.waitForNodeKeyFree();
    const sentAt = Date.now();
    const granted = await this.client.grantLease(this.ttlSeconds);
    this.lease = { id: granted.id, lastAckSentAt: sentAt, deadline: sentAt + granted.ttl * 1000 - DEADLINE_MARGIN_MS };
    // The lease file first: a crash after the node key exists can still re-attach.
    this.published = false;
    await this.saveLeaseFile();
    this.record = { ...this.record, joinedAt: new Date().toISOString() };
    try {
      await this.publish(granted.id);
      this.published = true;
      await this.saveLeaseFile();
    } catch (err) {
      await this.client.revokeLease(granted.id).catch(() => {});
      this.lease = undefined;
      await this.removeLeaseFile();
      throw err;
    }
    this.log(`cluster: node ${this.record.name} joined with lease ${hex(granted.id)} (TTL ${granted.ttl}s)`);
    this.emit({ type: 'joined', leaseId: granted.id, reattached: false });
  }

  /** Writes the node key under `leaseId`: only if it is absent or already ours. */
  private async publish(leaseId: string): Promise<void> {
    const key = this.keys.node(this.record.name);
    const value = JSON.stringify(this.record);
    const mine = await this.client.txn([{ key, lease: leaseId }], [{ put: key, value, lease: leaseId }]);
    if (mine.succeeded) return;
    const created = await this.client.txn([{ key, absent: true }], [{ put: key, value, lease: leaseId }]);
    if (created.succeeded) return;
    throw this.takenError((await this.client.get(key))?.lease);
  }

  /**
   * Waits up to one TTL (+2 s) for a node key another lease holds to go (an earlier run of this node whose
   * lease has not expired yet); a lease this process gave up is revoked again (etcd may not have heard).
   */
  private async waitForNodeKeyFree(): Promise<void> {
    const key = this.keys.node(this.record.name);
    const give = Date.now() + (this.ttlSeconds + 2) * 1000;
    for (;;) {
      const holder = await this.client.get(key);
      if (!holder) return;
      if (this.givenUp.has(holder.lease)) await this.client.revokeLease(holder.lease).catch(() => {});
      else if (Date.now() >= give) throw this.takenError(holder.lease);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  private takenError(lease: string | undefined): Error {
    return new Error(`node ${this.record.name} is already in the cluster under another lease (${hex(lease ?? '?')}): another controller runs with --node ${this.record.name}`);
  }

  /**
   * Writes the lease file as it is now (resolves once written). Writes are serialized and coalesced, so a
   * keepalive round can leave its write to the background: it never waits for a busy disk (fsyncs held for
   * seconds once held the next keepalive). A late write only makes the fencer's deadline earlier.
   */
  private saveLeaseFile(): Promise<void> {
    if (this.queued) return this.queued;
    const next = this.writes.then(() => {
      this.queued = undefined;
      return this.writeLeaseFile();
    });
    this.queued = next;
    this.writes = next.catch(() => {});
    return next;
  }

  /** Removes the lease file after any write in flight (which would otherwise bring it back). */
  private async removeLeaseFile(): Promise<void> {
    await this.writes;
    await removeFile(leaseFilePath(this.opts.stateDir));
  }

  private async writeLeaseFile(): Promise<void> {
    if (!this.lease) return;
    const file: LeaseFile = {
      node: this.record.name,
      leaseId: this.lease.id,
      ttlSeconds: this.ttlSeconds,
      endpoints: [...this.client.endpoints],
      prefix: this.prefix,
      deadline: this.lease.deadline,
      lastAckSentAt: this.lease.lastAckSentAt,
      pid: process.pid,
      published: this.published,
      ...(this.handoverUntil !== undefined ? { handoverUntil: this.handoverUntil } : {}),
    };
    await ensureDir(path.dirname(leaseFilePath(this.opts.stateDir)));
    // Not fsynced: the fencer and a restarted daemon read it from the page cache; after a power loss the
    // VMs it guards are gone too.
    await writeFileAtomic(leaseFilePath(this.opts.stateDir), `${JSON.stringify(file)}\n`, { durable: false });
  }

  private schedule(delayMs: number): void {
    if (!this.running) return;
    this.timer = setTimeout(() => {
      this.round = this.keepaliveRound().catch((err) => {
        this.log(`cluster: ${oneLine(err)}`);
        return KEEPALIVE_RETRY_MS;
      });
      void this.round.then((next) => this.schedule(next));
    }, delayMs);
  }

  /** One keepalive (or a join without a lease); resolves to the delay until the next one. */
  private async keepaliveRound(): Promise<number> {
    if (!this.lease) {
      await this.joinWithNewLease();
      return this.keepaliveMs;
    }
    const lease = this.lease;
    // Past the deadline: the fencer has killed (or is killing) this node's VMs. Never keep that lease.
    if (Date.now() >= lease.deadline) {
      await this.lose(lease.id, 'the lease deadline passed without an acknowledged keepalive');
      return KEEPALIVE_RETRY_MS;
    }
    const answer = await this.keepaliveUntil(lease.id, lease.deadline);
    if ('error' in answer) {
      this.log(`cluster: keepalive unanswered (deadline in ${lease.deadline - Date.now()} ms): ${oneLine(answer.error)}`);
      return 0; // the next round finds the deadline passed
    }
    if (answer.ttl === 0) {
      await this.lose(lease.id, 'etcd says the lease expired');
      return KEEPALIVE_RETRY_MS;
    }
    if (this.lease !== lease) return this.keepaliveMs;
    // Read after the deadline (an event loop stalled, a slow answer): the fencer may have fenced the lease
    // already, and a fenced lease must never carry VMs again.
    if (Date.now() >= lease.deadline) {
      await this.lose(lease.id, 'its keepalive was acknowledged only after the lease deadline had passed (the fencer may have fenced it)');
      return KEEPALIVE_RETRY_MS;
    }
    lease.lastAckSentAt = answer.sentAt;
    lease.deadline = answer.sentAt + answer.ttl * 1000 - DEADLINE_MARGIN_MS;
    // Neither awaited: the next keepalive must not wait for the disk (a slow write or read).
    this.saveLeaseFile().catch((err: unknown) => this.log(`cluster: cannot write the lease file: ${oneLine(err)}`));
    void this.checkFenced(lease.id);
    if (Date.now() - this.lastKeyCheck >= NODE_KEY_CHECK_MS) {
      this.lastKeyCheck = Date.now();
      void this.checkNodeKey(lease.id);
    }
    return this.keepaliveMs;
  }

  /**
   * Keepalives until one is answered or the deadline passes: a new one every KEEPALIVE_RETRY_MS while the
   * earlier ones still wait, each asked of every member. During an etcd leader election a member holds a
   * keepalive until it knows the new leader, polling for one only once per election timeout (1 s): an
   * attempt sent early in the election is answered late or never, one sent after it at once. The deadline
   * comes from the send time of the attempt that was answered (etcd renewed no earlier than that).
   */
  private keepaliveUntil(leaseId: string, deadline: number): Promise<{ ttl: number; sentAt: number } | { error: unknown }> {
    return new Promise((resolve) => {
      const abort = new AbortController();
      setMaxListeners(0, abort.signal); // every attempt on every member listens
      let pending = 0;
      let lastError: unknown = new Error('no keepalive sent before the deadline');
      let timer: NodeJS.Timeout | undefined;
      let done = false;
      const finish = (r: { ttl: number; sentAt: number } | { error: unknown }) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        abort.abort();
        resolve(r);
      };
      const attempt = () => {
        const sentAt = Date.now();
        if (sentAt >= deadline) {
          if (pending === 0) finish({ error: lastError });
          return;
        }
        pending++;
        this.client.keepaliveOnce(leaseId, Math.max(50, deadline - sentAt), abort.signal).then(
          (ttl) => finish({ ttl, sentAt }),
          (err: unknown) => {
            pending--;
            if (!done) lastError = err;
            if (pending === 0 && Date.now() >= deadline) finish({ error: lastError });
          },
        );
        timer = setTimeout(attempt, KEEPALIVE_RETRY_MS);
      };
      attempt();
    });
  }

  /** The fencer fenced the lease anyway (it saw the deadline pass before a renewal reached the lease file). */
  private async checkFenced(leaseId: string): Promise<void> {
    if (await fencedLease(this.opts.stateDir, leaseId)) await this.lose(leaseId, 'the fencer fenced it (cluster/fenced.json)').catch(() => {});
  }

  /** The node key must carry our lease: restore it if it was deleted, give the lease up if another holds it. */
  private async checkNodeKey(leaseId: string): Promise<void> {
    if (this.checkingKey) return;
    this.checkingKey = true;
    try {
      const key = await this.client.get(this.keys.node(this.record.name));
      if (this.lease?.id !== leaseId) return;
      if (key && key.lease !== leaseId) await this.lose(leaseId, `the node key is held by another lease (${hex(key.lease)})`);
      // Gone while the lease lives: deleted by hand or by an operator. Put it back (only if absent).
      else if (!key) await this.publish(leaseId);
    } catch (err) {
      // Unreachable etcd: the keepalive loop and its deadline decide.
      this.log(`cluster: cannot check the node key: ${oneLine(err)}`);
    } finally {
      this.checkingKey = false;
    }
  }

  private async lose(leaseId: string, reason: string): Promise<void> {
    if (this.lease?.id !== leaseId) return; // already given up
    this.givenUp.add(leaseId);
    this.log(`cluster: node ${this.record.name} lost lease ${hex(leaseId)}: ${reason}; rejoining with a new lease`);
    this.lease = undefined;
    this.emit({ type: 'lost', leaseId, reason });
    // Best effort, after telling: an etcd that cannot be reached holds this call for its whole timeout.
    await this.client.revokeLease(leaseId).catch(() => {});
  }
}

/** Lease ids as etcdctl prints them. */
export function hex(id: string): string {
  try {
    return BigInt(id).toString(16);
  } catch {
    return id;
  }
}

/** The node records of the cluster at one revision, with each lease's remaining TTL. */
export async function readNodes(client: EtcdClient, prefix = 'qwamos/'): Promise<{ revision: string; nodes: Array<{ record: NodeRecord; lease: string; ttl?: { ttl: number; grantedTtl: number } }> }> {
  const keys = clusterKeys(prefix);
  const { revision, entries } = await client.list(keys.nodes);
  const nodes = [];
  for (const e of entries) {
    const record = parseNodeRecord(e.value);
    if (!record) continue;
    const ttl = await client.leaseTimeToLive(e.lease).catch(() => undefined);
    nodes.push({ record, lease: e.lease, ...(ttl ? { ttl } : {}) });
  }
  return { revision, nodes };
}

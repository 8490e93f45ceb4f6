// The fencer: a small process beside the daemon (not the daemon itself: a frozen or killed daemon cannot
// fence) that kills this node's VMs, by PID, as soon as the node may no longer hold its run/ claims:
//  - the lease deadline in <state>/cluster/lease.json passed (send time of the last acknowledged
//    keepalive + TTL − 1 s: before etcd can expire the lease, so before another node can claim a VM);
//  - the node key vanished from etcd or carries another lease (revoked, deleted);
//  - the lease file names another lease (the daemon rejoined: the old claims are gone) or was removed.
// While the guarded lease is fenced, any VM process that appears is killed too, until a live new lease
// shows up in the lease file.
// After a clean stop of the daemon (handoverUntil in the lease file) the fencer keeps the lease alive
// itself, so a restart that takes longer than TTL − 1 s still re-attaches; its deadline then comes from its
// own acknowledged keepalives (cluster/handover.json), and the rules above hold for it unchanged.
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { vmPaths } from '../controllers/vm/context.ts';
import type { EtcdClient } from '../drivers/etcd.ts';
import { scanQemuProcesses, vmProcesses } from '../drivers/qemu.ts';
import { oneLine } from '../errors.ts';
import { processAlive } from '../proc.ts';
import { ensureDir, removeFile, writeFileAtomic } from '../store/atomic.ts';
import { clusterKeys } from './keys.ts';
import { ledgerStopsWhenGone } from './ledger.ts';
import { DEADLINE_MARGIN_MS, KEEPALIVE_INTERVAL_MS, fenceFilePath, handoverFilePath, hex, readLeaseFile, type HandoverFile, type LeaseFile } from './membership.ts';

export interface VmProcess {
  vm: string;
  pid: number;
  /** Start time from /proc (field 22), so a reused PID is never killed. */
  start?: string;
}

export interface FenceRecord {
  leaseId: string;
  since: string;
  reason: string;
  killed: Array<{ vm: string; pid: number }>;
}

export interface FencerOptions {
  stateDir: string;
  /** Its own etcd connection (the daemon's may be the thing that hangs). */
  client: EtcdClient;
  /** This node's VM processes right now. */
  vms: () => Promise<VmProcess[]>;
  /** How often the lease file is read (ms). */
  pollMs?: number;
  /** How often etcd is asked for the node key (ms). */
  etcdCheckMs?: number;
  log?: (line: string) => void;
  /** Called after each fence (tests, status). */
  onFence?: (record: FenceRecord) => void;
  /** The ledger file (QWAMOS_LEDGER): a `stop` for each VM killed, once it is gone. */
  ledger?: string;
}

export { fenceFilePath };

export class Fencer {
  private guarded: LeaseFile | undefined;
  private fenced: FenceRecord | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private lastEtcdCheck = 0;
  private etcdCheck: Promise<void> | undefined;
  private tick: Promise<void> = Promise.resolve();
  /** The lease this fencer keeps alive after a clean stop of the daemon, with its own deadline. */
  private handover: HandoverFile | undefined;
  private handoverKeepalive: Promise<void> | undefined;
  private lastHandoverKeepalive = 0;
  private readonly log: (line: string) => void;

  constructor(private readonly opts: FencerOptions) {
    this.log = opts.log ?? (() => {});
  }

  start(): void {
    this.running = true;
    const loop = () => {
      if (!this.running) return;
      this.tick = this.check().catch((err) => this.log(`fencer: ${oneLine(err)}`));
      void this.tick.then(() => {
        if (this.running) this.timer = setTimeout(loop, this.opts.pollMs ?? 100);
      });
    };
    loop();
  }

  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    await this.tick;
    await this.etcdCheck;
    await this.handoverKeepalive;
  }

  /** The fence in force (the guarded lease may not be used), if any. */
  get fence(): FenceRecord | undefined {
    return this.fenced;
  }

  /** One round: exposed for tests that step it by hand. */
  async check(): Promise<void> {
    const now = Date.now();
    let file: LeaseFile | undefined;
    try {
      file = await readLeaseFile(this.opts.stateDir);
    } catch (err) {
      // Half-written cannot happen (atomic writes); a damaged file: keep guarding what we had.
      this.log(`fencer: cannot read the lease file: ${oneLine(err)}`);
      file = this.guarded;
    }

    if (file && file.leaseId !== this.guarded?.leaseId) {
      if (this.guarded && !this.fenced) await this.fenceNow(this.guarded.leaseId, `the node rejoined with lease ${file.leaseId}; the claims of lease ${this.guarded.leaseId} are gone`);
      this.guarded = file;
      if (now < file.deadline) this.fenced = undefined; // a live new lease: VMs may run under its claims
    } else if (file) {
      this.guarded = file;
    } else if (this.guarded) {
      if (!this.fenced) await this.fenceNow(this.guarded.leaseId, 'the node left the cluster (its lease file was removed)');
      this.guarded = undefined;
    }

    const guarded = this.guarded;
    await this.followHandover(guarded, now);
    const deadline = this.deadlineOf(guarded);
    if (guarded && !this.fenced && now >= deadline) {
      const why = this.handover?.leaseId === guarded.leaseId ? ' (the controller did not come back within its restart window)' : '';
      await this.fenceNow(guarded.leaseId, `the lease deadline passed ${now - deadline} ms ago without an acknowledged keepalive${why}`);
    }
    // Only once the daemon put its node key under this lease (the lease file says so): between a new
    // lease and its key, an absent key means nothing.
    if (guarded && !this.fenced && guarded.published !== false && !this.etcdCheck && now - this.lastEtcdCheck >= (this.opts.etcdCheckMs ?? 500)) {
      this.lastEtcdCheck = now;
      // Not awaited: an etcd request that hangs (a node cut from etcd) must not hold up the deadline check
      // of the next rounds (it did, by seconds, in the three-node tests). One at a time.
      this.etcdCheck = this.checkNodeKey(guarded)
        .catch((err) => this.log(`fencer: ${oneLine(err)}`))
        .finally(() => (this.etcdCheck = undefined));
    }
    // Fenced: nothing may run until a live new lease appears.
    if (this.fenced) await this.killAll(this.fenced);
  }

  /** The guarded lease's deadline: the daemon's, or the fencer's own while it keeps the lease after a clean stop. */
  private deadlineOf(guarded: LeaseFile | undefined): number {
    if (!guarded) return Infinity;
    return Math.max(guarded.deadline, this.handover?.leaseId === guarded.leaseId ? this.handover.deadline : 0);
  }

  /**
   * A clean stop handed the lease over (handoverUntil): keepalives every KEEPALIVE_INTERVAL_MS until the
   * restarted daemon re-attaches (its lease file has no handoverUntil) or the window closes (the deadline
   * then passes and the lease is fenced like any other).
   */
  private async followHandover(guarded: LeaseFile | undefined, now: number): Promise<void> {
    const handedOver = guarded?.handoverUntil !== undefined && guarded.published !== false && !this.fenced;
    if (!handedOver || this.handover?.leaseId !== guarded!.leaseId) {
      if (this.handover) {
        this.handover = undefined;
        await removeFile(handoverFilePath(this.opts.stateDir)).catch(() => {});
      }
      if (!handedOver) return;
      this.handover = { leaseId: guarded!.leaseId, deadline: guarded!.deadline, lastAckSentAt: guarded!.lastAckSentAt };
      this.log(`fencer: the controller stopped cleanly; keeping lease ${guarded!.leaseId} alive until ${new Date(guarded!.handoverUntil!).toISOString()} for its restart`);
    }
    if (now >= guarded!.handoverUntil! || this.handoverKeepalive || now - this.lastHandoverKeepalive < KEEPALIVE_INTERVAL_MS) return;
    this.lastHandoverKeepalive = now;
    // Not awaited, like the node key check: the deadline check must not wait for etcd.
    this.handoverKeepalive = this.keepHandedOver(guarded!.leaseId)
      .catch((err) => this.log(`fencer: keepalive of lease ${hex(guarded!.leaseId)}: ${oneLine(err)}`))
      .finally(() => (this.handoverKeepalive = undefined));
  }

  private async keepHandedOver(leaseId: string): Promise<void> {
    const sentAt = Date.now();
    const deadline = this.deadlineOf(this.guarded);
    if (sentAt >= deadline) return;
    const ttl = await this.opts.client.keepaliveOnce(leaseId, Math.max(50, deadline - sentAt));
    // Expired, fenced meanwhile, taken back by the daemon, or answered only after the deadline (the lease
    // may be fenced already): never extend.
    if (ttl <= 0 || this.fenced || this.handover?.leaseId !== leaseId || Date.now() >= this.deadlineOf(this.guarded)) return;
    this.handover = { leaseId, deadline: sentAt + ttl * 1000 - DEADLINE_MARGIN_MS, lastAckSentAt: sentAt };
    await ensureDir(path.dirname(handoverFilePath(this.opts.stateDir)));
    await writeFileAtomic(handoverFilePath(this.opts.stateDir), `${JSON.stringify(this.handover)}\n`, { durable: false });
  }

  /** Fences when the node key vanished from etcd or carries another lease. */
  private async checkNodeKey(guarded: LeaseFile): Promise<void> {
    const key = clusterKeys(guarded.prefix).node(guarded.node);
    // Unreachable etcd decides nothing here: the deadline covers it.
    const entry = await this.opts.client.get(key).then(
      (e) => ({ ok: true as const, e }),
      () => ({ ok: false as const }),
    );
    // Re-read: the daemon may have rejoined while we asked.
    const current = await readLeaseFile(this.opts.stateDir).catch(() => guarded);
    if (entry.ok && current?.leaseId === guarded.leaseId && current.published !== false && !this.fenced && this.guarded?.leaseId === guarded.leaseId) {
      if (!entry.e) await this.fenceNow(guarded.leaseId, `the node key ${key} vanished`);
      else if (entry.e.lease !== guarded.leaseId) await this.fenceNow(guarded.leaseId, `the node key ${key} carries another lease (${entry.e.lease})`);
    }
  }

  private async fenceNow(leaseId: string, reason: string): Promise<void> {
    const record: FenceRecord = { leaseId, since: new Date().toISOString(), reason, killed: [] };
    this.fenced = record;
    await this.killAll(record);
    this.log(`fencer: fenced lease ${leaseId}: ${reason}; killed ${record.killed.map((k) => `${k.vm} (pid ${k.pid})`).join(', ') || 'nothing'}`);
    await ensureDir(path.dirname(fenceFilePath(this.opts.stateDir)));
    await writeFileAtomic(fenceFilePath(this.opts.stateDir), `${JSON.stringify(record)}\n`).catch((err) => this.log(`fencer: cannot record the fence: ${oneLine(err)}`));
    this.opts.onFence?.(record);
    await this.revokeFenced(leaseId, record);
  }

  /**
   * Once what it killed is gone, revokes the fenced lease in etcd (best effort: unreachable etcd expires it
   * itself). A keepalive sent just before the deadline and answered after it would otherwise let the
   * daemon keep a lease its fencer has fenced: it then claims VMs under it and the fencer kills every one
   * it starts (found by the three-node tests). Revoked, the daemon's next keepalive finds the lease gone
   * and it rejoins with a new one, and the other nodes see its claims go at once.
   */
  private async revokeFenced(leaseId: string, record: FenceRecord): Promise<void> {
    const until = Date.now() + 2000;
    while (record.killed.some((k) => processAlive(k.pid))) {
      if (Date.now() >= until) return; // a copy still dying: leave the lease to etcd's own expiry
      await new Promise((r) => setTimeout(r, 10));
    }
    await this.opts.client.revokeLease(leaseId).catch(() => {});
  }

  private async killAll(record: FenceRecord): Promise<void> {
    const killed: VmProcess[] = [];
    for (const p of await this.opts.vms()) {
      if (!processAlive(p.pid, p.start)) continue;
      try {
        process.kill(p.pid, 'SIGKILL');
        record.killed.push({ vm: p.vm, pid: p.pid });
        killed.push(p);
      } catch {
        // exited meanwhile
      }
    }
    if (this.opts.ledger && killed.length) await ledgerStopsWhenGone({ file: this.opts.ledger, node: this.guarded?.node ?? '?' }, killed, { stateDir: this.opts.stateDir });
  }
}

/**
 * This node's QEMU processes: for every VM with a state directory, the live QEMUs of its run directory
 * (found by command line, as the VM controller finds them: a missing or stale pidfile hides nothing).
 */
export async function qemuVmProcesses(stateDir: string, runRoot?: string): Promise<VmProcess[]> {
  const names = await readdir(path.join(stateDir, 'vms')).catch(() => [] as string[]);
  if (names.length === 0) return [];
  const procs = await scanQemuProcesses();
  return names.flatMap((vm) =>
    vmProcesses(procs, vmPaths({ stateDir, ...(runRoot ? { runRoot } : {}) }, vm).runDir, vm).map((q) => ({ vm, pid: q.pid, start: String(q.startTicks) })),
  );
}

// The embedded desired-state store: one state directory, one small JSON file per resource.
//
//   DIR/resources/<Kind>/<name>.json   the manifest as applied, its source and generation
//   DIR/status/<Kind>/<name>.json      conditions, observedGeneration, phase, controller fields
//   DIR/drift/<Kind>/<name>.json       drift records of one resource (open ones and recent healed ones)
//   DIR/events.log (+ events.log.1)    JSON lines, rotated when over maxEvents lines
//   DIR/lock, DIR/leases/<name>.lock   the write lock and long-held leases (see lock.ts)
//
// The inventory (what was applied, from where, for pruning) is the resources folder itself: each file
// carries its source, so it can never disagree with the manifests after a crash.
// Every mutation takes the write lock itself (re-entrant), so two processes never interleave; callers
// group several mutations into one critical section with withLock.
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { UserError } from '../errors.ts';
import type { Kind } from '../resources/kinds.ts';
import type { SpecByKind } from '../resources/types.ts';
import {
  DIR_MODE,
  FILE_MODE,
  ensureDir,
  fsyncDir,
  isErrno,
  listDir,
  readJsonFile,
  removeFile,
  tempOwner,
  writeFileAtomic,
} from './atomic.ts';
import { mapLimit } from '../concurrency.ts';
import { FileLock, liveHolder, processAlive, release, tryAcquire } from './lock.ts';

export interface ResourceMetadata {
  name: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface ResourceSource {
  /** File the manifest was read from (or its path inside the git repository). */
  path: string;
  /** sha256 of the manifest file's bytes, hex. */
  digest: string;
  /** Git commit the manifest came from, when applied from git. */
  commit?: string;
}

export interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: ResourceMetadata;
  spec: object;
}

/** A stored resource of any kind, typed by kind: narrowing on `kind` types `spec`. */
export type StoredResource<K extends Kind = Kind> = K extends Kind ? StoredOf<K> : never;

interface StoredOf<K extends Kind> extends StoredRecord {
  kind: K;
  spec: SpecByKind[K];
}

/** What the store keeps of every resource, whatever its kind. */
export interface StoredRecord extends Manifest {
  source: ResourceSource;
  /** 1 when created, +1 whenever spec or labels change. */
  generation: number;
  /** When the current generation (or annotations) was applied. */
  appliedAt: string;
  suspended?: boolean;
  /** Set by delete: the engine removes the resource from the host, then from the store. */
  deletionRequestedAt?: string;
}

export type ApplyResult = 'created' | 'configured' | 'unchanged';

/** Ready, Reconciling and Stalled for every kind; the others are set by the controllers that need them. */
export type ConditionType = 'Ready' | 'Reconciling' | 'Stalled' | 'RestartRequired' | 'GpuUnavailable' | 'Paused';
export type ConditionStatus = 'True' | 'False' | 'Unknown';

export interface Condition {
  type: ConditionType;
  status: ConditionStatus;
  reason: string;
  message: string;
  /** Changes only when status flips. */
  lastTransitionTime: string;
}

export type ConditionPatch = Omit<Condition, 'lastTransitionTime'> & { lastTransitionTime?: string };

export interface ResourceStatus {
  kind: string;
  name: string;
  observedGeneration: number;
  phase: string;
  conditions: Condition[];
  /** Free-form values controllers keep (pid, addresses, ...). */
  fields: Record<string, unknown>;
  updatedAt: string;
}

export interface StatusPatch {
  conditions?: ConditionPatch[];
  observedGeneration?: number;
  phase?: string;
  /** Merged key by key; a key set to undefined or null is removed. */
  fields?: Record<string, unknown>;
}

export type EventType = 'Normal' | 'Warning';

export interface StoreEvent {
  time: string;
  /** 'Kind/name', or any other subject such as 'controller'. */
  resource: string;
  type: EventType;
  reason: string;
  message: string;
}

export type DriftPolicy = 'heal' | 'warn';

export interface DriftRecord {
  id: string;
  /** 'Kind/name'. */
  resource: string;
  field: string;
  desired: string;
  actual: string;
  /** First detection of this (still open) difference. */
  detectedAt: string;
  /** Last time it was seen; equal to detectedAt until seen again. */
  lastSeenAt: string;
  /** How many times it was recorded while open. */
  count: number;
  healedAt?: string;
  policy: DriftPolicy;
  state: 'open' | 'healed';
}

export interface InventoryEntry {
  kind: string;
  name: string;
  source: ResourceSource;
  generation: number;
}

export interface Lease {
  name: string;
  pid: number;
  acquiredAt: string;
  /** Gives the lease up; safe to call twice. */
  release(): Promise<void>;
}

export interface StoreOptions {
  /** Lines in events.log before it is rotated to events.log.1 (so at most twice this many are kept). */
  maxEvents?: number;
  /** Default wait for the write lock. */
  lockTimeoutMs?: number;
}

const NAME_RE = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const KIND_RE = /^[A-Z][A-Za-z]+$/;
/** Healed drift records kept per resource, as history for `drift`. */
const HEALED_KEPT = 20;
/** Longest event message stored, so one event cannot bloat the log. */
const MAX_MESSAGE = 4096;
/** Files read at once when listing. */
const READ_CONCURRENCY = 64;

/** Throws unless name is a DNS label; names become file names, so this keeps them inside the directory. */
export function assertName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length > 63 || !NAME_RE.test(name)) {
    throw new UserError(`invalid resource name ${JSON.stringify(name)}: must be a lowercase DNS label`);
  }
}

export function assertKind(kind: unknown): asserts kind is string {
  if (typeof kind !== 'string' || kind.length > 63 || !KIND_RE.test(kind)) {
    throw new UserError(`invalid resource kind ${JSON.stringify(kind)}`);
  }
}

/** Splits and checks 'Kind/name'. */
export function parseRef(ref: string): { kind: string; name: string } {
  const slash = ref.indexOf('/');
  const kind = ref.slice(0, slash);
  const name = ref.slice(slash + 1);
  if (slash < 0) throw new UserError(`invalid resource reference ${JSON.stringify(ref)}: expected Kind/name`);
  assertKind(kind);
  assertName(name);
  return { kind, name };
}

/** A JSON-clean deep copy: drops undefined members, so comparisons see what is stored. */
function clean<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

function toJson(value: unknown): string {
  return JSON.stringify(value, null, 2) + '\n';
}

const now = () => new Date().toISOString();

export class Store {
  private readonly lock: FileLock;
  private readonly maxEvents: number;
  private readonly lockTimeoutMs: number;
  /** Per-file queue inside this process, so concurrent calls within one withLock cannot lose updates. */
  private readonly queues = new Map<string, Promise<unknown>>();
  /** Size and line count of events.log as last seen, to avoid recounting on every append. */
  private eventsSeen?: { size: number; lines: number };

  private constructor(
    readonly dir: string,
    opts: StoreOptions,
  ) {
    this.lock = FileLock.for(path.join(dir, 'lock'));
    this.maxEvents = opts.maxEvents ?? 5000;
    this.lockTimeoutMs = opts.lockTimeoutMs ?? 30_000;
  }

  /** Opens (creating if needed) the state directory and removes temp files abandoned by dead writers. */
  static async open(dir: string, opts: StoreOptions = {}): Promise<Store> {
    const root = path.resolve(dir);
    await ensureDir(root);
    const st = await fs.stat(root);
    if ((st.mode & 0o777) !== DIR_MODE && st.uid === process.getuid?.()) await fs.chmod(root, DIR_MODE);
    const store = new Store(root, opts);
    for (const sub of ['resources', 'status', 'drift', 'leases']) await ensureDir(path.join(root, sub));
    await store.cleanTemps();
    return store;
  }

  // ---- locking ----------------------------------------------------------------------------------

  /** Runs fn holding the state directory's write lock; waits up to timeoutMs, then throws naming the holder. */
  withLock<T>(fn: () => Promise<T>, opts: { timeoutMs?: number } = {}): Promise<T> {
    return this.lock.run(fn, opts.timeoutMs ?? this.lockTimeoutMs);
  }

  /**
   * Takes a long-held lease (e.g. 'reconciler' for the daemon), or null if a live process holds it.
   * Not waited for: whoever gets null knows someone else has the job.
   */
  async acquireLease(name: string): Promise<Lease | null> {
    assertName(name);
    const file = this.leaseFile(name);
    const holder = await tryAcquire(file);
    if (!holder) return null;
    let released = false;
    return {
      name,
      pid: holder.pid,
      acquiredAt: holder.acquiredAt,
      release: async () => {
        if (released) return;
        released = true;
        await release(file, holder);
      },
    };
  }

  /** The live process holding a lease, or null (free, or its holder died). */
  async leaseHolder(name: string): Promise<{ pid: number; acquiredAt: string } | null> {
    assertName(name);
    const holder = await liveHolder(this.leaseFile(name));
    return holder ? { pid: holder.pid, acquiredAt: holder.acquiredAt } : null;
  }

  // ---- resources --------------------------------------------------------------------------------

  /**
   * Stores a manifest as applied. 'unchanged' when spec, labels and annotations deep-equal the stored
   * ones; the generation moves only when spec or labels change (annotations do not drive controllers).
   * A new source for an unchanged manifest is still recorded, as pruning goes by source.
   */
  async putResource(r: Manifest, source: ResourceSource): Promise<{ result: ApplyResult; generation: number }> {
    assertKind(r.kind);
    assertName(r.metadata?.name);
    if (typeof r.spec !== 'object' || r.spec === null || Array.isArray(r.spec)) {
      throw new UserError(`${r.kind}/${r.metadata.name}: spec must be an object`);
    }
    const file = this.resourceFile(r.kind, r.metadata.name);
    return this.mutate(file, async () => {
      const old = await readJsonFile<StoredResource>(file);
      const metadata: ResourceMetadata = clean({
        name: r.metadata.name,
        labels: r.metadata.labels,
        annotations: r.metadata.annotations,
      });
      const spec = clean(r.spec);
      const src = clean(source);
      const specOrLabelsChanged =
        !old || !isDeepStrictEqual(old.spec, spec) || !isDeepStrictEqual(old.metadata.labels ?? {}, metadata.labels ?? {});
      const changed =
        specOrLabelsChanged ||
        old.apiVersion !== r.apiVersion ||
        !isDeepStrictEqual(old.metadata.annotations ?? {}, metadata.annotations ?? {});
      // Applying a resource that is being deleted takes it back.
      if (old && !changed && !old.deletionRequestedAt) {
        if (!isDeepStrictEqual(old.source, src)) await writeFileAtomic(file, toJson({ ...old, source: src }));
        return { result: 'unchanged', generation: old.generation };
      }
      // The caller validated the manifest against its kind's schema (store files are shape-checked on read).
      const next = {
        apiVersion: r.apiVersion,
        kind: r.kind,
        metadata,
        spec,
        source: src,
        generation: !old ? 1 : specOrLabelsChanged ? old.generation + 1 : old.generation,
        appliedAt: now(),
        ...(old?.suspended ? { suspended: true } : {}), // suspension is a user action, not part of the manifest
      };
      await ensureDir(path.dirname(file));
      await writeFileAtomic(file, toJson(next));
      return { result: old && !old.deletionRequestedAt ? 'configured' : 'created', generation: next.generation };
    });
  }

  async getResource(kind: string, name: string): Promise<StoredResource | undefined> {
    return readJsonFile<StoredResource>(this.resourceFile(kind, name));
  }

  /** All stored resources (of one kind if given), sorted by kind then name. */
  async listResources(kind?: string): Promise<StoredResource[]> {
    return this.readAll<StoredResource>('resources', kind);
  }

  /** What has been applied and from where: the basis for pruning. */
  async listInventory(): Promise<InventoryEntry[]> {
    return (await this.listResources()).map((r) => ({
      kind: r.kind,
      name: r.metadata.name,
      source: r.source,
      generation: r.generation,
    }));
  }

  /**
   * Removes a resource with its status and drift records; false if it was not stored. With
   * ifDeletionRequestedAt, only while the record still carries that tombstone (not applied again since).
   */
  async deleteResource(kind: string, name: string, opts: { ifDeletionRequestedAt?: string } = {}): Promise<boolean> {
    const file = this.resourceFile(kind, name);
    return this.mutate(file, async () => {
      if (opts.ifDeletionRequestedAt !== undefined) {
        const r = await readJsonFile<StoredResource>(file);
        if (r?.deletionRequestedAt !== opts.ifDeletionRequestedAt) return false;
      }
      // Status and drift first: a crash in between leaves the resource (the delete was not acknowledged),
      // never status without a resource.
      await removeFile(this.statusFile(kind, name));
      await removeFile(this.driftFile(kind, name));
      return removeFile(file);
    });
  }

  async setSuspended(kind: string, name: string, suspended: boolean): Promise<void> {
    const file = this.resourceFile(kind, name);
    await this.mutate(file, async () => {
      const r = await readJsonFile<StoredResource>(file);
      if (!r) throw new UserError(`${kind}/${name} not found`);
      if ((r.suspended ?? false) === suspended) return;
      const { suspended: _, ...rest } = r;
      await writeFileAtomic(file, toJson(suspended ? { ...rest, suspended: true } : rest));
    });
  }

  /** Marks a resource for deletion (a tombstone the engine acts on); false when it does not exist. */
  async markForDeletion(kind: string, name: string): Promise<boolean> {
    const file = this.resourceFile(kind, name);
    return this.mutate(file, async () => {
      const r = await readJsonFile<StoredResource>(file);
      if (!r) return false;
      if (!r.deletionRequestedAt) await writeFileAtomic(file, toJson({ ...r, deletionRequestedAt: now() }));
      return true;
    });
  }

  // ---- reconcile requests (CLI -> daemon) --------------------------------------------------------

  /** Asks the running controller to reconcile these keys (all when empty). */
  async requestReconcile(keys: string[]): Promise<void> {
    const dir = path.join(this.dir, 'requests');
    await ensureDir(dir);
    const file = path.join(dir, `${Date.now()}-${randomBytes(4).toString('hex')}.json`);
    await writeFileAtomic(file, toJson({ keys }));
  }

  /** Takes (reads and removes) pending reconcile requests; `[]` in the result means everything. */
  async takeRequests(): Promise<string[][]> {
    const dir = path.join(this.dir, 'requests');
    const names = (await listDir(dir)).filter((n) => n.endsWith('.json') && !n.startsWith('.'));
    const out: string[][] = [];
    for (const name of names.sort()) {
      const file = path.join(dir, name);
      const req = await readJsonFile<{ keys?: unknown }>(file);
      await removeFile(file);
      const keys = Array.isArray(req?.keys) ? req.keys.filter((k): k is string => typeof k === 'string' && k.length < 200) : [];
      out.push(keys);
    }
    return out;
  }

  // ---- status -----------------------------------------------------------------------------------

  async getStatus(kind: string, name: string): Promise<ResourceStatus | undefined> {
    return readJsonFile<ResourceStatus>(this.statusFile(kind, name));
  }

  async listStatuses(kind?: string): Promise<ResourceStatus[]> {
    return this.readAll<ResourceStatus>('status', kind);
  }

  /**
   * Merges a patch into a resource's status. Conditions merge by type; a condition whose status did not
   * change keeps its lastTransitionTime. Nothing is written when nothing changed.
   */
  async updateStatus(kind: string, name: string, patch: StatusPatch): Promise<ResourceStatus> {
    const file = this.statusFile(kind, name);
    return this.mutate(file, async () => {
      const old = await readJsonFile<ResourceStatus>(file);
      const t = now();
      const conditions = [...(old?.conditions ?? [])];
      for (const c of patch.conditions ?? []) {
        const i = conditions.findIndex((x) => x.type === c.type);
        const prev = conditions[i];
        const lastTransitionTime =
          prev && prev.status === c.status ? prev.lastTransitionTime : (c.lastTransitionTime ?? t);
        const merged: Condition = { type: c.type, status: c.status, reason: c.reason, message: c.message, lastTransitionTime };
        if (i >= 0) conditions[i] = merged;
        else conditions.push(merged);
      }
      const fields = { ...(old?.fields ?? {}) };
      for (const [k, v] of Object.entries(patch.fields ?? {})) {
        if (v === undefined || v === null) delete fields[k];
        else fields[k] = v;
      }
      const next: ResourceStatus = clean({
        kind,
        name,
        observedGeneration: patch.observedGeneration ?? old?.observedGeneration ?? 0,
        phase: patch.phase ?? old?.phase ?? 'Pending',
        conditions,
        fields,
        updatedAt: t,
      });
      if (old && isDeepStrictEqual({ ...old, updatedAt: t }, next)) return old;
      await ensureDir(path.dirname(file));
      await writeFileAtomic(file, toJson(next));
      return next;
    });
  }

  /** Removes a resource's status (the engine, once a deleted resource is gone from the host). */
  async deleteStatus(kind: string, name: string): Promise<boolean> {
    const file = this.statusFile(kind, name);
    return this.mutate(file, () => removeFile(file));
  }

  // ---- events -----------------------------------------------------------------------------------

  /** Appends one event durably; rotates the log to events.log.1 once it exceeds maxEvents lines. */
  async appendEvent(e: { resource: string; type: EventType; reason: string; message: string }): Promise<void> {
    const file = path.join(this.dir, 'events.log');
    const event: StoreEvent = {
      time: now(),
      resource: String(e.resource),
      type: e.type,
      reason: String(e.reason),
      message: String(e.message).slice(0, MAX_MESSAGE),
    };
    await this.mutate(file, async () => {
      const fh = await fs.open(file, constants.O_RDWR | constants.O_CREAT | constants.O_APPEND, FILE_MODE);
      let size: number;
      try {
        const before = await fh.stat();
        // A torn last line (power loss mid-append) would swallow this event; start on a fresh line.
        let line = JSON.stringify(event) + '\n';
        if (before.size > 0) {
          const last = Buffer.alloc(1);
          await fh.read(last, 0, 1, before.size - 1);
          if (last[0] !== 0x0a) line = '\n' + line;
        }
        await fh.write(line);
        await fh.datasync();
        if (before.size === 0) await fsyncDir(this.dir); // the file may be new: make its name durable too
        size = before.size + Buffer.byteLength(line);
        const seen = this.eventsSeen;
        // Someone else (another process) appended since we last counted: count again.
        this.eventsSeen =
          seen && seen.size === before.size ? { size, lines: seen.lines + 1 } : { size, lines: await countLines(file) };
      } finally {
        await fh.close();
      }
      if (this.eventsSeen.lines > this.maxEvents) {
        await fs.rename(file, `${file}.1`); // atomic; the old lines were already durable
        await fsyncDir(this.dir);
        this.eventsSeen = { size: 0, lines: 0 };
      }
    });
  }

  /** Events oldest first; with a limit, the newest `limit` of them. */
  async listEvents(filter: { resource?: string; limit?: number } = {}): Promise<StoreEvent[]> {
    const file = path.join(this.dir, 'events.log');
    const events: StoreEvent[] = [];
    for (const f of [`${file}.1`, file]) {
      let text: string;
      try {
        text = await fs.readFile(f, 'utf8');
      } catch (err) {
        if (isErrno(err, 'ENOENT')) continue;
        throw err;
      }
      for (const line of text.split('\n')) {
        if (!line) continue;
        try {
          const ev = JSON.parse(line) as StoreEvent;
          if (filter.resource === undefined || ev.resource === filter.resource) events.push(ev);
        } catch {
          // a torn line from a crash: skip it
        }
      }
    }
    return filter.limit !== undefined ? events.slice(Math.max(0, events.length - filter.limit)) : events;
  }

  // ---- drift ------------------------------------------------------------------------------------

  /** Records a difference; an open record for the same resource and field is updated, not duplicated. */
  async recordDrift(d: { resource: string; field: string; desired: string; actual: string; policy: DriftPolicy }): Promise<DriftRecord> {
    const [rec] = await this.recordDrifts(d.resource, [d], d.policy);
    return rec!;
  }

  /** Records several differences of one resource in one write (an open record per field is updated). */
  async recordDrifts(
    resource: string,
    diffs: { field: string; desired: string; actual: string }[],
    policy: DriftPolicy,
  ): Promise<DriftRecord[]> {
    const { kind, name } = parseRef(resource);
    const file = this.driftFile(kind, name);
    return this.mutate(file, async () => {
      const records = (await readJsonFile<DriftRecord[]>(file)) ?? [];
      const t = now();
      const out: DriftRecord[] = [];
      for (const d of diffs) {
        let rec = records.find((r) => r.state === 'open' && r.field === d.field);
        if (rec) {
          Object.assign(rec, { desired: d.desired, actual: d.actual, policy, lastSeenAt: t, count: rec.count + 1 });
        } else {
          rec = {
            id: randomBytes(6).toString('hex'),
            resource: `${kind}/${name}`,
            field: d.field,
            desired: d.desired,
            actual: d.actual,
            detectedAt: t,
            lastSeenAt: t,
            count: 1,
            policy,
            state: 'open',
          };
          records.push(rec);
        }
        out.push(rec);
      }
      await this.writeDrift(file, records);
      return out;
    });
  }

  /** Marks a resource's open records (only those for field, if given) healed; returns how many. */
  async resolveDrift(resource: string, field?: string): Promise<number> {
    const { kind, name } = parseRef(resource);
    const file = this.driftFile(kind, name);
    return this.mutate(file, async () => {
      const records = (await readJsonFile<DriftRecord[]>(file)) ?? [];
      const t = now();
      let count = 0;
      for (const r of records) {
        if (r.state === 'open' && (field === undefined || r.field === field)) {
          r.state = 'healed';
          r.healedAt = t;
          count++;
        }
      }
      if (count) await this.writeDrift(file, records);
      return count;
    });
  }

  /** Drift records, oldest detection first. */
  async listDrift(filter: { state?: 'open' | 'healed'; resource?: string } = {}): Promise<DriftRecord[]> {
    let records: DriftRecord[];
    if (filter.resource !== undefined) {
      const { kind, name } = parseRef(filter.resource);
      records = (await readJsonFile<DriftRecord[]>(this.driftFile(kind, name))) ?? [];
    } else {
      records = (await this.readAll<DriftRecord[]>('drift')).flat();
    }
    return records
      .filter((r) => filter.state === undefined || r.state === filter.state)
      .sort((a, b) => a.detectedAt.localeCompare(b.detectedAt));
  }

  private async writeDrift(file: string, records: DriftRecord[]): Promise<void> {
    // Keep every open record and only the most recent healed ones.
    const healed = records.filter((r) => r.state === 'healed');
    const drop = new Set(healed.slice(0, Math.max(0, healed.length - HEALED_KEPT)));
    await ensureDir(path.dirname(file));
    await writeFileAtomic(file, toJson(records.filter((r) => !drop.has(r))));
  }

  // ---- internals --------------------------------------------------------------------------------

  private resourceFile(kind: string, name: string): string {
    return this.file('resources', kind, name);
  }
  private statusFile(kind: string, name: string): string {
    return this.file('status', kind, name);
  }
  private driftFile(kind: string, name: string): string {
    return this.file('drift', kind, name);
  }
  private leaseFile(name: string): string {
    return path.join(this.dir, 'leases', `${name}.lock`);
  }

  private file(area: string, kind: string, name: string): string {
    assertKind(kind);
    assertName(name);
    return path.join(this.dir, area, kind, `${name}.json`);
  }

  /** Runs a read-modify-write of one file under the write lock and this process's per-file queue. */
  private mutate<T>(key: string, fn: () => Promise<T>): Promise<T> {
    return this.withLock(() => {
      const prev = this.queues.get(key) ?? Promise.resolve();
      const run = prev.then(fn, fn);
      const tail = run.catch(() => {});
      this.queues.set(key, tail);
      void tail.then(() => {
        if (this.queues.get(key) === tail) this.queues.delete(key);
      });
      return run;
    });
  }

  /** Reads every <Kind>/<name>.json under an area (only one kind's if given), sorted by kind then name. */
  private async readAll<T>(area: string, kind?: string): Promise<T[]> {
    if (kind !== undefined) assertKind(kind);
    const kinds = kind !== undefined ? [kind] : (await listDir(path.join(this.dir, area))).filter((k) => KIND_RE.test(k)).sort();
    const files: string[] = [];
    for (const k of kinds) {
      const names = await listDir(path.join(this.dir, area, k));
      for (const n of names.sort()) {
        // Only real entries: temp files are dot-files and never match.
        if (n.endsWith('.json') && NAME_RE.test(n.slice(0, -5))) files.push(path.join(this.dir, area, k, n));
      }
    }
    const items = await mapLimit(files, READ_CONCURRENCY, (f) => readJsonFile<T>(f));
    return items.filter((x): x is T => x !== undefined);
  }

  /** Deletes temp files whose writer is dead (a live writer's rename must not find its temp file gone). */
  private async cleanTemps(): Promise<void> {
    const dirs = [this.dir, path.join(this.dir, 'leases')];
    for (const area of ['resources', 'status', 'drift']) {
      dirs.push(path.join(this.dir, area));
      for (const k of await listDir(path.join(this.dir, area))) if (KIND_RE.test(k)) dirs.push(path.join(this.dir, area, k));
    }
    await mapLimit(dirs, READ_CONCURRENCY, async (d) => {
      for (const n of await listDir(d)) {
        const pid = tempOwner(n);
        if (pid !== undefined && !processAlive(pid)) await fs.unlink(path.join(d, n)).catch(() => {});
      }
    });
  }
}

async function countLines(file: string): Promise<number> {
  const buf = await fs.readFile(file);
  let n = 0;
  for (let i = buf.indexOf(0x0a); i >= 0; i = buf.indexOf(0x0a, i + 1)) n++;
  return n;
}

// The embedded desired-state store: one state directory, one small JSON file per resource.
//
//   DIR/resources/<Kind>/<name>.json   the manifest as applied, its source and generation
//   DIR/status/<Kind>/<name>.json      conditions, observedGeneration, phase, controller fields
//   DIR/drift/<Kind>/<name>.json       drift records of one resource (open ones and recent healed ones)
//   DIR/events.log (+ events.log.1)    JSON lines, rotated when over maxEvents lines
//   DIR/lock, DIR/leases/<name>.lock   the write lock and long-held leases (see lock.ts)
//
//   DIR/requests/<ms>-<hex>.json        reconcile requests from the CLI to the daemon
//
// The inventory (what was applied, from where, for pruning) is the resources folder itself: each file
// carries its source (file, digest, signer), so it can never disagree with the manifests after a crash.
//
// Writing: every mutation takes the write lock itself (re-entrant), so two processes never interleave;
// callers group several mutations into one critical section with withLock.
//   - applyResources(items, {check}) stores a whole set of manifests in one locked section, running the
//     caller's cross-resource check against the store as it is under the lock (concurrent applies cannot
//     both pass a check that only one of them may pass); nothing of the set is stored if it fails.
//   - commit(batch) writes a pass's status patches, drift records, healed drift and events in ONE locked
//     section: each file written once (one fsync per file, one per directory) and one events.log append.
//     The engine should use it instead of one updateStatus/recordDrifts/appendEvent call per item: at
//     1,000 resources one lock round per item starves everyone else of the lock.
//
// Reading never takes the write lock: every file is replaced atomically (rename), so a reader sees the
// old or the new content and needs no lock. Every file read is shape-checked; a file that cannot be used
// (truncated, not JSON, wrong shape) is named in a CorruptStateError. Listings skip such a file with a
// warning (once per file and process) and keep serving the rest; status and drift are derived data, so an
// unusable one counts as absent and the next write replaces it. `markForDeletion` removes an unusable
// resource record outright (nothing could reconcile it), so `qwamos delete KIND/NAME` can clear it.
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { UserError, oneLine, printable } from '../errors.ts';
import type { API_VERSION, Kind } from '../resources/kinds.ts';
import type { Metadata } from '../resources/generated.ts';
import type { SpecByKind } from '../resources/types.ts';
import {
  DIR_MODE,
  FILE_MODE,
  ensureDir,
  fsyncDir,
  isErrno,
  listDir,
  randomHex,
  readJsonFile,
  removeFile,
  tempOwner,
  writeFileAtomic,
} from './atomic.ts';
import { mapLimit } from '../concurrency.ts';
import { FileLock, liveHolder, processAlive, release, tryAcquire } from './lock.ts';
import { CorruptStateError, driftProblem, eventProblem, requestProblem, resourceProblem, statusProblem } from './shapes.ts';

export { CorruptStateError } from './shapes.ts';

/** A manifest's metadata, as the schemas define it. */
export type ResourceMetadata = Metadata;

export interface ResourceSource {
  /** File the manifest was read from (or its path inside the git repository). */
  path: string;
  /** sha256 of the manifest file's bytes, hex. */
  digest: string;
  /** Git commit the manifest came from, when applied from git. */
  commit?: string;
  /** The trusted key whose signature was verified; absent when applied unsigned (--allow-unsigned). */
  signer?: { keyId: string; alg: string; name?: string };
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
  apiVersion: typeof API_VERSION;
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
export type ConditionType =
  | 'Ready' | 'Reconciling' | 'Stalled' | 'RestartRequired' | 'GpuUnavailable' | 'Paused'
  // A GitSource's (src/controllers/gitsource).
  | 'FetchFailed' | 'VerificationFailed' | 'RollbackRefused' | 'EmptyRefused'
  // A VirtualMachine's in a cluster (src/controllers/vm/placement.ts).
  | 'Placed' | 'Unschedulable' | 'FailedOver' | 'Fenced'
  // A GitSource's in a cluster (the agreed revision).
  | 'RevisionUnavailable'
  // A ClusterNode's (src/controllers/clusternode).
  | 'Joined' | 'SchedulingDisabled';
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
  /** Where warnings about unusable state files go (default: stderr as `warning: ...`). Each is given once. */
  warn?: (message: string) => void;
}

/** One apply of many manifests (see applyResources). */
export interface ApplyItem {
  manifest: Manifest;
  source: ResourceSource;
}

export interface AppliedItem {
  kind: string;
  name: string;
  result: ApplyResult;
  generation: number;
  /** appliedAt of the stored record: a status written for this apply is updated at or after it. */
  appliedAt: string;
}

/** Everything one engine pass (or many) writes, stored by commit() in one locked section. */
export interface StoreBatch {
  statuses?: { kind: string; name: string; patch: StatusPatch }[];
  /** Healed first: a pass that heals old drift and finds new drift records both, in that order. */
  resolveDrift?: { resource: string; field?: string }[];
  drifts?: { resource: string; diffs: { field: string; desired: string; actual: string }[]; policy: DriftPolicy }[];
  events?: { resource: string; type: EventType; reason: string; message: string }[];
}

export interface CommitResult {
  /** New status by 'Kind/name'. */
  statuses: Map<string, ResourceStatus>;
  /** The records written for each batch.drifts entry, by 'Kind/name'. */
  drifts: Map<string, DriftRecord[]>;
  /** How many open records were marked healed. */
  resolved: number;
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
  private readonly warnSink: (message: string) => void;
  /** Warnings already given, so a broken file is reported once, not on every listing. */
  private readonly warned = new Set<string>();

  private constructor(
    readonly dir: string,
    opts: StoreOptions,
  ) {
    this.lock = FileLock.for(path.join(dir, 'lock'));
    this.maxEvents = opts.maxEvents ?? 5000;
    this.lockTimeoutMs = opts.lockTimeoutMs ?? 30_000;
    this.warnSink = opts.warn ?? ((m) => void process.stderr.write(`warning: ${m}\n`));
  }

  /** Reports a problem with the state once per process and file (the sink gets one escaped line). */
  private warn(message: string, file: string = message): void {
    if (this.warned.has(file)) return;
    this.warned.add(file);
    try {
      this.warnSink(printable(message));
    } catch {
      // a closed stderr must not turn a warning into a failure
    }
  }

  /** Opens (creating if needed) the state directory and removes temp files abandoned by dead writers. */
  static async open(dir: string, opts: StoreOptions = {}): Promise<Store> {
    const root = path.resolve(dir);
    await ensureDir(root);
    const st = await fs.stat(root);
    const me = process.getuid?.();
    if ((st.mode & 0o777) !== DIR_MODE && st.uid === me) await fs.chmod(root, DIR_MODE);
    // Like sshd's StrictModes: whoever else could write the state dir could plant manifests, status or a
    // trust store in it.
    else if (me !== undefined && st.uid !== 0 && st.uid !== me) {
      throw new UserError(`refusing state directory ${printable(root)}: owned by uid ${st.uid}, not by root or the running user (uid ${me})`);
    } else if (me !== undefined && st.uid !== me && (st.mode & 0o022) !== 0) {
      const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
      throw new UserError(`refusing state directory ${printable(root)}: writable by group or others (mode ${mode}); fix with chmod 700 ${printable(root)}`);
    }
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
    const { result, generation } = await this.putOne(r, source);
    return { result, generation };
  }

  /** putResource, also telling the appliedAt of the stored record. */
  private async putOne(r: Manifest, source: ResourceSource): Promise<{ result: ApplyResult; generation: number; appliedAt: string }> {
    assertKind(r.kind);
    assertName(r.metadata?.name);
    if (typeof r.spec !== 'object' || r.spec === null || Array.isArray(r.spec)) {
      throw new UserError(`${r.kind}/${r.metadata.name}: spec must be an object`);
    }
    const file = this.resourceFile(r.kind, r.metadata.name);
    return this.mutate(file, async () => {
      // An unusable record is replaced by the manifest applied now.
      const old = await this.readResource(r.kind, r.metadata.name).catch((err) => {
        if (!(err instanceof CorruptStateError)) throw err;
        this.warn(`${err.message}; replaced by the manifest applied now`, `${err.file} (replaced)`);
        return undefined;
      });
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
      if (old && !changed && !old.deletionRequestedAt) {
        if (!isDeepStrictEqual(old.source, src)) await writeFileAtomic(file, toJson({ ...old, source: src }));
        return { result: 'unchanged', generation: old.generation, appliedAt: old.appliedAt };
      }
      // Applying a resource that is being deleted takes the deletion back. The generation moves too, so
      // the engine sees a new spec and starts a fresh pass (its deletion pass may be half done).
      const bump = specOrLabelsChanged || Boolean(old?.deletionRequestedAt);
      // The caller validated the manifest against its kind's schema (store files are shape-checked on read).
      const next = {
        apiVersion: r.apiVersion,
        kind: r.kind,
        metadata,
        spec,
        source: src,
        generation: !old ? 1 : bump ? old.generation + 1 : old.generation,
        appliedAt: now(),
        ...(old?.suspended ? { suspended: true } : {}), // suspension is a user action, not part of the manifest
      };
      await ensureDir(path.dirname(file));
      await writeFileAtomic(file, toJson(next));
      return { result: old && !old.deletionRequestedAt ? 'configured' : 'created', generation: next.generation, appliedAt: next.appliedAt };
    });
  }

  /**
   * Stores a set of manifests as one apply, in one locked section. `check` runs first, under the lock,
   * with the resources stored at that moment; if it throws, nothing of the set is stored and the error
   * is passed on. `prune` (also under the lock) picks stored resources to mark for deletion.
   */
  async applyResources(
    items: ApplyItem[],
    opts: {
      check?: (stored: StoredResource[]) => void | Promise<void>;
      prune?: (stored: StoredResource[]) => { kind: string; name: string }[];
    } = {},
  ): Promise<{ applied: AppliedItem[]; pruned: { kind: string; name: string }[] }> {
    return this.withLock(async () => {
      const stored = opts.check || opts.prune ? await this.listResources() : [];
      await opts.check?.(stored);
      const applied: AppliedItem[] = [];
      for (const { manifest, source } of items) {
        const res = await this.putOne(manifest, source);
        applied.push({ kind: manifest.kind, name: manifest.metadata.name, ...res });
      }
      const pruned: { kind: string; name: string }[] = [];
      for (const p of opts.prune?.(stored) ?? []) {
        if (await this.markForDeletion(p.kind, p.name)) pruned.push(p);
      }
      return { applied, pruned };
    });
  }

  /** A stored resource, or undefined; throws a CorruptStateError naming the file if it cannot be used. */
  async getResource(kind: string, name: string): Promise<StoredResource | undefined> {
    return this.readResource(kind, name);
  }

  private async readResource(kind: string, name: string): Promise<StoredResource | undefined> {
    const file = this.resourceFile(kind, name);
    return checked(file, await readJsonFile<unknown>(file), (v) => resourceProblem(v, kind, name)) as StoredResource | undefined;
  }

  /** All stored resources (of one kind if given), sorted by kind then name; unusable files are skipped with a warning. */
  async listResources(kind?: string): Promise<StoredResource[]> {
    return this.readAll('resources', kind, (v, k, n) => resourceProblem(v, k, n)) as Promise<StoredResource[]>;
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
   * ifDeletionRequestedAt (the tombstone a deletion pass acted on), only if the record still carries
   * exactly that tombstone: a resource applied again meanwhile is kept (and false returned).
   */
  async deleteResource(kind: string, name: string, opts: { ifDeletionRequestedAt?: string } = {}): Promise<boolean> {
    const file = this.resourceFile(kind, name);
    return this.mutate(file, async () => {
      if (opts.ifDeletionRequestedAt !== undefined) {
        const current = await this.readResource(kind, name).catch(() => undefined);
        if (current?.deletionRequestedAt !== opts.ifDeletionRequestedAt) return false;
      }
      // Status and drift first: a crash in between leaves the resource (the delete was not acknowledged),
      // never status without a resource.
      await removeFile(this.statusFile(kind, name));
      await removeFile(this.driftFile(kind, name));
      return removeFile(file);
    });
  }

  /**
   * deleteResource for many records in ONE locked section: each directory fsynced once, not once per
   * file (deleting a thousand resources one by one spent most of its time in fsync). In order, whether
   * each was removed.
   */
  async deleteResources(items: readonly { kind: string; name: string; ifDeletionRequestedAt?: string }[]): Promise<boolean[]> {
    if (items.length === 0) return [];
    return this.withLock(async () => {
      const stillTombstoned = async (kind: string, name: string, at: string | undefined) =>
        at === undefined || (await this.readResource(kind, name).catch(() => undefined))?.deletionRequestedAt === at;
      // Status and drift first, made durable before any record goes (see deleteResource): a crash
      // never leaves status without a resource. A record applied again meanwhile keeps its record.
      const dirs = new Set<string>();
      const go: boolean[] = [];
      for (const { kind, name, ifDeletionRequestedAt } of items) {
        go.push(
          await this.queued(this.resourceFile(kind, name), async () => {
            if (!(await stillTombstoned(kind, name, ifDeletionRequestedAt))) return false;
            for (const f of [this.statusFile(kind, name), this.driftFile(kind, name)]) {
              if (await removeFile(f, { syncDir: false })) dirs.add(path.dirname(f));
            }
            return true;
          }),
        );
      }
      for (const dir of dirs) await fsyncDir(dir);
      dirs.clear();
      const removed: boolean[] = [];
      for (const [i, { kind, name, ifDeletionRequestedAt }] of items.entries()) {
        const file = this.resourceFile(kind, name);
        removed.push(
          go[i]! &&
            (await this.queued(file, async () => {
              if (!(await stillTombstoned(kind, name, ifDeletionRequestedAt))) return false;
              const gone = await removeFile(file, { syncDir: false });
              if (gone) dirs.add(path.dirname(file));
              return gone;
            })),
        );
      }
      for (const dir of dirs) await fsyncDir(dir);
      return removed;
    });
  }

  async setSuspended(kind: string, name: string, suspended: boolean): Promise<void> {
    const file = this.resourceFile(kind, name);
    await this.mutate(file, async () => {
      const r = await this.readResource(kind, name);
      if (!r) throw new UserError(`${kind}/${name} not found`);
      if ((r.suspended ?? false) === suspended) return;
      const { suspended: _, ...rest } = r;
      await writeFileAtomic(file, toJson(suspended ? { ...rest, suspended: true } : rest));
    });
  }

  /**
   * Marks a resource for deletion (a tombstone the engine acts on): 'marked', or false when it does not
   * exist. A record that cannot be read is removed at once with its status and drift ('removed'): no
   * controller can act on it, and otherwise nothing could ever clear it.
   */
  async markForDeletion(kind: string, name: string): Promise<'marked' | 'removed' | false> {
    return (await this.markManyForDeletion([{ kind, name }]))[0]!;
  }

  /**
   * markForDeletion for many records in ONE locked section, each directory fsynced once (not once per
   * record: `delete -f` of a thousand resources spent seconds on it). In order, what happened to each.
   */
  async markManyForDeletion(items: readonly { kind: string; name: string }[]): Promise<('marked' | 'removed' | false)[]> {
    if (items.length === 0) return [];
    return this.withLock(async () => {
      const dirs = new Set<string>();
      const outcomes: ('marked' | 'removed' | false)[] = [];
      for (const { kind, name } of items) {
        const file = this.resourceFile(kind, name);
        outcomes.push(
          await this.queued(file, async () => {
            let r: StoredResource | undefined;
            try {
              r = await this.readResource(kind, name);
            } catch (err) {
              if (!(err instanceof CorruptStateError)) throw err;
              await removeFile(this.statusFile(kind, name));
              await removeFile(this.driftFile(kind, name));
              await removeFile(file);
              return 'removed';
            }
            if (!r) return false;
            if (!r.deletionRequestedAt) {
              await writeFileAtomic(file, toJson({ ...r, deletionRequestedAt: now() }), { syncDir: false });
              dirs.add(path.dirname(file));
            }
            return 'marked';
          }),
        );
      }
      for (const dir of dirs) await fsyncDir(dir);
      return outcomes;
    });
  }

  // ---- reconcile requests (CLI -> daemon) --------------------------------------------------------

  /** Asks the running controller to reconcile these keys (all when empty). */
  async requestReconcile(keys: string[]): Promise<void> {
    const dir = path.join(this.dir, 'requests');
    await ensureDir(dir);
    const file = path.join(dir, `${Date.now()}-${randomHex(4)}.json`);
    await writeFileAtomic(file, toJson({ keys }));
  }

  /**
   * Takes (reads and removes) pending reconcile requests; `[]` in the result means everything. A request
   * that cannot be read is dropped with a warning: left in place it would block every later one.
   */
  async takeRequests(): Promise<string[][]> {
    const dir = path.join(this.dir, 'requests');
    const names = (await listDir(dir)).filter((n) => n.endsWith('.json') && !n.startsWith('.'));
    const out: string[][] = [];
    for (const name of names.sort()) {
      const file = path.join(dir, name);
      let req: { keys: string[] } | undefined;
      try {
        req = checked(file, await readJsonFile<unknown>(file), requestProblem) as { keys: string[] } | undefined;
      } catch (err) {
        this.warn(`${oneLine(err)}; dropped it`, file);
      }
      await removeFile(file);
      if (req) out.push(req.keys);
    }
    return out;
  }

  // ---- status -----------------------------------------------------------------------------------

  /** A resource's status; an unusable status file counts as absent (it is derived data, rebuilt by the next pass). */
  async getStatus(kind: string, name: string): Promise<ResourceStatus | undefined> {
    return this.readStatus(kind, name);
  }

  private async readStatus(kind: string, name: string): Promise<ResourceStatus | undefined> {
    const file = this.statusFile(kind, name);
    try {
      return checked(file, await readJsonFile<unknown>(file), (v) => statusProblem(v, kind, name)) as ResourceStatus | undefined;
    } catch (err) {
      if (!(err instanceof CorruptStateError)) throw err;
      this.warn(`${err.message}; treated as absent (the next status write replaces it)`, err.file);
      return undefined;
    }
  }

  async listStatuses(kind?: string): Promise<ResourceStatus[]> {
    return this.readAll('status', kind, (v, k, n) => statusProblem(v, k, n)) as Promise<ResourceStatus[]>;
  }

  /**
   * Merges a patch into a resource's status. Conditions merge by type; a condition whose status did not
   * change keeps its lastTransitionTime. Nothing is written when nothing changed.
   */
  async updateStatus(kind: string, name: string, patch: StatusPatch): Promise<ResourceStatus> {
    assertKind(kind);
    assertName(name);
    const file = this.statusFile(kind, name);
    return this.mutate(file, async () => {
      const old = await this.readStatus(kind, name);
      const next = mergeStatus(old, kind, name, patch, now());
      if (!next) return old!;
      await ensureDir(path.dirname(file));
      await this.writeStateFile(file, toJson(next));
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
    await this.appendEvents([e]);
  }

  /** Appends events with one write and one datasync (see appendEvent). */
  private async appendEvents(list: { resource: string; type: EventType; reason: string; message: string }[]): Promise<void> {
    await this.withLock(() => this.writeEvents(list));
  }

  /** appendEvents for a caller that holds the write lock. */
  private async writeEvents(list: { resource: string; type: EventType; reason: string; message: string }[]): Promise<void> {
    if (list.length === 0) return;
    const file = path.join(this.dir, 'events.log');
    const t = now();
    const events: StoreEvent[] = list.map((e) => ({
      time: t,
      resource: String(e.resource),
      type: e.type,
      reason: String(e.reason),
      message: String(e.message).slice(0, MAX_MESSAGE),
    }));
    await this.queued(file, async () => {
      const fh = await fs.open(file, constants.O_RDWR | constants.O_CREAT | constants.O_APPEND, FILE_MODE);
      let size: number;
      try {
        const before = await fh.stat();
        // A torn last line (power loss mid-append) would swallow this event; start on a fresh line.
        let text = events.map((e) => JSON.stringify(e) + '\n').join('');
        if (before.size > 0) {
          const last = Buffer.alloc(1);
          await fh.read(last, 0, 1, before.size - 1);
          if (last[0] !== 0x0a) text = '\n' + text;
        }
        await fh.write(text);
        await fh.datasync();
        if (before.size === 0) await fsyncDir(this.dir); // the file may be new: make its name durable too
        size = before.size + Buffer.byteLength(text);
        const seen = this.eventsSeen;
        // Someone else (another process) appended since we last counted: count again.
        this.eventsSeen =
          seen && seen.size === before.size ? { size, lines: seen.lines + events.length } : { size, lines: await countLines(file) };
      } catch (err) {
        throw new UserError(`cannot append to ${printable(file)}: ${oneLine(err)}`);
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
        let ev: unknown;
        try {
          ev = JSON.parse(line);
        } catch {
          continue; // a torn line from a crash
        }
        if (eventProblem(ev)) continue; // not written by us: nothing a reader could show
        if (filter.resource === undefined || (ev as StoreEvent).resource === filter.resource) events.push(ev as StoreEvent);
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
      const records = await this.readDrift(kind, name);
      const out = mergeDrifts(records, `${kind}/${name}`, diffs, policy, now());
      await this.writeDrift(file, records);
      return out;
    });
  }

  /** Marks a resource's open records (only those for field, if given) healed; returns how many. */
  async resolveDrift(resource: string, field?: string): Promise<number> {
    const { kind, name } = parseRef(resource);
    const file = this.driftFile(kind, name);
    return this.mutate(file, async () => {
      const records = await this.readDrift(kind, name);
      const count = healDrifts(records, field, now());
      if (count) await this.writeDrift(file, records);
      return count;
    });
  }

  /** Drift records, oldest detection first. */
  async listDrift(filter: { state?: 'open' | 'healed'; resource?: string } = {}): Promise<DriftRecord[]> {
    let records: DriftRecord[];
    if (filter.resource !== undefined) {
      const { kind, name } = parseRef(filter.resource);
      records = await this.readDrift(kind, name);
    } else {
      const lists = (await this.readAll('drift', undefined, (v, k, n) => driftProblem(v, `${k}/${n}`))) as DriftRecord[][];
      records = lists.flat();
    }
    return records
      .filter((r) => filter.state === undefined || r.state === filter.state)
      .sort((a, b) => a.detectedAt.localeCompare(b.detectedAt));
  }

  /** A resource's drift history; one that cannot be read counts as empty (reported once) and is rewritten by the next record. */
  private async readDrift(kind: string, name: string): Promise<DriftRecord[]> {
    const file = this.driftFile(kind, name);
    try {
      return (checked(file, await readJsonFile<unknown>(file), (v) => driftProblem(v, `${kind}/${name}`)) as DriftRecord[] | undefined) ?? [];
    } catch (err) {
      if (!(err instanceof CorruptStateError)) throw err;
      this.warn(`${err.message}; drift history treated as empty`, err.file);
      return [];
    }
  }

  private async writeDrift(file: string, records: DriftRecord[], opts: { syncDir?: boolean } = {}): Promise<void> {
    // Keep every open record and only the most recent healed ones.
    const healed = records.filter((r) => r.state === 'healed');
    const drop = new Set(healed.slice(0, Math.max(0, healed.length - HEALED_KEPT)));
    await ensureDir(path.dirname(file));
    await this.writeStateFile(file, toJson(records.filter((r) => !drop.has(r))), opts);
  }

  // ---- batches ----------------------------------------------------------------------------------

  /**
   * Writes status patches, healed drift, new drift records and events in ONE locked section: each status
   * and drift file is read and written once (patches for the same file are merged in order), each
   * directory fsynced once, and all events appended with one write. See the header comment.
   * A failed write rejects naming the file; files written before it stay written (each is atomic).
   */
  async commit(batch: StoreBatch): Promise<CommitResult> {
    const result: CommitResult = { statuses: new Map(), drifts: new Map(), resolved: 0 };
    const statusRefs = (batch.statuses ?? []).map((s) => ({ ...s, ref: `${s.kind}/${s.name}`, file: this.statusFile(s.kind, s.name) }));
    const driftRefs = [...(batch.resolveDrift ?? []), ...(batch.drifts ?? [])].map((d) => ({ ...parseRef(d.resource), d }));
    const t = now();
    await this.withLock(async () => {
      const dirs = new Set<string>();
      // Status: merge every patch of one resource, then write the file once.
      const statusByRef = new Map<string, { kind: string; name: string; file: string; old?: ResourceStatus; next?: ResourceStatus }>();
      for (const s of statusRefs) {
        let entry = statusByRef.get(s.ref);
        if (!entry) {
          const old = await this.readStatus(s.kind, s.name);
          entry = { kind: s.kind, name: s.name, file: s.file, ...(old ? { old } : {}) };
          statusByRef.set(s.ref, entry);
        }
        const base = entry.next ?? entry.old;
        const next = mergeStatus(base, s.kind, s.name, s.patch, t);
        if (next) entry.next = next;
        result.statuses.set(s.ref, next ?? base!);
      }
      for (const e of statusByRef.values()) {
        if (!e.next) continue;
        await ensureDir(path.dirname(e.file));
        await this.writeStateFile(e.file, toJson(e.next), { syncDir: false });
        dirs.add(path.dirname(e.file));
      }
      // Drift: heal first, then record, one read and one write per resource.
      const driftByRef = new Map<string, { file: string; records: DriftRecord[]; changed: boolean }>();
      for (const { kind, name, d } of driftRefs) {
        const ref = `${kind}/${name}`;
        let entry = driftByRef.get(ref);
        if (!entry) {
          entry = { file: this.driftFile(kind, name), records: await this.readDrift(kind, name), changed: false };
          driftByRef.set(ref, entry);
        }
        if ('diffs' in d) {
          const written = mergeDrifts(entry.records, ref, d.diffs, d.policy, t);
          result.drifts.set(ref, [...(result.drifts.get(ref) ?? []), ...written]);
          entry.changed ||= written.length > 0;
        } else {
          const healed = healDrifts(entry.records, d.field, t);
          result.resolved += healed;
          entry.changed ||= healed > 0;
        }
      }
      for (const e of driftByRef.values()) {
        if (!e.changed) continue;
        await this.writeDrift(e.file, e.records, { syncDir: false });
        dirs.add(path.dirname(e.file));
      }
      for (const dir of dirs) await fsyncDir(dir);
      await this.writeEvents(batch.events ?? []);
    });
    return result;
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
    return this.withLock(() => this.queued(key, fn));
  }

  /** Runs fn after every earlier queued call for key in this process (the caller holds the write lock). */
  private queued<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.queues.get(key) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.catch(() => {});
    this.queues.set(key, tail);
    void tail.then(() => {
      if (this.queues.get(key) === tail) this.queues.delete(key);
    });
    return run;
  }

  /** Writes a state file atomically; a failure rejects with a one-line error naming the file. */
  private async writeStateFile(file: string, data: string, opts: { syncDir?: boolean } = {}): Promise<void> {
    try {
      await writeFileAtomic(file, data, opts);
    } catch (err) {
      throw new UserError(`cannot write ${printable(file)}: ${oneLine(err)}`);
    }
  }

  /**
   * Reads every <Kind>/<name>.json under an area (only one kind's if given), sorted by kind then name.
   * A file that cannot be used is skipped with a warning naming it: one bad file must not hide the rest.
   */
  private async readAll(area: string, kind: string | undefined, problem: (v: unknown, kind: string, name: string) => string | undefined): Promise<unknown[]> {
    if (kind !== undefined) assertKind(kind);
    const kinds = kind !== undefined ? [kind] : (await listDir(path.join(this.dir, area))).filter((k) => KIND_RE.test(k)).sort();
    const files: { file: string; kind: string; name: string }[] = [];
    for (const k of kinds) {
      const names = await listDir(path.join(this.dir, area, k));
      for (const n of names.sort()) {
        // Only real entries: temp files are dot-files and never match.
        if (n.endsWith('.json') && NAME_RE.test(n.slice(0, -5))) files.push({ file: path.join(this.dir, area, k, n), kind: k, name: n.slice(0, -5) });
      }
    }
    const items = await mapLimit(files, READ_CONCURRENCY, async (f) => {
      try {
        return checked(f.file, await readJsonFile<unknown>(f.file), (v) => problem(v, f.kind, f.name));
      } catch (err) {
        if (!(err instanceof CorruptStateError)) throw err;
        this.warn(`${err.message}; skipped (${area === 'resources' ? `remove it with: qwamos delete ${f.kind}/${f.name}` : 'rebuilt by the next write'})`, err.file);
        return undefined;
      }
    });
    return items.filter((x) => x !== undefined);
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

/** The value, unless problem() finds it of the wrong shape: then a CorruptStateError naming the file. */
function checked(file: string, value: unknown, problem: (v: unknown) => string | undefined): unknown {
  if (value === undefined) return undefined;
  const why = problem(value);
  if (why) throw new CorruptStateError(file, why);
  return value;
}

/**
 * A status with the patch merged in, or undefined when nothing changes. Conditions merge by type; a
 * condition whose status did not change keeps its lastTransitionTime.
 */
function mergeStatus(old: ResourceStatus | undefined, kind: string, name: string, patch: StatusPatch, t: string): ResourceStatus | undefined {
  const conditions = [...(old?.conditions ?? [])];
  for (const c of patch.conditions ?? []) {
    const i = conditions.findIndex((x) => x.type === c.type);
    const prev = conditions[i];
    const lastTransitionTime = prev && prev.status === c.status ? prev.lastTransitionTime : (c.lastTransitionTime ?? t);
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
  if (old && isDeepStrictEqual({ ...old, updatedAt: t }, next)) return undefined;
  return next;
}

/** Adds or updates (one open record per field) records in place; returns the records touched. */
function mergeDrifts(records: DriftRecord[], resource: string, diffs: { field: string; desired: string; actual: string }[], policy: DriftPolicy, t: string): DriftRecord[] {
  const out: DriftRecord[] = [];
  for (const d of diffs) {
    let rec = records.find((r) => r.state === 'open' && r.field === d.field);
    if (rec) {
      Object.assign(rec, { desired: d.desired, actual: d.actual, policy, lastSeenAt: t, count: rec.count + 1 });
    } else {
      rec = {
        id: randomHex(6),
        resource,
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
  return out;
}

/** Marks open records (of one field, if given) healed in place; returns how many. */
function healDrifts(records: DriftRecord[], field: string | undefined, t: string): number {
  let count = 0;
  for (const r of records) {
    if (r.state === 'open' && (field === undefined || r.field === field)) {
      r.state = 'healed';
      r.healedAt = t;
      count++;
    }
  }
  return count;
}

async function countLines(file: string): Promise<number> {
  const buf = await fs.readFile(file);
  let n = 0;
  for (let i = buf.indexOf(0x0a); i >= 0; i = buf.indexOf(0x0a, i + 1)) n++;
  return n;
}

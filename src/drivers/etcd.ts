// A small etcd v3 driver over the `etcd3` client: leases (grant, one keepalive with a deadline, time to
// live, revoke), reads of a key or a prefix at one revision, and transactions guarded by compares. It
// knows nothing of kinds, nodes or VMs. Lease ids are etcd's int64 as decimal strings.
//
// The client's own lease object is not used: it cannot re-attach to a lease granted by an earlier process,
// and its `lost` event fires only ~2×TTL after the last good keepalive (measured), too late to fence on.
import { Etcd3, type IKeyValue, type ICompare, type IOptions, type IRequestOp } from 'etcd3';

export interface EtcdEntry {
  key: string;
  value: string;
  createRevision: string;
  modRevision: string;
  /** The lease the key is bound to ('0' for none). */
  lease: string;
}

/** One change seen by a watch: on a delete, `entry` carries only the key and the deleting revision. */
export interface EtcdChange {
  type: 'put' | 'delete';
  entry: EtcdEntry;
  /** The key's value before the change (etcd's prev_kv), when etcd still had it. */
  previous?: EtcdEntry;
}

/** A condition of a transaction on one key. */
export type EtcdGuard =
  | { key: string; absent: true }
  | { key: string; lease: string }
  | { key: string; createRevision: string }
  | { key: string; modRevision: string };

export type EtcdOp =
  | { put: string; value: string; lease?: string }
  | { delete: string };

export interface EtcdOptions {
  /** Deadline of each unary call (ms). */
  callTimeoutMs?: number;
  /** How long connecting may take (ms). */
  dialTimeoutMs?: number;
}

export class EtcdUnavailableError extends Error {}

export class EtcdClient {
  private readonly client: Etcd3;
  private readonly callTimeoutMs: number;
  private readonly dialTimeoutMs: number;
  /**
   * One client per member for keepalives, all asked at once (the first answer counts): the pooled client
   * can stay on a member that cannot answer in time (one still forwarding to a dead leader), and a
   * keepalive has only until the lease deadline.
   */
  private readonly keepaliveClients: Etcd3[] = [];

  constructor(readonly endpoints: readonly string[], opts: EtcdOptions = {}) {
    if (endpoints.length === 0) throw new Error('no etcd endpoint given');
    this.callTimeoutMs = opts.callTimeoutMs ?? 2000;
    this.dialTimeoutMs = opts.dialTimeoutMs ?? 2000;
    this.client = new Etcd3({
      hosts: [...endpoints],
      dialTimeout: this.dialTimeoutMs,
      // No per-member circuit breaker (see PassThrough): under load or during an election it refused every
      // call to a member for 5 s after three slow ones. The pool's retry on another member stays.
      faultHandling: { host: () => new PassThrough() },
      // Streams (keepalive) carry their own deadline; unary calls get this one.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + this.callTimeoutMs }),
    });
  }

  /** A new lease of `ttlSeconds` (etcd raises TTLs below its minimum, 2 s here). */
  async grantLease(ttlSeconds: number): Promise<{ id: string; ttl: number }> {
    const res = await this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 });
    return { id: String(res.ID), ttl: Number(res.TTL) };
  }

  /** Remaining and granted TTL of a lease, or undefined when etcd no longer knows it (expired, revoked). */
  async leaseTimeToLive(id: string): Promise<{ ttl: number; grantedTtl: number } | undefined> {
    const res = await this.client.leaseClient.leaseTimeToLive({ ID: id, keys: false });
    const ttl = Number(res.TTL);
    if (ttl <= 0) return undefined;
    return { ttl, grantedTtl: Number(res.grantedTTL) };
  }

  /**
   * One keepalive, answered within `timeoutMs` or rejected (also once `signal` aborts). Resolves to the TTL
   * etcd renewed the lease to, 0 when the lease is gone (expired or revoked: it cannot come back).
   */
  async keepaliveOnce(id: string, timeoutMs: number, signal?: AbortSignal): Promise<number> {
    const clients = this.endpoints.map(
      (host, i) => (this.keepaliveClients[i] ??= new Etcd3({ hosts: [host], dialTimeout: this.dialTimeoutMs, faultHandling: { host: () => new PassThrough(), global: new PassThrough() } })),
    );
    try {
      return await Promise.any(clients.map((c) => this.keepaliveVia(c, id, timeoutMs, signal)));
    } catch (err) {
      // The most telling failure: one from a member that answered (not one that is simply down).
      if (!(err instanceof AggregateError)) throw err;
      throw err.errors.find((e) => !/ECONNREFUSED|No connection established/.test(String((e as Error)?.message))) ?? err.errors[0];
    }
  }

  private async keepaliveVia(client: Etcd3, id: string, timeoutMs: number, signal?: AbortSignal): Promise<number> {
    const deadline = new Date(Date.now() + timeoutMs);
    const stream = await withTimeout(client.leaseClient.leaseKeepAlive({ deadline }), timeoutMs, 'opening a keepalive stream', signal);
    try {
      const res = await withTimeout(
        new Promise<{ TTL: string }>((resolve, reject) => {
          stream.on('data', resolve);
          stream.on('error', reject);
          stream.on('end', () => reject(new EtcdUnavailableError('keepalive stream ended without an answer')));
          stream.write({ ID: id });
        }),
        timeoutMs,
        'a keepalive answer',
        signal,
      );
      return Math.max(0, Number(res.TTL));
    } finally {
      // Swallow the cancellation error the stream emits once nobody listens. Ended first: the client counts
      // an error on a still writable stream as a failure of the member (it then closes its connection and,
      // after three in a row, refuses all calls to it for 5 s).
      stream.on('error', () => {});
      stream.end();
      stream.cancel();
    }
  }

  async revokeLease(id: string): Promise<void> {
    try {
      await this.client.leaseClient.leaseRevoke({ ID: id });
    } catch (err) {
      // Already gone: nothing to revoke.
      if (!/not found/i.test(String((err as Error)?.message))) throw err;
    }
  }

  async get(key: string): Promise<EtcdEntry | undefined> {
    const res = await this.client.kv.range({ key: Buffer.from(key) });
    return res.kvs[0] ? entryOf(res.kvs[0]) : undefined;
  }

  /**
   * Every key under `prefix`, all read at one revision (returned with them): the current one, or `atRevision`
   * (to read several prefixes as of one moment).
   */
  async list(prefix: string, atRevision?: string): Promise<{ revision: string; entries: EtcdEntry[] }> {
    const res = await this.client.kv.range({
      key: Buffer.from(prefix),
      range_end: prefixEnd(Buffer.from(prefix)),
      ...(atRevision !== undefined ? { revision: atRevision } : {}),
    });
    return { revision: atRevision ?? String(res.header.revision), entries: res.kvs.map(entryOf) };
  }

  /**
   * Applies `ops` in one transaction if every guard holds. Resolves to whether it did, and the store
   * revision after it (on success: the revision the writes were made at, the create revision of new keys).
   */
  async txn(guards: readonly EtcdGuard[], ops: readonly EtcdOp[]): Promise<{ succeeded: boolean; revision: string }> {
    const res = await this.client.kv.txn({ compare: guards.map(compareOf), success: ops.map(requestOf), failure: [] });
    return { succeeded: res.succeeded, revision: String(res.header.revision) };
  }

  async put(key: string, value: string, lease?: string): Promise<string> {
    const res = await this.client.kv.put({ key: Buffer.from(key), value: Buffer.from(value), ...(lease ? { lease } : {}) });
    return String(res.header.revision);
  }

  /**
   * Follows every change under `prefix` (puts and deletes, with the key's previous value on a delete) until
   * closed. The client re-connects a broken watch by itself and resumes where it left off.
   */
  async watchPrefix(prefix: string, onChange: (change: EtcdChange) => void, onError?: (err: Error) => void): Promise<{ close(): Promise<void> }> {
    const watcher = await this.client.watch().prefix(prefix).withPreviousKV().create();
    watcher.on('put', (kv, prev) => onChange({ type: 'put', entry: entryOf(kv), ...(prev ? { previous: entryOf(prev) } : {}) }));
    watcher.on('delete', (kv, prev) => onChange({ type: 'delete', entry: entryOf(kv), ...(prev ? { previous: entryOf(prev) } : {}) }));
    watcher.on('error', (err) => onError?.(err));
    watcher.on('disconnected', (err) => onError?.(err));
    return { close: () => watcher.cancel() };
  }

  async delete(key: string): Promise<void> {
    await this.client.kv.deleteRange({ key: Buffer.from(key) });
  }

  close(): void {
    this.client.close();
    for (const c of this.keepaliveClients) c?.close();
  }
}

type FaultPolicy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/**
 * No circuit breaker and no retries: the client's default opens a member's breaker for 5 s after three
 * failed calls in a row (refusing every call meanwhile), and keepalives make their own retries against a
 * deadline. During a leader election that breaker made a node miss its lease deadline.
 */
class PassThrough implements FaultPolicy {
  declare readonly _altReturn: never;
  readonly onSuccess = () => ({ dispose() {} });
  readonly onFailure = () => ({ dispose() {} });
  async execute<T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T, signal?: AbortSignal): Promise<T> {
    return fn({ signal: signal ?? new AbortController().signal });
  }
}

function entryOf(kv: IKeyValue): EtcdEntry {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    createRevision: String(kv.create_revision),
    modRevision: String(kv.mod_revision),
    lease: String(kv.lease ?? '0'),
  };
}

function compareOf(guard: EtcdGuard): ICompare {
  const key = Buffer.from(guard.key);
  if ('absent' in guard) return { key, target: 'Create', result: 'Equal', create_revision: 0 };
  if ('lease' in guard) return { key, target: 'Lease', result: 'Equal', lease: guard.lease };
  if ('modRevision' in guard) return { key, target: 'Mod', result: 'Equal', mod_revision: guard.modRevision };
  return { key, target: 'Create', result: 'Equal', create_revision: guard.createRevision };
}

function requestOf(op: EtcdOp): IRequestOp {
  if ('delete' in op) return { request_delete_range: { key: Buffer.from(op.delete) } };
  return { request_put: { key: Buffer.from(op.put), value: Buffer.from(op.value), ...(op.lease ? { lease: op.lease } : {}) } };
}

/** The first key after every key that starts with `prefix` (etcd's range_end for a prefix). */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

/** `promise`, or a rejection after `ms` or once `signal` aborts (whichever comes first). */
async function withTimeout<T>(promise: Promise<T>, ms: number, what: string, signal?: AbortSignal): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new EtcdUnavailableError(`etcd did not answer ${what} within ${ms} ms`)), ms);
        onAbort = () => reject(new EtcdUnavailableError(`${what}: no longer needed`));
        if (signal?.aborted) onAbort();
        else signal?.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener('abort', onAbort);
  }
}

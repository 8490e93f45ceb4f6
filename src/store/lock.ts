// Inter-process locks on the state directory: a lock file created with O_EXCL that names its holder
// (pid, the process's start time, when acquired, a random token). A holder whose pid is gone, or whose pid
// now belongs to a different process (start time differs), is stale and its lock is taken over.
// Used both for the short write lock (withLock) and for long-held leases (the reconciler daemon).
import { AsyncLocalStorage } from 'node:async_hooks';
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { UserError } from '../errors.ts';
import { FILE_MODE, isErrno, randomHex } from './atomic.ts';
import { processAlive, processStartTime } from '../proc.ts';

export { processAlive, processStartTime };

export interface LockHolder {
  pid: number;
  /** Start time of the holder process (clock ticks since boot, from /proc), to detect pid reuse. */
  processStart?: string;
  acquiredAt: string;
  token: string;
}

/** An empty lock file older than this was abandoned between its creation and the write of its content. */
const EMPTY_GRACE_MS = 5000;

export class LockTimeoutError extends UserError {
  override name = 'LockTimeoutError';
  constructor(
    readonly file: string,
    readonly holderPid: number | undefined,
    timeoutMs: number,
  ) {
    super(
      `timed out after ${timeoutMs} ms waiting for lock ${file}: ` +
        (holderPid ? `held by process ${holderPid}${holderPid === process.pid ? ' (this process)' : ''}` : 'held by another process'),
    );
  }
}

const ownStart = processStartTime(process.pid);

interface Seen {
  holder?: LockHolder;
  raw: string;
  ino: number;
  mtimeMs: number;
}

async function readLock(file: string): Promise<Seen | undefined> {
  try {
    const [st, raw] = await Promise.all([fs.stat(file), fs.readFile(file, 'utf8')]);
    let holder: LockHolder | undefined;
    try {
      const parsed = JSON.parse(raw) as LockHolder;
      // Only a well-formed holder counts; anything else is judged by the file's age, like a torn one.
      if (
        Number.isInteger(parsed?.pid) &&
        parsed.pid > 0 &&
        typeof parsed.acquiredAt === 'string' &&
        typeof parsed.token === 'string' &&
        (parsed.processStart === undefined || typeof parsed.processStart === 'string')
      ) holder = parsed;
    } catch {
      // empty or torn: judged by age in isStale
    }
    return { holder, raw, ino: st.ino, mtimeMs: st.mtimeMs };
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
}

function isStale(seen: Seen): boolean {
  if (!seen.holder) return Date.now() - seen.mtimeMs > EMPTY_GRACE_MS;
  return !processAlive(seen.holder.pid, seen.holder.processStart);
}

async function tryCreate(file: string): Promise<LockHolder | undefined> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, FILE_MODE);
  } catch (err) {
    if (isErrno(err, 'EEXIST')) return undefined;
    throw err;
  }
  const holder: LockHolder = {
    pid: process.pid,
    processStart: ownStart,
    acquiredAt: new Date().toISOString(),
    token: randomHex(8),
  };
  try {
    await fh.writeFile(JSON.stringify(holder) + '\n');
  } finally {
    await fh.close();
  }
  return holder;
}

/**
 * Removes a stale lock, but only the one we judged stale. Without the guard, two waiters could both see
 * the stale file, and the slower one would delete the lock the faster one had just created.
 */
async function breakStale(file: string, seen: Seen): Promise<void> {
  const guard = `${file}.break`;
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(guard, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, FILE_MODE);
  } catch (err) {
    if (!isErrno(err, 'EEXIST')) throw err;
    // Breaking takes microseconds; an old guard was left by a breaker that died.
    const st = await fs.stat(guard).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > EMPTY_GRACE_MS) await fs.unlink(guard).catch(() => {});
    return;
  }
  try {
    const now = await readLock(file);
    if (now && now.ino === seen.ino && now.raw === seen.raw) await fs.unlink(file).catch(() => {});
  } finally {
    await fh.close();
    await fs.unlink(guard).catch(() => {});
  }
}

/** One attempt to take the lock file: our holder record, or null while a live process holds it. */
export async function tryAcquire(file: string): Promise<LockHolder | null> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const mine = await tryCreate(file);
    if (mine) return mine;
    const seen = await readLock(file);
    if (!seen) continue; // released in between
    if (!isStale(seen)) return null;
    await breakStale(file, seen);
  }
  return null;
}

/** Removes the lock file if it is still ours (a token mismatch means it was taken from us; leave it). */
export async function release(file: string, holder: LockHolder): Promise<void> {
  const seen = await readLock(file);
  if (seen?.holder?.token === holder.token) await fs.unlink(file).catch(() => {});
}

/** The live holder of a lock file, or undefined if it is free or held by a dead process. */
export async function liveHolder(file: string): Promise<LockHolder | undefined> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const seen = await readLock(file);
    if (!seen || isStale(seen)) return undefined;
    if (seen.holder) return seen.holder;
    await sleep(5); // created but not yet written: its holder is writing it right now
  }
  return undefined;
}

/**
 * The write lock of one state directory. Serializes callers inside this process (a promise queue) and
 * across processes (the lock file). Re-entrant: a withLock inside a withLock of the same lock runs directly,
 * so store methods can lock themselves and still be grouped by a caller.
 */
export class FileLock {
  private static byFile = new Map<string, FileLock>();
  private tail: Promise<void> = Promise.resolve();
  private context = new AsyncLocalStorage<{ held: boolean }>();

  private constructor(readonly file: string) {}

  /** One instance per file, so two Store objects on one directory in one process share the queue. */
  static for(file: string): FileLock {
    let lock = FileLock.byFile.get(file);
    if (!lock) FileLock.byFile.set(file, (lock = new FileLock(file)));
    return lock;
  }

  get heldHere(): boolean {
    return this.context.getStore()?.held === true;
  }

  async run<T>(fn: () => Promise<T>, timeoutMs: number): Promise<T> {
    if (this.heldHere) return fn();
    const deadline = Date.now() + timeoutMs;
    const prev = this.tail;
    let done!: () => void;
    this.tail = new Promise<void>((resolve) => (done = resolve));
    try {
      if (!(await settlesBefore(prev, deadline))) throw new LockTimeoutError(this.file, process.pid, timeoutMs);
      const holder = await this.acquire(deadline, timeoutMs);
      const token = { held: true };
      try {
        return await this.context.run(token, fn);
      } finally {
        token.held = false; // work that fn started and left running must not think it still holds the lock
        await release(this.file, holder);
      }
    } finally {
      void prev.then(done); // if we gave up waiting, the next in line still waits for prev
    }
  }

  private async acquire(deadline: number, timeoutMs: number): Promise<LockHolder> {
    let delay = 5;
    for (;;) {
      const mine = await tryAcquire(this.file);
      if (mine) return mine;
      const left = deadline - Date.now();
      if (left <= 0) throw new LockTimeoutError(this.file, (await liveHolder(this.file))?.pid, timeoutMs);
      await sleep(Math.min(left, delay * (0.5 + Math.random())));
      delay = Math.min(delay * 2, 100);
    }
  }
}

/** Whether p settles before the deadline (p never rejects here). */
async function settlesBefore(p: Promise<void>, deadline: number): Promise<boolean> {
  const ac = new AbortController();
  try {
    return await Promise.race([
      p.then(() => true),
      sleep(Math.max(0, deadline - Date.now()), false, { signal: ac.signal }).catch(() => false),
    ]);
  } finally {
    ac.abort();
  }
}

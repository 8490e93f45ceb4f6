// A keyed, de-duplicating work queue, after controller-runtime's: a key is queued at most once, a key
// being processed is never handed out twice (adding it again marks it dirty, to run once more when
// done). Retry timing is the resource machines' (their `after` delays re-add the key); the queue only
// computes the exponential backoff with jitter they use.

export interface QueueOptions {
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Random factor: a delay d becomes d * (1 ± jitter). */
  jitter?: number;
  random?: () => number;
}

export class WorkQueue<K = string> {
  private readonly queue: K[] = [];
  private readonly queued = new Set<K>();
  private readonly processing = new Set<K>();
  private readonly dirty = new Set<K>();
  private readonly waiters: ((key: K | undefined) => void)[] = [];
  private idleWaiters: (() => void)[] = [];
  private closed = false;
  private readonly opts: Required<QueueOptions>;

  constructor(opts: QueueOptions = {}) {
    this.opts = { baseDelayMs: 500, maxDelayMs: 5 * 60_000, jitter: 0.2, random: Math.random, ...opts };
  }

  add(key: K): void {
    if (this.closed) return;
    if (this.processing.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    const waiter = this.waiters.shift();
    if (waiter) {
      this.processing.add(key);
      waiter(key);
      return;
    }
    this.queued.add(key);
    this.queue.push(key);
  }

  /** The delay before retry number failures+1: doubling from baseDelayMs, capped, with jitter. */
  backoff(failures: number): number {
    const raw = Math.min(this.opts.maxDelayMs, this.opts.baseDelayMs * 2 ** failures);
    const factor = 1 + this.opts.jitter * (2 * this.opts.random() - 1);
    return Math.round(Math.min(this.opts.maxDelayMs, raw * factor));
  }

  /** Waits for the next key; undefined once the queue is shut down. */
  get(): Promise<K | undefined> {
    const key = this.queue.shift();
    if (key !== undefined) {
      this.queued.delete(key);
      this.processing.add(key);
      return Promise.resolve(key);
    }
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Marks a key processed; a key added meanwhile is queued again. */
  done(key: K): void {
    this.processing.delete(key);
    if (this.dirty.delete(key)) this.add(key);
    this.notifyIdle();
  }

  /** Nothing queued and nothing in progress (delayed keys do not count). */
  get idle(): boolean {
    return this.queue.length === 0 && this.processing.size === 0;
  }

  whenIdle(): Promise<void> {
    if (this.idle) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private notifyIdle(): void {
    if (!this.idle) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  shutDown(): void {
    this.closed = true;
    for (const w of this.waiters.splice(0)) w(undefined);
    this.notifyIdle();
  }
}

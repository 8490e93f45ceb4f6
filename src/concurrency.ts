// Bounded concurrency for I/O over many items.

/** Maps with at most `limit` calls in flight; results keep the input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/**
 * Runs `run` one call at a time, with at most one call waiting behind the one in progress: calls made
 * while one waits join it (their `wide` flags OR-ed) and resolve with it. So work asked for faster than
 * it is done (a resync slower than its interval) never piles up a backlog.
 */
export function oneWaiting(run: (wide: boolean) => Promise<void>): (wide: boolean) => Promise<void> {
  let tail: Promise<void> = Promise.resolve();
  let waiting: { wide: boolean; done: Promise<void> } | undefined;
  return (wide) => {
    if (waiting) {
      waiting.wide ||= wide;
      return waiting.done;
    }
    const next: { wide: boolean; done: Promise<void> } = { wide, done: Promise.resolve() };
    waiting = next;
    // A failed run does not stop the ones after it.
    next.done = tail.then(() => {
      waiting = undefined;
      return run(next.wide);
    });
    tail = next.done.catch(() => {});
    return next.done;
  };
}

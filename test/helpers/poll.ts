// The one polling helper of the test suite: wait until a condition holds, or fail naming what was awaited.
import { setTimeout as sleep } from 'node:timers/promises';

export interface PollOptions {
  timeoutMs?: number;
  intervalMs?: number;
}

/** Resolves once `check` returns true; throws `timed out waiting for WHAT` after the timeout. */
export async function until(what: string, check: () => boolean | Promise<boolean>, opts: PollOptions | number = {}): Promise<void> {
  const { timeoutMs = 15_000, intervalMs = 25 } = typeof opts === 'number' ? { timeoutMs: opts } : opts;
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(intervalMs);
  }
}

// oneWaiting: work asked for faster than it is done never piles up.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { oneWaiting } from '../src/concurrency.ts';

test('calls while one runs join a single waiting call, their flags OR-ed; runs never overlap', async () => {
  const runs: boolean[] = [];
  let running = 0;
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const call = oneWaiting(async (wide) => {
    assert.equal(running++, 0, 'runs overlap');
    runs.push(wide);
    if (runs.length === 1) await gate;
    running--;
  });
  const first = call(false);
  await new Promise((r) => setImmediate(r));
  const later = Array.from({ length: 100 }, (_, i) => call(i === 50));
  release();
  await Promise.all([first, ...later]);
  assert.deepEqual(runs, [false, true], 'one run in progress, one waiting (wide), not 101');
  await call(false);
  assert.deepEqual(runs, [false, true, false]);
});

test('a failed run rejects its callers and does not stop the next one', async () => {
  let n = 0;
  const call = oneWaiting(async () => {
    if (n++ === 0) throw new Error('first fails');
  });
  await assert.rejects(call(false), /first fails/);
  await call(true);
  assert.equal(n, 2);
});

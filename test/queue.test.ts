import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WorkQueue } from '../src/engine/queue.ts';

test('a key queued twice is handed out once', async () => {
  const q = new WorkQueue<string>();
  q.add('a');
  q.add('a');
  q.add('b');
  assert.equal(await q.get(), 'a');
  assert.equal(await q.get(), 'b');
  q.done('a');
  q.done('b');
  assert.ok(q.idle);
});

test('a key added while processing runs again after done, never concurrently', async () => {
  const q = new WorkQueue<string>();
  q.add('a');
  const first = await q.get();
  q.add('a');
  let second: string | undefined;
  void q.get().then((k) => (second = k));
  await new Promise((r) => setImmediate(r));
  assert.equal(second, undefined, 'must not hand out a key that is being processed');
  q.done(first!);
  await new Promise((r) => setImmediate(r));
  assert.equal(second, 'a');
});

test('backoff doubles per failure, is capped, and has bounded jitter', () => {
  const q = new WorkQueue<string>({ baseDelayMs: 100, maxDelayMs: 1000, jitter: 0.2, random: () => 0.5 });
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => q.backoff(n)), [100, 200, 400, 800, 1000, 1000]);
  const low = new WorkQueue<string>({ baseDelayMs: 100, jitter: 0.2, random: () => 0 });
  const high = new WorkQueue<string>({ baseDelayMs: 100, jitter: 0.2, random: () => 0.999999 });
  assert.equal(low.backoff(0), 80);
  assert.equal(high.backoff(0), 120);
});

test('shutDown releases waiting getters', async () => {
  const q = new WorkQueue<string>();
  const pending = q.get();
  q.shutDown();
  assert.equal(await pending, undefined);
});

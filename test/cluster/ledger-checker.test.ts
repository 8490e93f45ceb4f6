// The cluster tests' ledger checker on hand-made ledgers: an overlap must fail, a clean handover must pass.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { assertLedgerClean, checkLedger, parseLedger } from '../helpers/cluster-ledger.ts';

const T0 = Date.parse('2026-12-01T00:00:00.000Z');
const line = (vm: string, node: string, event: 'start' | 'stop', atMs: number, pid?: number) =>
  JSON.stringify({ vm, node, event, ...(pid !== undefined ? { pid } : {}), at: new Date(T0 + atMs).toISOString() });
const check = (...lines: string[]) => checkLedger(parseLedger(lines.join('\n') + '\n'));

describe('ledger checker', () => {
  test('a failover with the stop before the new start: no overlap', () => {
    const r = check(line('web', 'n1', 'start', 0, 10), line('web', 'n1', 'stop', 4000, 10), line('web', 'n2', 'start', 9000, 20));
    assert.deepEqual(r.overlaps, []);
    assert.equal(r.intervals.length, 2);
    assert.equal(r.intervals[1]!.stop, undefined, 'the new copy is still live');
  });

  test('a start on another node before the stop of the live copy is an overlap', () => {
    const r = check(line('web', 'n1', 'start', 0, 10), line('web', 'n2', 'start', 3000, 20), line('web', 'n1', 'stop', 4000, 10));
    assert.equal(r.overlaps.length, 1);
    assert.deepEqual([r.overlaps[0]!.a.node, r.overlaps[0]!.b.node], ['n1', 'n2']);
  });

  test('a copy never stopped overlaps any later start elsewhere', () => {
    const r = check(line('db', 'n1', 'start', 0), line('db', 'n3', 'start', 60_000));
    assert.equal(r.overlaps.length, 1);
  });

  test('a second start on the same node without a stop is an overlap too', () => {
    const r = check(line('db', 'n1', 'start', 0, 1), line('db', 'n1', 'start', 100, 2));
    assert.equal(r.overlaps.length, 1);
  });

  test('lines out of time order (several writers) are ordered by time; stops match by PID', () => {
    const r = check(
      line('a', 'n2', 'start', 5000, 22),
      line('a', 'n1', 'start', 0, 11),
      line('a', 'n1', 'stop', 4999, 11),
      line('b', 'n1', 'start', 0, 12),
      line('b', 'n1', 'stop', 1000, 12),
      line('b', 'n1', 'start', 2000, 13),
    );
    assert.deepEqual(r.overlaps, []);
    // A stop right at the next start does not overlap ([start, stop)); one ms later does.
    assert.equal(check(line('c', 'n1', 'start', 0), line('c', 'n1', 'stop', 500), line('c', 'n2', 'start', 500)).overlaps.length, 0);
    assert.equal(check(line('c', 'n1', 'start', 0), line('c', 'n1', 'stop', 501), line('c', 'n2', 'start', 500)).overlaps.length, 1);
  });

  test('different VMs never overlap each other; a stop with no start is only noted', () => {
    const r = check(line('a', 'n1', 'start', 0), line('b', 'n2', 'start', 0), line('c', 'n3', 'stop', 10));
    assert.deepEqual(r.overlaps, []);
    assert.equal(r.unmatchedStops.length, 1);
  });

  test('epoch-ms times are accepted; a line that is not an event names its line', () => {
    assert.equal(parseLedger(JSON.stringify({ vm: 'a', node: 'n1', event: 'start', pid: 1, at: T0 }))[0]!.at, T0);
    assert.throws(() => parseLedger(`${line('a', 'n1', 'start', 0)}\n{"vm":"a","event":"begin","at":1}\n`), /ledger line 2 /);
    assert.throws(() => parseLedger('not json\n'), /ledger line 1 is not JSON/);
  });

  test('assertLedgerClean reads the file and fails listing the overlap', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-ledger-'));
    try {
      const file = path.join(dir, 'ledger.jsonl');
      await assert.doesNotReject(assertLedgerClean(file), 'a missing ledger is an empty one');
      await writeFile(file, [line('web', 'n1', 'start', 0, 10), line('web', 'n2', 'start', 3000, 20)].join('\n') + '\n');
      await assert.rejects(assertLedgerClean(file), /1 overlapping copies:\nVM web: n1 pid 10 \[00:00:00.000, still live\) \(line 1\) overlaps n2 pid 20/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

// The ledger: one JSON line per VM start and stop, appended atomically by several writers; a stop for a
// killed process only once it is gone.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { appendLedger, ledgerStopsWhenGone, parseLedger } from '../../src/cluster/ledger.ts';
import { vmPaths } from '../../src/controllers/vm/context.ts';
import { processStartTime } from '../../src/proc.ts';

describe('ledger', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-ledger-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('appends whole lines from many concurrent writers, in the documented shape', async () => {
    const file = path.join(dir, 'a.jsonl');
    await Promise.all(Array.from({ length: 200 }, (_, i) => appendLedger({ file, node: `n${i % 3}` }, `vm${i}`, i % 2 ? 'stop' : 'start', i % 2 ? 1000 + i : null)));
    const text = await readFile(file, 'utf8');
    const lines = text.trimEnd().split('\n');
    assert.equal(lines.length, 200);
    const entries = parseLedger(text);
    assert.equal(entries.length, 200, 'every line parses');
    const e = entries.find((x) => x.vm === 'vm7')!;
    assert.deepEqual(Object.keys(e), ['vm', 'node', 'event', 'pid', 'at']);
    assert.deepEqual([e.node, e.event, e.pid], ['n1', 'stop', 1007]);
    assert.ok(!Number.isNaN(Date.parse(e.at)));
    assert.equal(entries.find((x) => x.vm === 'vm8')!.pid, null, 'a start has no pid yet');
  });

  it('writes a stop for a killed process only once it is gone, and closes its launch record', async () => {
    const file = path.join(dir, 'b.jsonl');
    const stateDir = path.join(dir, 'state');
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const pid = child.pid!;
    const exited = new Promise((r) => child.once('exit', r));
    const rec = vmPaths({ stateDir }, 'web').launchRecord;
    await mkdir(path.dirname(rec), { recursive: true });
    await writeFile(rec, JSON.stringify({ specHash: 'h', generation: 1, startedAt: '', crashes: 0, pid, ledgerOpen: true }));
    // Alive: no stop within the timeout.
    await ledgerStopsWhenGone({ file, node: 'n1' }, [{ vm: 'web', pid, start: processStartTime(pid) }], { stateDir, timeoutMs: 200 });
    assert.equal(await readFile(file, 'utf8').catch(() => ''), '', 'no stop for a live process');
    const waiting = ledgerStopsWhenGone({ file, node: 'n1' }, [{ vm: 'web', pid, start: processStartTime(pid) }], { stateDir });
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(await readFile(file, 'utf8').catch(() => ''), '', 'still running: still no stop');
    process.kill(pid, 'SIGKILL');
    await waiting;
    await exited;
    const entries = parseLedger(await readFile(file, 'utf8'));
    assert.deepEqual(entries.map((x) => [x.vm, x.node, x.event, x.pid]), [['web', 'n1', 'stop', pid]]);
    assert.equal(JSON.parse(await readFile(rec, 'utf8')).ledgerOpen, false, 'the controller will not write a second stop');
  });
});

// The daemon end to end: it outlives whoever reads its output, and serves a store with broken files.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Store } from '../../src/store/store.ts';
import { createSandbox, route, until, type Sandbox } from './harness.ts';

describe('controller daemon', () => {
  let sb: Sandbox;
  before(async () => (sb = await createSandbox()));
  after(async () => sb?.cleanup());

  test('keeps running when its stdout closes (qwamos controller | head -1)', async () => {
    const daemon = await sb.startDaemon();
    // The reader goes away, as head does after one line.
    daemon.stdout!.destroy();
    const file = await sb.manifest('r1.yaml', route('r1', 'direct', '10.100.1.2/24'));
    const r = await sb.qwamos(['apply', '-f', file]);
    assert.equal(r.exitCode, 0, r.stderr);
    // The daemon reconciles it and logs that into the closed pipe.
    const store = await Store.open(sb.stateDir);
    await until('Route/r1 ready', async () => (await store.getStatus('Route', 'r1'))?.phase === 'Ready', 30_000);
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(daemon.exitCode, null, 'the daemon is still running');
    assert.equal(daemon.signalCode, null);
    daemon.kill('SIGTERM');
    const [code, signal] = await once(daemon, 'exit');
    assert.deepEqual({ code, signal }, { code: 0, signal: null }, (daemon as unknown as { output: () => string }).output());
  });

  test('a truncated resource file and a garbage request do not stop a (re)started daemon', async () => {
    const store = await Store.open(sb.stateDir);
    await store.putResource({ apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name: 'r5' }, spec: { vm: 'r5', mode: 'isolated' } }, { path: '/x/r5.yaml', digest: 'a'.repeat(64) });
    await writeFile(path.join(sb.stateDir, 'resources', 'Route', 'r5.json'), '');
    await mkdir(path.join(sb.stateDir, 'requests'), { recursive: true });
    await writeFile(path.join(sb.stateDir, 'requests', '0000-garbage.json'), '\u001b[31mnot json');
    const daemon = await sb.startDaemon();
    try {
      const file = await sb.manifest('r2.yaml', route('r2', 'direct', '10.100.2.2/24'));
      const r = await sb.qwamos(['apply', '-f', file]);
      assert.equal(r.exitCode, 0, r.stderr);
      await until('Route/r2 ready', async () => (await store.getStatus('Route', 'r2'))?.phase === 'Ready', 30_000);
      const output = (daemon as unknown as { output: () => string }).output();
      assert.match(output, /r5\.json/, 'the broken record is reported');
      assert.doesNotMatch(output, /\u001b/, 'raw bytes of a garbage file are not printed');
      // The CLI removes the record that cannot be parsed.
      const del = await sb.qwamos(['delete', 'Route/r5']);
      assert.equal(del.exitCode, 0, del.stderr);
      assert.equal(daemon.exitCode, null);
    } finally {
      daemon.kill('SIGTERM');
      await once(daemon, 'exit');
    }
  });
});

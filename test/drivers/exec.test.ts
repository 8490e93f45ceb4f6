// The process runner every driver uses, against real processes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CommandError, processesSpawned, run, runResult } from '../../src/drivers/exec.ts';

test('stdin in, stdout and stderr out untrimmed, the exit code kept; counted', async () => {
  const before = processesSpawned();
  assert.deepEqual(await runResult(['sh', '-c', 'cat; echo oops >&2; exit 3'], { input: 'hello\n' }), { stdout: 'hello\n', stderr: 'oops\n', exitCode: 3 });
  assert.equal(processesSpawned() - before, 1);
  // Large input to a command that never reads it is no error of ours.
  assert.equal(await run(['sh', '-c', 'echo $LC_ALL'], { input: 'x'.repeat(1 << 20) }), 'C\n');
});

test('a failure is one line naming the command: non-zero exit, cannot start, timeout', async () => {
  await assert.rejects(run(['sh', '-c', 'echo first >&2; echo second >&2; exit 2']), (e) => e instanceof CommandError && e.exitCode === 2 && e.message === 'sh -c "echo first >&2; echo second >&2; exit 2": first');
  await assert.rejects(run(['qwamos-no-such-tool']), (e) => e instanceof CommandError && e.exitCode === undefined && /^qwamos-no-such-tool: .*ENOENT$/.test(e.message));
  const start = Date.now();
  await assert.rejects(run(['sleep', '10'], { timeoutMs: 200 }), (e) => e instanceof CommandError && e.message === 'sleep 10: timed out after 200 ms');
  assert.ok(Date.now() - start < 5000);
});

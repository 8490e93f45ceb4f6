// `apply -f DIR` and `validate -f DIR` honour a signed revision index in DIR (qwamos sign --index), through
// the real bin: the directory is accepted only if the index verifies, the files match it exactly and its
// serial is above the last one applied from that directory; otherwise one line names the file and the
// reason, the exit code is 1 and nothing changes. GpuTrustLevels only: nothing happens on the host.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tempDirs: string[] = [];

after(async () => {
  await Promise.all(tempDirs.map((dir) => fs.rm(dir, { recursive: true, force: true })));
});

interface Run { code: number | null; stdout: string; stderr: string }

function qwamos(state: string, ...args: string[]): Run {
  const env: NodeJS.ProcessEnv = { ...process.env, QWAMOS_STATE_DIR: state, QWAMOS_PREFIX: 'qi' };
  delete env.QWAMOS_DEBUG;
  delete env.QWAMOS_HOST_NETNS;
  const r = spawnSync(process.execPath, ['bin/qwamos.js', ...args], { cwd: repoRoot, env, encoding: 'utf8', timeout: 60_000 });
  const run = { code: r.status, stdout: r.stdout, stderr: r.stderr };
  for (const text of [run.stdout, run.stderr]) assert.doesNotMatch(text, /^ {4}at /m, `stack trace in output of qwamos ${args.join(' ')}:\n${text}`);
  return run;
}

const level = (name: string, n = 1) => `apiVersion: qwamos.io/v1alpha1\nkind: GpuTrustLevel\nmetadata:\n  name: ${name}\nspec:\n  level: ${n}\n`;

/** A state dir with a trusted key, and a directory of signed manifests with a signed index (serial 1). */
async function setup() {
  const state = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-cli-index-'));
  tempDirs.push(state);
  const k = qwamos(state, 'keygen', 'alice');
  assert.equal(k.code, 0, k.stderr);
  await fs.mkdir(path.join(state, 'trust'), { recursive: true, mode: 0o700 });
  await fs.copyFile(path.join(state, 'keys', 'alice.pub'), path.join(state, 'trust', 'alice.pub'));
  const key = path.join(state, 'keys', 'alice.key');
  const dir = path.join(state, 'work', 'fleet');
  await fs.mkdir(dir, { recursive: true });
  /** Writes manifests, signs them and (unless index: false) writes and signs the index. */
  const sign = async (files: Record<string, string>, opts: { index?: boolean; serial?: number } = {}) => {
    for (const [f, text] of Object.entries(files)) await fs.writeFile(path.join(dir, f), text);
    const args = ['sign', '-k', key, ...Object.keys(files).map((f) => path.join(dir, f))];
    if (opts.index !== false) args.push('--index', dir, ...(opts.serial !== undefined ? ['--serial', String(opts.serial)] : []));
    const r = qwamos(state, ...args);
    assert.equal(r.code, 0, r.stderr);
  };
  await sign({ 'a.yaml': level('a'), 'b.yaml': level('b') });
  /** Snapshot of the directory's files (to replay an older signed state). */
  const snapshot = async () => new Map(await Promise.all((await fs.readdir(dir)).map(async (f) => [f, await fs.readFile(path.join(dir, f))] as const)));
  const restore = async (files: Map<string, Buffer>, only?: string[]) => {
    for (const [f, bytes] of files) if (!only || only.includes(f)) await fs.writeFile(path.join(dir, f), bytes);
  };
  const stored = async () => {
    const r = qwamos(state, 'get', 'gpu', '-o', 'json');
    return r.code === 0 ? (JSON.parse(r.stdout) as { metadata: { name: string }; spec: { level: number } }[]).map((x) => `${x.metadata.name}=${x.spec.level}`).sort() : [];
  };
  return { state, dir, sign, snapshot, restore, stored };
}

/** The refusal: one line naming the file, then apply's "nothing was applied". */
function assertRefused(r: Run, file: string, reason: RegExp): void {
  assert.equal(r.code, 1, `${r.stdout}\n${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines[0]!.startsWith(`${file}:1:1: index: refused: `), true, r.stderr);
  assert.match(lines[0]!, reason);
  assert.ok(lines.length <= 2, r.stderr);
}

describe('apply -f DIR with a signed index', () => {
  test('a matching index is applied and its serial recorded (0600); applying it again is fine', async () => {
    const { state, dir, stored } = await setup();
    const v = qwamos(state, 'validate', '-f', dir);
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /2 resources in 2 files are valid/);
    assert.match(v.stdout, /signed index serial 1/);
    const r = qwamos(state, 'apply', '-f', dir);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /GpuTrustLevel\/a created/);
    assert.deepEqual(await stored(), ['a=1', 'b=1']);
    const records = await fs.readdir(path.join(state, 'indexes'));
    assert.equal(records.length, 1);
    const file = path.join(state, 'indexes', records[0]!);
    assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
    const record = JSON.parse(await fs.readFile(file, 'utf8'));
    assert.equal(record.serial, 1);
    assert.equal(record.dir, await fs.realpath(dir));
    const again = qwamos(state, 'apply', '-f', dir);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /GpuTrustLevel\/a unchanged/);
  });

  test('a deleted signed file, an extra file and a changed file are each refused, naming the file; nothing changes', async () => {
    const { state, dir, stored, sign } = await setup();
    assert.equal(qwamos(state, 'apply', '-f', dir).code, 0);

    await fs.rename(path.join(dir, 'b.yaml'), path.join(state, 'b.yaml'));
    await fs.rename(path.join(dir, 'b.yaml.sig'), path.join(state, 'b.yaml.sig'));
    assertRefused(qwamos(state, 'apply', '-f', dir), path.join(dir, 'b.yaml'), /missing: listed in the signed index but not in the directory/);
    assertRefused(qwamos(state, 'validate', '-f', dir), path.join(dir, 'b.yaml'), /missing/);
    await fs.rename(path.join(state, 'b.yaml'), path.join(dir, 'b.yaml'));
    await fs.rename(path.join(state, 'b.yaml.sig'), path.join(dir, 'b.yaml.sig'));

    await sign({ 'c.yaml': level('c') }, { index: false }); // signed, but not in the index
    assertRefused(qwamos(state, 'apply', '-f', dir), path.join(dir, 'c.yaml'), /not in the signed index/);
    await fs.rm(path.join(dir, 'c.yaml'));

    await sign({ 'a.yaml': level('a', 3) }, { index: false }); // re-signed, index not
    assertRefused(qwamos(state, 'apply', '-f', dir), path.join(dir, 'a.yaml'), /does not match the signed index/);

    await fs.writeFile(path.join(dir, 'x.json'), '{}');
    await sign({}, {});
    assertRefused(qwamos(state, 'apply', '-f', dir), path.join(dir, 'x.json'), /not covered by the signed index/);
    assert.deepEqual(await stored(), ['a=1', 'b=1'], 'nothing of a refused directory was applied');
  });

  test('an older signed index (or one copy of a file from it, or files mixed from two signings) is refused once a newer one was applied', async () => {
    const { state, dir, stored, sign, snapshot, restore } = await setup();
    const serial1 = await snapshot();
    assert.equal(qwamos(state, 'apply', '-f', dir).code, 0);
    await sign({ 'a.yaml': level('a', 2), 'b.yaml': level('b', 2) });
    const serial2 = await snapshot();
    assert.equal(qwamos(state, 'apply', '-f', dir).code, 0);
    assert.deepEqual(await stored(), ['a=2', 'b=2']);

    await restore(serial1); // the whole older signed state: every file and the index verify
    assertRefused(qwamos(state, 'apply', '-f', dir), path.join(dir, 'qwamos-index.yaml'), /serial 1 is not above the applied serial 2/);
    assertRefused(qwamos(state, 'validate', '-f', dir), path.join(dir, 'qwamos-index.yaml'), /serial 1 is not above/);

    await restore(serial2);
    await restore(serial1, ['a.yaml', 'a.yaml.sig']); // one older signed file among the newer
    assertRefused(qwamos(state, 'apply', '-f', dir), path.join(dir, 'a.yaml'), /does not match the signed index/);

    await restore(serial2);
    await restore(serial1, ['b.yaml', 'b.yaml.sig']); // new a and index, old b: every file signed, the mix never was
    assertRefused(qwamos(state, 'apply', '-f', dir), path.join(dir, 'b.yaml'), /does not match the signed index/);
    assert.deepEqual(await stored(), ['a=2', 'b=2']);

    // Removing the index does not switch the protection off for this directory.
    await restore(serial2);
    await fs.rm(path.join(dir, 'qwamos-index.yaml'));
    await fs.rm(path.join(dir, 'qwamos-index.yaml.sig'));
    assertRefused(qwamos(state, 'apply', '-f', dir), path.join(dir, 'qwamos-index.yaml'), /missing: the last apply of this directory had one \(serial 2\)/);
    assert.deepEqual(await stored(), ['a=2', 'b=2']);
  });

  test('a tampered or unsigned index is refused', async () => {
    const { state, dir } = await setup();
    const index = path.join(dir, 'qwamos-index.yaml');
    const text = await fs.readFile(index, 'utf8');
    await fs.writeFile(index, text.replace('serial: 1', 'serial: 7'));
    assertRefused(qwamos(state, 'apply', '-f', dir), index, /tampered/);
    await fs.writeFile(index, text);
    await fs.rm(`${index}.sig`);
    assertRefused(qwamos(state, 'validate', '-f', dir), index, /unsigned/);
  });
});

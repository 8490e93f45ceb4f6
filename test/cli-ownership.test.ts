// State dir and trust store ownership (issue #12, like sshd's StrictModes), through the real bin.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tempDirs: string[] = [];
const NOBODY = 65534;
const asRoot = process.getuid?.() === 0;

after(async () => {
  await Promise.all(tempDirs.map((dir) => fs.rm(dir, { recursive: true, force: true })));
});

async function tmp(): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-own-'));
  tempDirs.push(dir);
  return dir;
}

function qwamos(state: string, ...args: string[]) {
  const env: NodeJS.ProcessEnv = { ...process.env, QWAMOS_STATE_DIR: state };
  delete env.QWAMOS_DEBUG;
  const r = spawnSync(process.execPath, ['bin/qwamos.js', ...args], { cwd: repoRoot, env, encoding: 'utf8', timeout: 60_000 });
  assert.doesNotMatch(r.stderr, /^ {4}at /m, r.stderr);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A state dir with a trusted key and a manifest signed by it. */
async function signedSetup() {
  const base = await tmp();
  const state = path.join(base, 'state');
  await fs.mkdir(state, { mode: 0o700 });
  const keys = path.join(base, 'keys');
  assert.equal(qwamos(state, 'keygen', 'alice', '--out', keys).code, 0);
  await fs.mkdir(path.join(state, 'trust'), { mode: 0o755 });
  await fs.copyFile(path.join(keys, 'alice.pub'), path.join(state, 'trust', 'alice.pub'));
  const file = path.join(base, 'r.yaml');
  await fs.writeFile(file, 'apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata:\n  name: r\nspec:\n  vm: r\n  mode: isolated\n');
  assert.equal(qwamos(state, 'sign', '-k', path.join(keys, 'alice.key'), file).code, 0);
  return { base, state, keys, file };
}

function oneLineError(r: { code: number | null; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0]!, pattern);
}

describe('ownership of the state dir and the trust store', { skip: !asRoot && 'needs root to chown' }, () => {
  test('a state dir owned by nobody, mode 0777, is refused', async () => {
    const state = path.join(await tmp(), 'state');
    await fs.mkdir(state);
    await fs.chmod(state, 0o777);
    await fs.chown(state, NOBODY, NOBODY);
    oneLineError(qwamos(state, 'get'), new RegExp(`^error: refusing state directory ${state}: owned by uid ${NOBODY}`));
  });

  test('our own state dir with mode 0777 is tightened to 0700, not refused', async () => {
    const state = path.join(await tmp(), 'state');
    await fs.mkdir(state);
    await fs.chmod(state, 0o777);
    const r = qwamos(state, 'get');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(((await fs.stat(state)).mode & 0o777).toString(8), '700', 'our own dir is tightened, not refused');
  });

  test('a trust dir planted by nobody, or writable by others, is refused', async () => {
    const { state, file } = await signedSetup();
    assert.equal(qwamos(state, 'verify', file).code, 0);
    await fs.chown(path.join(state, 'trust'), NOBODY, NOBODY);
    oneLineError(qwamos(state, 'verify', file), new RegExp(`refusing trust store ${path.join(state, 'trust')}: owned by uid ${NOBODY}`));
    await fs.chown(path.join(state, 'trust'), 0, 0);
    await fs.chmod(path.join(state, 'trust'), 0o777);
    oneLineError(qwamos(state, 'verify', file), /refusing trust store .*trust: writable by group or others \(mode 0777\)/);
  });

  test('a key planted by nobody, or a symlinked key whose target is world-writable, is refused', async () => {
    const { base, state, file } = await signedSetup();
    const pub = path.join(state, 'trust', 'alice.pub');
    await fs.chown(pub, NOBODY, NOBODY);
    oneLineError(qwamos(state, 'verify', file), new RegExp(`refusing trusted key ${pub}: owned by uid ${NOBODY}`));
    await fs.chown(pub, 0, 0);
    const outside = path.join(base, 'alice-outside.pub');
    await fs.rename(pub, outside);
    await fs.chmod(outside, 0o666);
    await fs.symlink(outside, pub);
    oneLineError(qwamos(state, 'verify', file), new RegExp(`refusing trusted key ${pub}: writable by group or others \\(mode 0666\\)`));
    // The same link to a private target is fine.
    await fs.chmod(outside, 0o644);
    assert.equal(qwamos(state, 'verify', file).code, 0);
  });

  test('keygen --out into the trust store refuses to write a secret key there', async () => {
    const { state } = await signedSetup();
    const r = qwamos(state, 'keygen', 'bob', '--out', path.join(state, 'trust'));
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^error: refusing to write a secret key into the trust store/);
    await assert.rejects(fs.stat(path.join(state, 'trust', 'bob.key')), { code: 'ENOENT' });
    // Also through another spelling of the same directory.
    const r2 = qwamos(state, 'keygen', 'bob', '--out', `${state}/keys/../trust/`);
    assert.equal(r2.code, 2, r2.stderr);
  });
});

// End-to-end tests of `qwamos keygen`, `sign` and `verify` through the real bin, each with its own state dir.
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

/** A fresh QWAMOS_STATE_DIR (with a work dir for manifests) for one test. */
async function freshState(): Promise<{ state: string; work: string; trust: string }> {
  const state = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-cli-trust-'));
  tempDirs.push(state);
  const work = path.join(state, 'work');
  await fs.mkdir(work);
  return { state, work, trust: path.join(state, 'trust') };
}

interface Run { code: number | null; stdout: string; stderr: string }

/** Runs `node bin/qwamos.js ...args`; every run is checked for leaked stack traces. */
function qwamos(state: string, ...args: string[]): Run {
  const env: NodeJS.ProcessEnv = { ...process.env, QWAMOS_STATE_DIR: state };
  delete env.QWAMOS_DEBUG;
  const r = spawnSync(process.execPath, ['bin/qwamos.js', ...args], { cwd: repoRoot, env, encoding: 'utf8', timeout: 60_000 });
  const run = { code: r.status, stdout: r.stdout, stderr: r.stderr };
  for (const text of [run.stdout, run.stderr]) {
    assert.doesNotMatch(text, /^ {4}at /m, `stack trace in output of qwamos ${args.join(' ')}:\n${text}`);
  }
  return run;
}

const manifest = (name: string) => `apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata:\n  name: ${name}\nspec:\n  mode: tor\n`;

/** Makes key NAME and (unless untrusted) copies its public key into the trust store; returns its id and paths. */
async function makeKey(state: string, name: string, opts: { trusted?: boolean; alg?: string } = {}) {
  const r = qwamos(state, 'keygen', name, ...(opts.alg ? ['--alg', opts.alg] : []));
  assert.equal(r.code, 0, r.stderr);
  const keyId = /key id:\s+([0-9a-f]{32})/.exec(r.stdout)?.[1];
  assert.ok(keyId, r.stdout);
  const secret = path.join(state, 'keys', `${name}.key`);
  const pub = path.join(state, 'keys', `${name}.pub`);
  if (opts.trusted !== false) {
    await fs.mkdir(path.join(state, 'trust'), { recursive: true });
    await fs.copyFile(pub, path.join(state, 'trust', `${name}.pub`));
  }
  return { keyId, secret, pub };
}

describe('qwamos keygen', () => {
  test('writes a 0600 secret key and a public key, printing the id and paths but never the secret', async () => {
    const { state } = await freshState();
    const r = qwamos(state, 'keygen', 'alice');
    assert.equal(r.code, 0, r.stderr);
    const secretPath = path.join(state, 'keys', 'alice.key');
    const publicPath = path.join(state, 'keys', 'alice.pub');
    assert.equal((await fs.stat(secretPath)).mode & 0o777, 0o600);
    assert.equal((await fs.stat(path.join(state, 'keys'))).mode & 0o777, 0o700);
    assert.ok(r.stdout.includes(secretPath) && r.stdout.includes(publicPath), r.stdout);

    const secret = JSON.parse(await fs.readFile(secretPath, 'utf8'));
    const pub = JSON.parse(await fs.readFile(publicPath, 'utf8'));
    assert.equal(pub.alg, 'ml-dsa-65');
    assert.equal(pub.name, 'alice');
    assert.ok(r.stdout.includes(pub.keyId), r.stdout);
    const seed = Buffer.from(secret.seed, 'base64');
    assert.equal(seed.length, 32);
    for (const form of [secret.seed, seed.toString('hex'), seed.toString('base64url')]) {
      assert.ok(!r.stdout.includes(form) && !r.stderr.includes(form), 'secret seed printed');
    }
  });

  test('--alg ml-dsa-87 and --out DIR', async () => {
    const { state, work } = await freshState();
    const out = path.join(work, 'mykeys');
    const r = qwamos(state, 'keygen', 'bob', '--alg', 'ml-dsa-87', '--out', out);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(await fs.readFile(path.join(out, 'bob.pub'), 'utf8')).alg, 'ml-dsa-87');
    assert.equal((await fs.stat(path.join(out, 'bob.key'))).mode & 0o777, 0o600);
  });

  test('refuses to overwrite an existing key without --force', async () => {
    const { state } = await freshState();
    assert.equal(qwamos(state, 'keygen', 'carol').code, 0);
    const secretPath = path.join(state, 'keys', 'carol.key');
    const before = await fs.readFile(secretPath, 'utf8');
    const again = qwamos(state, 'keygen', 'carol');
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already exists/);
    assert.equal(await fs.readFile(secretPath, 'utf8'), before);
    const forced = qwamos(state, 'keygen', 'carol', '--force');
    assert.equal(forced.code, 0, forced.stderr);
    assert.notEqual(await fs.readFile(secretPath, 'utf8'), before);
  });

  test('bad usage exits 2 with a one-line error', async () => {
    const { state } = await freshState();
    for (const args of [['keygen', '../evil'], ['keygen', 'Upper'], ['keygen', 'x'.repeat(64)], ['keygen', 'ok', '--alg', 'rsa']]) {
      const r = qwamos(state, ...args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /^error: /, args.join(' '));
    }
    const bad = qwamos(state, 'keygen', '../evil');
    assert.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
    assert.equal(qwamos(state, 'keygen').code, 2);
    await assert.rejects(fs.stat(path.join(state, 'evil.key')));
  });
});

describe('qwamos sign and verify', () => {
  for (const alg of ['ml-dsa-65', 'ml-dsa-87']) {
    test(`signs and verifies several files (${alg})`, async () => {
      const { state, work } = await freshState();
      const { keyId, secret } = await makeKey(state, 'alice', { alg });
      const files = ['a.yaml', 'b.yaml'].map((f) => path.join(work, f));
      for (const f of files) await fs.writeFile(f, manifest(path.basename(f, '.yaml')));

      const s = qwamos(state, 'sign', '-k', secret, ...files);
      assert.equal(s.code, 0, s.stderr);
      for (const f of files) {
        const sig = JSON.parse(await fs.readFile(`${f}.sig`, 'utf8'));
        assert.equal(sig.alg, alg);
        assert.equal(sig.keyId, keyId);
      }
      assert.deepEqual((await fs.readdir(work)).sort(), ['a.yaml', 'a.yaml.sig', 'b.yaml', 'b.yaml.sig']); // no temp files

      const v = qwamos(state, 'verify', ...files);
      assert.equal(v.code, 0, v.stdout + v.stderr);
      for (const f of files) assert.ok(v.stdout.includes(`${f}: verified (key alice ${keyId})`), v.stdout);
    });
  }

  test('reports each bad file on its own line and exits 1', async () => {
    const { state, work, trust } = await freshState();
    const alice = await makeKey(state, 'alice');
    const mallory = await makeKey(state, 'mallory', { trusted: false });
    const f = (name: string) => path.join(work, `${name}.yaml`);
    for (const name of ['good', 'tampered', 'unsigned', 'untrusted', 'malformed', 'moved']) await fs.writeFile(f(name), manifest(name));
    assert.equal(qwamos(state, 'sign', '-k', alice.secret, f('good'), f('tampered'), f('malformed')).code, 0);
    assert.equal(qwamos(state, 'sign', '-k', mallory.secret, f('untrusted')).code, 0);
    await fs.appendFile(f('tampered'), '  extra: true\n');
    await fs.writeFile(`${f('malformed')}.sig`, (await fs.readFile(`${f('malformed')}.sig`, 'utf8')).slice(0, 500));
    await fs.copyFile(`${f('good')}.sig`, `${f('moved')}.sig`);

    const names = ['good', 'tampered', 'unsigned', 'untrusted', 'malformed', 'moved'];
    const r = qwamos(state, 'verify', ...names.map(f));
    assert.equal(r.code, 1, r.stdout + r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.deepEqual(lines.map((l) => l.split(': ')[0]), names.map(f));
    assert.equal(lines[0], `${f('good')}: verified (key alice ${alice.keyId})`);
    assert.equal(lines[1], `${f('tampered')}: tampered (signature by key ${alice.keyId} does not match the file's bytes)`);
    assert.equal(lines[2], `${f('unsigned')}: unsigned (no ${f('unsigned')}.sig)`);
    assert.equal(lines[3], `${f('untrusted')}: untrusted key ${mallory.keyId} (not in ${trust})`);
    assert.match(lines[4]!, /: malformed signature \(.+\)$/);
    assert.equal(lines[5], `${f('moved')}: tampered (signature by key ${alice.keyId} does not match the file's bytes)`);

    // One bad file among good ones is enough to fail.
    assert.equal(qwamos(state, 'verify', f('good')).code, 0);
    assert.equal(qwamos(state, 'verify', f('good'), f('unsigned')).code, 1);
  });

  test('-o json prints an array of results', async () => {
    const { state, work } = await freshState();
    const { keyId, secret } = await makeKey(state, 'alice');
    const good = path.join(work, 'good.yaml');
    const bare = path.join(work, 'bare.yaml');
    await fs.writeFile(good, manifest('good'));
    await fs.writeFile(bare, manifest('bare'));
    assert.equal(qwamos(state, 'sign', '-k', secret, good).code, 0);
    const r = qwamos(state, 'verify', '-o', 'json', good, bare);
    assert.equal(r.code, 1);
    const results = JSON.parse(r.stdout);
    assert.ok(Array.isArray(results));
    assert.deepEqual(results[0], { file: good, status: 'verified', keyId, keyName: 'alice', alg: 'ml-dsa-65' });
    assert.equal(results[1].file, bare);
    assert.equal(results[1].status, 'unsigned');
  });

  test('--trust DIR picks the trust store', async () => {
    const { state, work } = await freshState();
    const { secret, pub } = await makeKey(state, 'alice', { trusted: false });
    const file = path.join(work, 'x.yaml');
    await fs.writeFile(file, manifest('x'));
    assert.equal(qwamos(state, 'sign', '-k', secret, file).code, 0);
    assert.equal(qwamos(state, 'verify', file).code, 1); // default store is empty
    const other = path.join(work, 'other-trust');
    await fs.mkdir(other);
    await fs.copyFile(pub, path.join(other, 'alice.pub'));
    assert.equal(qwamos(state, 'verify', '--trust', other, file).code, 0);
  });

  test('malformed trust store entries are warned about and skipped', async () => {
    const { state, work, trust } = await freshState();
    const { secret } = await makeKey(state, 'alice');
    await fs.writeFile(path.join(trust, 'junk.pub'), 'not a key');
    await fs.mkdir(path.join(trust, 'dir.pub'));
    const file = path.join(work, 'x.yaml');
    await fs.writeFile(file, manifest('x'));
    assert.equal(qwamos(state, 'sign', '-k', secret, file).code, 0);
    const r = qwamos(state, 'verify', file);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stderr, /^warning: .*junk\.pub/m);
    assert.match(r.stderr, /^warning: .*dir\.pub/m);
  });

  test('usage errors exit 2: no files, a missing file, no key', async () => {
    const { state, work } = await freshState();
    const { secret } = await makeKey(state, 'alice');
    const file = path.join(work, 'x.yaml');
    await fs.writeFile(file, manifest('x'));
    const missing = path.join(work, 'missing.yaml');
    for (const args of [
      ['verify'],
      ['verify', missing],
      ['verify', file, missing],
      ['verify', '-o', 'yaml', file],
      ['sign', '-k', secret],
      ['sign', file],
      ['sign', '-k', secret, missing],
    ]) {
      const r = qwamos(state, ...args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /error/, args.join(' '));
    }
    const r = qwamos(state, 'verify', file, missing);
    assert.ok(r.stderr.includes(missing), r.stderr);
    await assert.rejects(fs.stat(`${file}.sig`)); // sign with a missing file signed nothing
  });

  test('sign refuses a secret key readable by others', async () => {
    const { state, work } = await freshState();
    const { secret } = await makeKey(state, 'alice');
    await fs.chmod(secret, 0o644);
    const file = path.join(work, 'x.yaml');
    await fs.writeFile(file, manifest('x'));
    const r = qwamos(state, 'sign', '-k', secret, file);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /too open/);
    await assert.rejects(fs.stat(`${file}.sig`));
  });
});

// Unit tests of signing keys, detached signatures and the trust store.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { UsageError, UserError } from '../src/errors.ts';
import { ALGS, generateKey, keyIdOf, readPublicKey, readSecretKey, type Alg, type SecretKeyRecord } from '../src/trust/keys.ts';
import { signBytes, verifyBytes, verifyFile, type VerifyOutcome } from '../src/trust/signature.ts';
import { loadTrustStore, type TrustStore } from '../src/trust/truststore.ts';

let tmp: string;
const keys = new Map<Alg, SecretKeyRecord>(); // trusted, one per algorithm
let stranger: SecretKeyRecord; // a valid key that is not in the trust store
let second: SecretKeyRecord; // another trusted ml-dsa-65 key
let store: TrustStore;
const manifest = new TextEncoder().encode('apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata:\n  name: web\n');

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-trust-'));
  const trust = path.join(tmp, 'trust');
  await fs.mkdir(trust);
  for (const alg of ALGS) {
    const name = `k-${alg}`;
    const { secretPath, publicPath } = await generateKey(name, alg, path.join(tmp, 'keys'));
    keys.set(alg, await readSecretKey(secretPath));
    await fs.copyFile(publicPath, path.join(trust, `${name}.pub`));
  }
  const secondPaths = await generateKey('second', 'ml-dsa-65', path.join(tmp, 'keys'));
  second = await readSecretKey(secondPaths.secretPath);
  await fs.copyFile(secondPaths.publicPath, path.join(trust, 'second.pub'));
  stranger = await readSecretKey((await generateKey('stranger', 'ml-dsa-65', path.join(tmp, 'other'))).secretPath);
  store = await loadTrustStore(trust);
});

after(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const key65 = () => keys.get('ml-dsa-65')!;
const key87 = () => keys.get('ml-dsa-87')!;
/** Rewrites fields of a signature text. */
const edit = (sigText: string, fields: Record<string, unknown>) => JSON.stringify({ ...JSON.parse(sigText), ...fields });

function assertStatus(outcome: VerifyOutcome, status: VerifyOutcome['status']) {
  assert.equal(outcome.status, status, JSON.stringify(outcome));
}

describe('sign and verify bytes', () => {
  for (const alg of ALGS) {
    test(`round trip with ${alg}`, () => {
      const key = keys.get(alg)!;
      const sig = signBytes(manifest, key);
      const parsed = JSON.parse(sig);
      assert.equal(parsed.format, 'qwamos-signature-v1');
      assert.equal(parsed.alg, alg);
      assert.equal(parsed.keyId, key.keyId);
      assert.equal(parsed.keyName, key.name);
      const outcome = verifyBytes(manifest, sig, store);
      assert.deepEqual(outcome, { status: 'verified', keyId: key.keyId, keyName: key.name, alg });
    });

    test(`one flipped byte is tampered (${alg})`, () => {
      const key = keys.get(alg)!;
      const sig = signBytes(manifest, key);
      for (const at of [0, manifest.length >> 1, manifest.length - 1]) {
        const changed = manifest.slice();
        changed[at]! ^= 0x01;
        const outcome = verifyBytes(changed, sig, store);
        assertStatus(outcome, 'tampered');
        assert.equal(outcome.keyId, key.keyId);
        assert.match((outcome as { message: string }).message, new RegExp(`signature by key ${key.keyId} does not match`));
      }
      // An appended byte (e.g. a trailing newline) is a change too.
      assertStatus(verifyBytes(new Uint8Array([...manifest, 0x0a]), sig, store), 'tampered');
    });
  }

  test('a flipped bit in the signature itself is tampered', () => {
    const sig = JSON.parse(signBytes(manifest, key65()));
    const raw = Buffer.from(sig.signature, 'base64');
    raw[100]! ^= 0x80;
    assertStatus(verifyBytes(manifest, edit(JSON.stringify(sig), { signature: raw.toString('base64') }), store), 'tampered');
  });

  test('a signature by a key not in the trust store is untrusted and names the key', () => {
    const outcome = verifyBytes(manifest, signBytes(manifest, stranger), store);
    assertStatus(outcome, 'untrusted');
    assert.equal(outcome.keyId, stranger.keyId);
    assert.match((outcome as { message: string }).message, new RegExp(`untrusted key ${stranger.keyId} \\(not in .*trust\\)`));
  });

  test('the name reported comes from the trust store, not from the signature', () => {
    const sig = edit(signBytes(manifest, key65()), { keyName: 'someone-else' });
    const outcome = verifyBytes(manifest, sig, store);
    assert.equal(outcome.status === 'verified' && outcome.keyName, key65().name);
  });

  test('no signature is unsigned', () => {
    assertStatus(verifyBytes(manifest, undefined, store), 'unsigned');
  });

  test('an empty trust store trusts nothing', () => {
    const empty: TrustStore = { dir: '/nowhere', keys: new Map(), warnings: [] };
    assertStatus(verifyBytes(manifest, signBytes(manifest, key65()), empty), 'untrusted');
  });
});

describe('malformed signatures are outcomes, never exceptions', () => {
  const good = () => signBytes(manifest, key65());
  const cases: Array<[string, () => string]> = [
    ['truncated text', () => good().slice(0, good().length >> 1)],
    ['truncated signature', () => edit(good(), { signature: JSON.parse(good()).signature.slice(0, 1000) })],
    ['signature shortened by 4 base64 chars', () => edit(good(), { signature: JSON.parse(good()).signature.slice(4) })],
    ['empty text', () => ''],
    ['garbage text', () => 'hello, this is not a signature'],
    ['binary junk', () => String.fromCharCode(...Array.from({ length: 300 }, (_, i) => (i * 37) % 256))],
    ['a JSON array', () => '[1,2,3]'],
    ['JSON null', () => 'null'],
    ['bad base64', () => edit(good(), { signature: '!!!not-base64!!!' })],
    ['non-canonical base64', () => edit(good(), { signature: `${JSON.parse(good()).signature.slice(0, -4)}A===` })],
    ['signature not a string', () => edit(good(), { signature: 42 })],
    ['unknown algorithm', () => edit(good(), { alg: 'rsa-2048' })],
    ['unknown format', () => edit(good(), { format: 'qwamos-signature-v9' })],
    ['missing format', () => edit(good(), { format: undefined })],
    ['key id not hex', () => edit(good(), { keyId: 'ZZ'.repeat(16) })],
    ['key id too short', () => edit(good(), { keyId: key65().keyId.slice(2) })],
    ['hostile key name', () => edit(good(), { keyName: 'evil\nname' })],
    ['over 64 KiB', () => edit(good(), { padding: 'x'.repeat(70 * 1024) })],
    ['deeply nested', () => '['.repeat(60000)],
  ];
  for (const [name, make] of cases) {
    test(name, () => {
      const outcome = verifyBytes(manifest, make(), store);
      assertStatus(outcome, 'malformed');
      assert.match((outcome as { message: string }).message, /^malformed signature \(.+\)$/);
      assert.doesNotMatch((outcome as { message: string }).message, /\n/);
    });
  }

  test('a signature claiming ml-dsa-87 with an ml-dsa-65 key id is refused', () => {
    // Relabelled 65 signature: wrong length for 87.
    const relabelled = edit(good(), { alg: 'ml-dsa-87' });
    assertStatus(verifyBytes(manifest, relabelled, store), 'malformed');
    // A real 87-sized signature under the 65 key's id: caught by the key's algorithm.
    const crossed = edit(signBytes(manifest, key87()), { keyId: key65().keyId });
    const outcome = verifyBytes(manifest, crossed, store);
    assertStatus(outcome, 'malformed');
    assert.match((outcome as { message: string }).message, /claims ml-dsa-87 but key [0-9a-f]{32} is ml-dsa-65/);
  });

  test('a signature relabelled with another trusted key id of the same algorithm is tampered', () => {
    const sig = edit(good(), { keyId: second.keyId, keyName: second.name });
    const outcome = verifyBytes(manifest, sig, store);
    assertStatus(outcome, 'tampered');
    assert.equal(outcome.keyId, second.keyId);
  });
});

describe('verifyFile', () => {
  test('signature moved to another file is tampered', async () => {
    const a = path.join(tmp, 'a.yaml');
    const b = path.join(tmp, 'b.yaml');
    await fs.writeFile(a, manifest);
    await fs.writeFile(b, 'apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata:\n  name: evil\n');
    await fs.writeFile(`${a}.sig`, signBytes(manifest, key65()));
    assertStatus(await verifyFile(a, store), 'verified');
    await fs.copyFile(`${a}.sig`, `${b}.sig`);
    assertStatus(await verifyFile(b, store), 'tampered');
  });

  test('missing FILE.sig is unsigned and names it', async () => {
    const c = path.join(tmp, 'c.yaml');
    await fs.writeFile(c, manifest);
    const outcome = await verifyFile(c, store);
    assertStatus(outcome, 'unsigned');
    assert.equal((outcome as { message: string }).message, `unsigned (no ${c}.sig)`);
  });

  test('binary junk, a directory, or a FIFO as FILE.sig is malformed', async () => {
    const d = path.join(tmp, 'd.yaml');
    await fs.writeFile(d, manifest);
    await fs.writeFile(`${d}.sig`, new Uint8Array([0xff, 0xfe, 0x00, 0x80, 0xc3]));
    assertStatus(await verifyFile(d, store), 'malformed');
    await fs.writeFile(`${d}.sig`, new Uint8Array(100 * 1024).fill(0x41));
    assertStatus(await verifyFile(d, store), 'malformed');
    await fs.rm(`${d}.sig`);
    await fs.mkdir(`${d}.sig`);
    assertStatus(await verifyFile(d, store), 'malformed');
    await fs.rmdir(`${d}.sig`);
    execFileSync('mkfifo', [`${d}.sig`]);
    assertStatus(await verifyFile(d, store), 'malformed'); // and does not hang
  });

  test('uses the given bytes instead of rereading the file', async () => {
    const e = path.join(tmp, 'e.yaml');
    await fs.writeFile(e, manifest);
    await fs.writeFile(`${e}.sig`, signBytes(manifest, key65()));
    assertStatus(await verifyFile(e, store, new TextEncoder().encode('other bytes')), 'tampered');
  });

  test('a missing FILE throws a one-line UserError', async () => {
    await assert.rejects(verifyFile(path.join(tmp, 'nope.yaml'), store), (err) => err instanceof UserError && /no such file/.test(err.message));
  });
});

describe('keys', () => {
  test('secret key file is 0600, holds a 32-byte seed, and reloads to the same key', async () => {
    const dir = path.join(tmp, 'k1');
    const { keyId, secretPath, publicPath } = await generateKey('alice', 'ml-dsa-65', dir);
    assert.equal((await fs.stat(secretPath)).mode & 0o777, 0o600);
    assert.equal((await fs.stat(dir)).mode & 0o777, 0o700);
    const obj = JSON.parse(await fs.readFile(secretPath, 'utf8'));
    assert.equal(obj.format, 'qwamos-secret-key-v1');
    assert.equal(Buffer.from(obj.seed, 'base64').length, 32);
    const secret = await readSecretKey(secretPath);
    const pub = await readPublicKey(publicPath);
    assert.equal(secret.keyId, keyId);
    assert.equal(pub.keyId, keyId);
    assert.equal(keyIdOf('ml-dsa-65', pub.publicKey), keyId);
    assert.match(keyId, /^[0-9a-f]{32}$/);
    assert.deepEqual(secret.publicKey, pub.publicKey);
  });

  test('refuses to overwrite an existing key unless forced', async () => {
    const dir = path.join(tmp, 'k2');
    const first = await generateKey('bob', 'ml-dsa-65', dir);
    const before = await fs.readFile(first.secretPath, 'utf8');
    await assert.rejects(generateKey('bob', 'ml-dsa-87', dir), (err) => err instanceof UserError && /already exists/.test(err.message));
    assert.equal(await fs.readFile(first.secretPath, 'utf8'), before);
    assert.equal((await readPublicKey(first.publicPath)).keyId, first.keyId);
    const forced = await generateKey('bob', 'ml-dsa-87', dir, { force: true });
    assert.notEqual(forced.keyId, first.keyId);
    assert.equal((await readSecretKey(forced.secretPath)).alg, 'ml-dsa-87');
    assert.equal((await fs.stat(forced.secretPath)).mode & 0o777, 0o600);
    assert.deepEqual((await fs.readdir(dir)).sort(), ['bob.key', 'bob.pub']); // no temp files left
  });

  test('an existing NAME.pub alone also blocks keygen, leaving no stray secret', async () => {
    const dir = path.join(tmp, 'k3');
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'carol.pub'), 'someone else');
    await assert.rejects(generateKey('carol', 'ml-dsa-65', dir), UserError);
    assert.deepEqual(await fs.readdir(dir), ['carol.pub']);
  });

  test('rejects unsafe names', async () => {
    for (const name of ['', '../x', 'A', '-x', '.x', 'a/b', 'a b', 'x'.repeat(64), 'é']) {
      await assert.rejects(generateKey(name, 'ml-dsa-65', path.join(tmp, 'k4')), UsageError, name);
    }
  });

  test('refuses a secret key readable by group or others', async () => {
    const { secretPath } = await generateKey('dave', 'ml-dsa-65', path.join(tmp, 'k5'));
    for (const mode of [0o640, 0o604, 0o660]) {
      await fs.chmod(secretPath, mode);
      await assert.rejects(readSecretKey(secretPath), (err) => err instanceof UserError && /too open/.test(err.message));
    }
    await fs.chmod(secretPath, 0o400);
    assert.equal((await readSecretKey(secretPath)).name, 'dave');
  });

  test('a secret key file whose key id does not match its seed is refused', async () => {
    const { secretPath } = await generateKey('erin', 'ml-dsa-65', path.join(tmp, 'k6'));
    const obj = JSON.parse(await fs.readFile(secretPath, 'utf8'));
    await fs.writeFile(secretPath, JSON.stringify({ ...obj, alg: 'ml-dsa-87' }));
    await assert.rejects(readSecretKey(secretPath), /does not match/);
  });
});

describe('trust store', () => {
  test('a missing directory is an empty store', async () => {
    const s = await loadTrustStore(path.join(tmp, 'does-not-exist'));
    assert.equal(s.keys.size, 0);
    assert.deepEqual(s.warnings, []);
  });

  test('hostile and malformed entries are skipped with a warning', async () => {
    const dir = path.join(tmp, 'hostile');
    await fs.mkdir(dir);
    const good = (await generateKey('good', 'ml-dsa-65', path.join(tmp, 'k7'))).publicPath;
    await fs.copyFile(good, path.join(dir, 'good.pub'));
    await fs.copyFile(good, path.join(dir, 'good-copy.pub')); // duplicate key
    const pub = JSON.parse(await fs.readFile(good, 'utf8'));
    // Claims the trusted key65's id while carrying another public key.
    await fs.writeFile(path.join(dir, 'impostor.pub'), JSON.stringify({ ...pub, keyId: key65().keyId }));
    await fs.writeFile(path.join(dir, 'short.pub'), JSON.stringify({ ...pub, publicKey: pub.publicKey.slice(0, 100) }));
    await fs.writeFile(path.join(dir, 'junk.pub'), new Uint8Array([0, 1, 2, 0xff]));
    await fs.writeFile(path.join(dir, 'big.pub'), 'x'.repeat(100 * 1024));
    await fs.mkdir(path.join(dir, 'dir.pub'));
    execFileSync('mkfifo', [path.join(dir, 'fifo.pub')]);
    await fs.symlink('/nonexistent', path.join(dir, 'dangling.pub'));
    await fs.writeFile(path.join(dir, 'notes.txt'), 'ignored: not a .pub');

    const s = await loadTrustStore(dir);
    assert.deepEqual([...s.keys.values()].map((k) => k.name), ['good']);
    assert.ok(!s.keys.has(key65().keyId));
    for (const bad of ['good-copy.pub', 'impostor.pub', 'short.pub', 'junk.pub', 'big.pub', 'dir.pub', 'fifo.pub', 'dangling.pub']) {
      assert.ok(s.warnings.some((w) => w.includes(bad)), `no warning for ${bad}: ${s.warnings.join(' | ')}`);
    }
    assert.equal(s.warnings.length, 8);
    assert.ok(s.warnings.every((w) => !w.includes('\n')));
  });
});

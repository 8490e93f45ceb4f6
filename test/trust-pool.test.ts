// The signature verification pool (worker threads) and the persistent verified-signature cache, with real
// ML-DSA keys and real files.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { generateKey, readSecretKey, type SecretKeyRecord } from '../src/trust/keys.ts';
import { signBytes, verifyBytes, verifyFile, type VerifyOutcome } from '../src/trust/signature.ts';
import { loadTrustStore, type TrustStore } from '../src/trust/truststore.ts';
import { SIGNATURE_CACHE_FORMAT, signatureCacheDir } from '../src/trust/verify-cache.ts';
import { verifyInPool, verifySignedFiles, type SignedFile } from '../src/trust/verify-pool.ts';

let tmp: string;
let trustDir: string;
let signer65: SecretKeyRecord;
let signer87: SecretKeyRecord;
let stranger: SecretKeyRecord;
let store: TrustStore;
/** The mixed set: files (with their bytes) and how many of them verify. */
let files: SignedFile[];
const VERIFIED = 10;

const manifest = (i: number) => new TextEncoder().encode(`apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata: {name: r${i}}\n`);

async function writeSigned(dir: string, name: string, bytes: Uint8Array, sig?: string | Uint8Array): Promise<SignedFile> {
  const file = path.join(dir, name);
  await fs.writeFile(file, bytes);
  if (sig !== undefined) await fs.writeFile(`${file}.sig`, sig);
  return { file, bytes };
}

/** VERIFIED good files (both algorithms), then one of each way to be refused. */
async function makeMix(dir: string): Promise<SignedFile[]> {
  await fs.mkdir(dir, { recursive: true });
  const out: SignedFile[] = [];
  for (let i = 0; i < VERIFIED; i++) {
    const key = i % 2 ? signer87 : signer65;
    out.push(await writeSigned(dir, `good${i}.yaml`, manifest(i), signBytes(manifest(i), key)));
  }
  const tamperedSig = signBytes(manifest(100), signer65);
  out.push(await writeSigned(dir, 'tampered.yaml', manifest(101), tamperedSig));
  out.push(await writeSigned(dir, 'unsigned.yaml', manifest(102)));
  out.push(await writeSigned(dir, 'untrusted.yaml', manifest(103), signBytes(manifest(103), stranger)));
  out.push(await writeSigned(dir, 'notjson.yaml', manifest(104), '{not json'));
  const badBase64 = JSON.stringify({ ...JSON.parse(signBytes(manifest(105), signer65)), signature: '%%%%' });
  out.push(await writeSigned(dir, 'badbase64.yaml', manifest(105), badBase64));
  out.push(await writeSigned(dir, 'notutf8.yaml', manifest(106), new Uint8Array([0xff, 0xfe, 0x00])));
  return out;
}

const inProcess = (set: SignedFile[], s: TrustStore = store) => Promise.all(set.map((f) => verifyFile(f.file, s, f.bytes)));
const statuses = (outcomes: VerifyOutcome[]) => outcomes.map((o) => o.status);

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-trust-pool-'));
  trustDir = path.join(tmp, 'trust');
  await fs.mkdir(trustDir);
  for (const [name, alg] of [['k65', 'ml-dsa-65'], ['k87', 'ml-dsa-87']] as const) {
    const paths = await generateKey(name, alg, path.join(tmp, 'keys'));
    await fs.copyFile(paths.publicPath, path.join(trustDir, `${name}.pub`));
  }
  signer65 = await readSecretKey(path.join(tmp, 'keys', 'k65.key'));
  signer87 = await readSecretKey(path.join(tmp, 'keys', 'k87.key'));
  stranger = await readSecretKey((await generateKey('stranger', 'ml-dsa-65', path.join(tmp, 'other'))).secretPath);
  store = await loadTrustStore(trustDir);
  files = await makeMix(path.join(tmp, 'mix'));
});

after(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('verification pool', () => {
  test('worker results equal in-process verification for verified, tampered, unsigned, untrusted and malformed files', async () => {
    const expected = await inProcess(files);
    assert.deepEqual(statuses(expected), [
      ...Array<string>(VERIFIED).fill('verified'), 'tampered', 'unsigned', 'untrusted', 'malformed', 'malformed', 'malformed',
    ]);
    let split = { workerBatches: 0, hereBatches: 0, fallbackBatches: -1 };
    const { outcomes, checked } = await verifySignedFiles(files, store, { pool: { size: 2, inProcessMax: 0, onDone: (s) => (split = s) } });
    assert.deepEqual(outcomes, expected);
    // 14 checks in batches of 2: each answered once, by a worker or this thread.
    assert.equal(split.workerBatches + split.hereBatches + split.fallbackBatches, 7, JSON.stringify(split));
    assert.equal(checked, files.length - 2); // the unsigned and the non-UTF-8 .sig need no check
  });

  test('verifyInPool gives verifyBytes outcomes in order, with more batches than workers', async () => {
    const jobs = Array.from({ length: 40 }, (_, i) => {
      const bytes = manifest(i);
      const sigText = signBytes(i % 5 === 0 ? manifest(i + 1000) : bytes, i % 7 === 0 ? stranger : signer65);
      return { bytes, sigText };
    });
    const expected = jobs.map((j) => verifyBytes(j.bytes, j.sigText, store));
    assert.ok(expected.some((o) => o.status === 'tampered') && expected.some((o) => o.status === 'untrusted'));
    let split = { workerBatches: 0, hereBatches: 0, fallbackBatches: -1 };
    assert.deepEqual(await verifyInPool(jobs, store, { size: 3, inProcessMax: 0, onDone: (s) => (split = s) }), expected);
    // 40 jobs for 3 threads: batches of 2, shared by this thread and two workers.
    assert.equal(split.workerBatches + split.hereBatches + split.fallbackBatches, 20);
  });

  test('this thread verifies alongside the workers, so a pool is never slower than this thread alone', async () => {
    const jobs = Array.from({ length: 24 }, (_, i) => ({ bytes: manifest(i), sigText: signBytes(manifest(i), signer65) }));
    // A worker that never answers: this thread alone verifies everything, and the call still returns.
    const script = path.join(tmp, 'worker-silent.mjs');
    await fs.writeFile(script, "import { parentPort } from 'node:worker_threads'; parentPort.on('message', () => {});");
    let split = { workerBatches: -1, hereBatches: 0, fallbackBatches: -1 };
    const silent = verifyInPool(jobs, store, { size: 2, inProcessMax: 0, workerScript: new URL(`file://${script}`), onDone: (s) => (split = s) });
    const outcomes = await Promise.race([silent, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 20_000))]);
    assert.notEqual(outcomes, 'hung');
    assert.deepEqual(outcomes, jobs.map((j) => verifyBytes(j.bytes, j.sigText, store)));
    assert.equal(split.workerBatches, 0);
    assert.ok(split.hereBatches > 0);
  });

  test('a worker that exits, throws on load or answers nonsense hands its files back to this thread', async () => {
    const expected = await inProcess(files);
    const scripts = {
      exits: "import { parentPort } from 'node:worker_threads'; parentPort.on('message', () => process.exit(3));",
      throws: "throw new Error('broken worker');",
      nonsense: "import { parentPort } from 'node:worker_threads'; parentPort.on('message', (b) => parentPort.postMessage({ id: b.id, outcomes: [] }));",
      missing: undefined,
    };
    for (const [name, code] of Object.entries(scripts)) {
      const script = path.join(tmp, `worker-${name}.mjs`);
      if (code) await fs.writeFile(script, code);
      let split = { workerBatches: -1, hereBatches: 0, fallbackBatches: 0 };
      const pool = { size: 2, inProcessMax: 0, workerScript: new URL(`file://${script}`), onDone: (s: typeof split) => (split = s) };
      const { outcomes } = await verifySignedFiles(files, store, { pool });
      assert.deepEqual(outcomes, expected, name);
      assert.equal(split.workerBatches, 0, name);
      assert.ok(split.hereBatches + split.fallbackBatches > 0, name);
    }
  });
});

describe('verified-signature cache', () => {
  let n = 0;
  /** A fresh state dir (exists, as the daemon's does) and its cache dir. */
  async function stateDir(): Promise<string> {
    const dir = path.join(tmp, `state${n++}`);
    await fs.mkdir(dir);
    return signatureCacheDir(dir);
  }
  const cached = async (cacheDir: string) => JSON.parse(await fs.readFile(path.join(cacheDir, 'index.json'), 'utf8')).keys as string[];
  const REFUSED_CHECKS = 4; // tampered, untrusted, not JSON, bad base64: checked every time

  test('an unchanged file is not verified again; only verified outcomes are stored, privately', async () => {
    const cacheDir = await stateDir();
    const cold = await verifySignedFiles(files, store, { cacheDir });
    assert.equal(cold.checked, VERIFIED + REFUSED_CHECKS);
    assert.equal((await cached(cacheDir)).length, VERIFIED, 'refused files are not cached');
    assert.equal((await fs.stat(cacheDir)).mode & 0o777, 0o700);
    assert.equal((await fs.stat(path.join(cacheDir, 'index.json'))).mode & 0o777, 0o600);

    const warm = await verifySignedFiles(files, store, { cacheDir, pool: { size: 2, inProcessMax: 0 } });
    assert.equal(warm.checked, REFUSED_CHECKS, 'only the refused files are checked again');
    assert.deepEqual(warm.outcomes, await inProcess(files), 'a cache hit gives the outcome a full check gives');
  });

  test('a changed file or a changed signature is verified again', async () => {
    const cacheDir = await stateDir();
    const dir = path.join(tmp, 'changes');
    const set = await makeMix(dir);
    await verifySignedFiles(set, store, { cacheDir });

    // The file changed (and signed again, so it still verifies): checked again.
    const changed = manifest(500);
    set[0] = await writeSigned(dir, 'good0.yaml', changed, signBytes(changed, signer65));
    let run = await verifySignedFiles(set, store, { cacheDir });
    assert.equal(run.checked, REFUSED_CHECKS + 1);
    assert.equal(run.outcomes[0]!.status, 'verified');

    // Only the file changed, its .sig not: tampered, never served from the cache.
    await fs.writeFile(set[1]!.file, changed);
    set[1] = { file: set[1]!.file, bytes: changed };
    run = await verifySignedFiles(set, store, { cacheDir });
    assert.equal(run.checked, REFUSED_CHECKS + 1);
    assert.equal(run.outcomes[1]!.status, 'tampered');

    // The same bytes signed again by the other trusted key: a new signature, checked, signer follows it.
    await fs.writeFile(`${set[2]!.file}.sig`, signBytes(set[2]!.bytes, signer87));
    run = await verifySignedFiles(set, store, { cacheDir });
    assert.equal(run.checked, REFUSED_CHECKS + 2); // set[1] is still tampered
    assert.deepEqual(run.outcomes[2], { status: 'verified', keyId: signer87.keyId, keyName: 'k87', alg: 'ml-dsa-87' });
  });

  test('a change to the trust store verifies everything again', async () => {
    const cacheDir = await stateDir();
    const trust = path.join(tmp, 'trust-changing');
    await fs.cp(trustDir, trust, { recursive: true });
    const before = await loadTrustStore(trust);
    await verifySignedFiles(files, before, { cacheDir });
    assert.equal((await verifySignedFiles(files, before, { cacheDir })).checked, REFUSED_CHECKS);

    // A key added (the stranger's): every file is checked again, and the untrusted one now verifies.
    await fs.copyFile(path.join(tmp, 'other', 'stranger.pub'), path.join(trust, 'stranger.pub'));
    const added = await loadTrustStore(trust);
    const run = await verifySignedFiles(files, added, { cacheDir });
    assert.equal(run.checked, VERIFIED + REFUSED_CHECKS);
    assert.deepEqual(run.outcomes, await inProcess(files, added));

    // A key removed: nothing cached under the old store counts; files by the removed key are untrusted.
    await fs.rm(path.join(trust, 'k87.pub'));
    const removed = await loadTrustStore(trust);
    const after = await verifySignedFiles(files, removed, { cacheDir });
    assert.equal(after.checked, VERIFIED + REFUSED_CHECKS);
    assert.deepEqual(after.outcomes, await inProcess(files, removed));
    assert.equal(after.outcomes.filter((o) => o.status === 'untrusted').length, VERIFIED / 2);
  });

  test('a corrupt entry or index is ignored, never trusted', async () => {
    const cacheDir = await stateDir();
    await verifySignedFiles(files, store, { cacheDir });
    const keys = await cached(cacheDir);
    const index = path.join(cacheDir, 'index.json');

    // Two entries damaged (one truncated, one not a string): those two files are verified again.
    const damaged = [keys[0]!.slice(0, 40), 42, ...keys.slice(2)];
    await fs.writeFile(index, JSON.stringify({ format: SIGNATURE_CACHE_FORMAT, keys: damaged }));
    assert.equal((await verifySignedFiles(files, store, { cacheDir })).checked, REFUSED_CHECKS + 2);

    // An index that is not JSON: everything is verified again, and the index is rewritten whole.
    await fs.writeFile(index, '{"format": "qwamos-signature-cache-v1", "keys": [');
    const run = await verifySignedFiles(files, store, { cacheDir });
    assert.equal(run.checked, VERIFIED + REFUSED_CHECKS);
    assert.deepEqual(run.outcomes, await inProcess(files));
    assert.equal((await cached(cacheDir)).length, VERIFIED);

    // An index others could have written is not trusted.
    await fs.chmod(index, 0o666);
    assert.equal((await verifySignedFiles(files, store, { cacheDir })).checked, VERIFIED + REFUSED_CHECKS);
  });

  test('a cache directory others could write is not used', async () => {
    const cacheDir = await stateDir();
    await verifySignedFiles(files, store, { cacheDir });
    // Anyone able to write the cache could make a tampered file pass the ML-DSA check: it must stay private.
    await fs.chmod(cacheDir, 0o777);
    try {
      assert.equal((await verifySignedFiles(files, store, { cacheDir })).checked, VERIFIED + REFUSED_CHECKS);
    } finally {
      await fs.chmod(cacheDir, 0o700);
    }
    assert.equal((await verifySignedFiles(files, store, { cacheDir })).checked, REFUSED_CHECKS);
  });

  test('no state dir: no cache is created and every file is verified', async () => {
    const cacheDir = signatureCacheDir(path.join(tmp, 'no-such-state'));
    for (let i = 0; i < 2; i++) assert.equal((await verifySignedFiles(files, store, { cacheDir })).checked, VERIFIED + REFUSED_CHECKS);
    await assert.rejects(fs.stat(path.join(tmp, 'no-such-state')), { code: 'ENOENT' });
  });
});

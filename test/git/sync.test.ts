// A git source pass end to end, short of applying: real repositories (git CLI), served over a local
// `git http-backend` or read directly, signed with real ML-DSA keys, loaded whole or refused.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { syncSource, type AppliedState, type SyncResult } from '../../src/git/sync.ts';
import type { SignatureCache, Verify } from '../../src/git/revision.ts';
import type { GitSourceSpec } from '../../src/resources/types.ts';
import { writeIndex } from '../../src/trust/index-file.ts';
import { generateKey, readSecretKey, type SecretKeyRecord } from '../../src/trust/keys.ts';
import { signBytes, verifyBytes } from '../../src/trust/signature.ts';
import { loadTrustStore, type TrustStore } from '../../src/trust/truststore.ts';
import { startGitServer, type GitServer } from '../helpers/git-server.ts';
import { TestRepo } from './repo.ts';

let tmp: string;
let server: GitServer;
let key: SecretKeyRecord;
let store: TrustStore;
let counter = 0;

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-git-sync-'));
  const { secretPath, publicPath } = await generateKey('signer', 'ml-dsa-65', path.join(tmp, 'keys'));
  key = await readSecretKey(secretPath);
  await fs.mkdir(path.join(tmp, 'trust'));
  await fs.copyFile(publicPath, path.join(tmp, 'trust', 'signer.pub'));
  store = await loadTrustStore(path.join(tmp, 'trust'));
  server = await startGitServer({ root: path.join(tmp, 'served') });
});

after(async () => {
  await server.close();
  await fs.rm(tmp, { recursive: true, force: true });
});

const level = (name: string, n = 1) => `apiVersion: qwamos.io/v1alpha1\nkind: GpuTrustLevel\nmetadata:\n  name: ${name}\nspec:\n  level: ${n}\n`;

/** Writes a manifest and its signature into the repository's work tree. */
async function signed(repo: TestRepo, file: string, text: string): Promise<void> {
  await repo.write(file, text);
  await repo.write(`${file}.sig`, signBytes(new TextEncoder().encode(text), key));
}

async function servedRepo(): Promise<{ repo: TestRepo; url: string; name: string }> {
  const name = `s${++counter}`;
  return { repo: await TestRepo.create(path.join(tmp, 'served', name)), url: `${server.url}/${name}`, name };
}

/** Runs a pass the way the controller will: the applied state carried from one pass to the next. */
class Source {
  applied: AppliedState = {};
  cache: SignatureCache = new Map();
  verifyCalls = 0;
  constructor(readonly name: string, public spec: GitSourceSpec) {}
  async sync(): Promise<SyncResult> {
    const verify: Verify = (bytes, sig, s) => {
      this.verifyCalls++;
      return verifyBytes(bytes, sig, s);
    };
    const result = await syncSource({
      name: this.name, spec: this.spec, stateDir: path.join(tmp, 'state'), applied: this.applied, store,
      signatureCache: this.cache, validate: { imageRoot: tmp, prefix: 'qt' }, verify,
    });
    if (result.status === 'ready') {
      this.applied = {
        commit: result.commit,
        ...(result.load.serial !== undefined ? { serial: result.load.serial } : {}),
        ...(result.load.indexDigest !== undefined ? { indexDigest: result.load.indexDigest } : {}),
        ...(result.acceptedRollback ? { consumedAcceptRevision: result.commit } : this.applied.consumedAcceptRevision ? { consumedAcceptRevision: this.applied.consumedAcceptRevision } : {}),
      };
    }
    return result;
  }
}

function ready(result: SyncResult): Extract<SyncResult, { status: 'ready' }> {
  assert.equal(result.status, 'ready', JSON.stringify(result));
  return result as Extract<SyncResult, { status: 'ready' }>;
}

function refused(result: SyncResult, condition: string, file?: string): Extract<SyncResult, { status: 'failed' }> {
  assert.equal(result.status, 'failed', JSON.stringify(result));
  const f = result as Extract<SyncResult, { status: 'failed' }>;
  assert.equal(f.condition, condition, f.message);
  if (file !== undefined) assert.equal(f.error?.file, file, f.message);
  return f;
}

describe('a git source pass', () => {
  test('over http: a signed revision loads whole; the same commit again is unchanged; only changed files are verified again', async () => {
    const { repo, url, name } = await servedRepo();
    for (let i = 0; i < 5; i++) await signed(repo, `clusters/a/l${i}.yaml`, level(`l${i}`));
    await repo.write('clusters/a/notes.md', 'not a manifest\n');
    await signed(repo, 'elsewhere/x.yaml', level('x'));
    const first = await repo.commit('five levels');
    const source = new Source(name, { url, ref: { branch: 'main' }, path: 'clusters/a' });
    const loaded = ready(await source.sync());
    assert.equal(loaded.revision, `main@sha1:${first}`);
    assert.deepEqual(loaded.load.resources.map((r) => r.key).sort(), ['GpuTrustLevel/l0', 'GpuTrustLevel/l1', 'GpuTrustLevel/l2', 'GpuTrustLevel/l3', 'GpuTrustLevel/l4']);
    assert.equal(loaded.load.resources[0]!.file, 'clusters/a/l0.yaml');
    assert.match(loaded.load.digest, /^sha256:[0-9a-f]{64}$/);
    assert.equal(source.verifyCalls, 5);
    assert.equal((await source.sync()).status, 'unchanged');

    await signed(repo, 'clusters/a/l3.yaml', level('l3', 3));
    const second = await repo.commit('one changed');
    const next = ready(await source.sync());
    assert.equal(next.commit, second);
    assert.equal(source.verifyCalls, 6, 'only the changed file was verified again');
    assert.equal(next.load.verified, 1);
    assert.notEqual(next.load.digest, loaded.load.digest);
  });

  test('a tampered or unsigned file refuses the whole revision, naming the file', async () => {
    const repo = await TestRepo.create(path.join(tmp, 'local', `t${++counter}`));
    await signed(repo, 'm/a.yaml', level('a'));
    await signed(repo, 'm/b.yaml', level('b'));
    await repo.commit('good');
    const source = new Source('tamper', { url: repo.dir, path: 'm' });
    ready(await source.sync());
    await repo.write('m/b.yaml', level('b', 4)); // changed without re-signing
    await signed(repo, 'm/c.yaml', level('c'));
    const bad = await repo.commit('tampered');
    const r = refused(await source.sync(), 'VerificationFailed', 'm/b.yaml');
    assert.equal(r.error?.key, 'signature');
    assert.match(r.message, new RegExp(`^sha1:${bad}: m/b\\.yaml: signature: tampered \\(signature by key ${key.keyId}`));
    assert.notEqual(source.applied.commit, bad, 'nothing of the revision is in force');

    await signed(repo, 'm/b.yaml', level('b', 4));
    await repo.write('m/d.yaml', level('d'));
    await repo.commit('unsigned');
    const u = refused(await source.sync(), 'VerificationFailed', 'm/d.yaml');
    assert.match(u.error!.reason, /^unsigned/);
  });

  test('a signed but invalid manifest is refused naming the file and the resource', async () => {
    const repo = await TestRepo.create(path.join(tmp, 'local', `v${++counter}`));
    await signed(repo, 'a.yaml', level('a'));
    await signed(repo, 'b.yaml', level('a', 2)); // the same resource twice
    await repo.commit('duplicate');
    const r = refused(await new Source('invalid', { url: repo.dir }).sync(), 'VerificationFailed', 'b.yaml');
    assert.equal(r.error?.key, 'GpuTrustLevel/a');
    assert.match(r.error!.reason, /declared twice/);
  });

  test('a force-push to an older commit is refused as a rollback, then accepted once through acceptRevision', async () => {
    const { repo, url, name } = await servedRepo();
    await signed(repo, 'a.yaml', level('a', 1));
    const c1 = await repo.commit('1');
    await signed(repo, 'a.yaml', level('a', 2));
    const c2 = await repo.commit('2');
    const source = new Source(name, { url });
    assert.equal(ready(await source.sync()).commit, c2);
    await repo.git('reset', '-q', '--hard', c1); // what a force-push of an older state looks like to a fetcher
    const r = refused(await source.sync(), 'RollbackRefused');
    assert.ok(r.message.includes(`sha1:${c1}`) && r.message.includes(`sha1:${c2}`), r.message);
    assert.match(r.message, new RegExp(`merge base sha1:${c1}`));
    assert.equal(source.applied.commit, c2);

    source.spec = { ...source.spec, acceptRevision: c1 };
    const accepted = ready(await source.sync());
    assert.equal(accepted.commit, c1);
    assert.equal(accepted.acceptedRollback, true);

    // An orphan history is refused too, and the used acceptRevision does not let c1 through again.
    await repo.git('checkout', '-q', '--orphan', 'other');
    await signed(repo, 'a.yaml', level('a', 3));
    const orphan = await repo.commit('orphan');
    await repo.git('branch', '-q', '-f', 'main', orphan);
    await repo.git('checkout', '-q', 'main');
    const o = refused(await source.sync(), 'RollbackRefused');
    assert.match(o.message, /no common history/);
    await repo.git('reset', '-q', '--hard', c2);
    ready(await source.sync()); // c2 descends from c1
    await repo.git('reset', '-q', '--hard', c1);
    refused(await source.sync(), 'RollbackRefused');
  });

  test('an empty path is refused unless allowEmpty; a missing path is empty too', async () => {
    const repo = await TestRepo.create(path.join(tmp, 'local', `e${++counter}`));
    await signed(repo, 'm/a.yaml', level('a'));
    await repo.commit('one');
    const source = new Source('empty', { url: repo.dir, path: 'm' });
    ready(await source.sync());
    await repo.remove('m');
    await repo.write('other/readme.md', 'x\n');
    await repo.commit('emptied');
    refused(await source.sync(), 'EmptyRefused');
    source.spec = { ...source.spec, allowEmpty: true };
    assert.deepEqual(ready(await source.sync()).load.resources, []);
  });

  test('ignore leaves files out; an ignored unsigned file does not refuse the revision', async () => {
    const repo = await TestRepo.create(path.join(tmp, 'local', `i${++counter}`));
    await signed(repo, 'a.yaml', level('a'));
    await repo.write('drafts/new.yaml', level('draft'));
    await repo.write('x.test.yaml', level('t'));
    await repo.commit('drafts');
    const result = ready(await new Source('ignore', { url: repo.dir, ignore: ['drafts/', '*.test.yaml'] }).sync());
    assert.deepEqual(result.load.resources.map((r) => r.key), ['GpuTrustLevel/a']);
  });

  test('a symlink or a submodule under path refuses the revision, naming it', async () => {
    const repo = await TestRepo.create(path.join(tmp, 'local', `l${++counter}`));
    await signed(repo, 'm/a.yaml', level('a'));
    await fs.symlink('a.yaml', path.join(repo.dir, 'm', 'b.yaml'));
    await repo.commit('link');
    const r = refused(await new Source('link', { url: repo.dir, path: 'm' }).sync(), 'VerificationFailed', 'm/b.yaml');
    assert.match(r.error!.reason, /symbolic links are refused/);
  });

  test('a fetch failure is FetchFailed and names the source', async () => {
    const r = refused(await new Source('gone', { url: `${server.url}/no-such-repo`, timeout: '5s' }).sync(), 'FetchFailed');
    assert.match(r.message, /no-such-repo/);
    const local = refused(await new Source('nolocal', { url: path.join(tmp, 'nowhere') }).sync(), 'FetchFailed');
    assert.match(local.message, /is not a git repository/);
  });
});

describe('with a signed index', () => {
  async function indexedRepo() {
    const repo = await TestRepo.create(path.join(tmp, 'local', `x${++counter}`));
    await signed(repo, 'm/a.yaml', level('a', 1));
    await signed(repo, 'm/b.yaml', level('b', 1));
    await writeIndex(path.join(repo.dir, 'm'), key);
    const r1 = await repo.commit('serial 1');
    const source = new Source(`idx${counter}`, { url: repo.dir, path: 'm' });
    assert.equal(ready(await source.sync()).load.serial, 1);
    return { repo, source, r1 };
  }

  test('a deleted signed file is refused', async () => {
    const { repo, source } = await indexedRepo();
    await repo.remove('m/b.yaml');
    await repo.remove('m/b.yaml.sig');
    await repo.commit('delete b without re-signing the index');
    const r = refused(await source.sync(), 'VerificationFailed', 'm/b.yaml');
    assert.match(r.error!.reason, /^missing/);
  });

  test('an older signed copy of one file is refused', async () => {
    const { repo, source, r1 } = await indexedRepo();
    await signed(repo, 'm/a.yaml', level('a', 2));
    await writeIndex(path.join(repo.dir, 'm'), key);
    await repo.commit('serial 2');
    ready(await source.sync());
    await repo.git('checkout', '-q', r1, '--', 'm/a.yaml', 'm/a.yaml.sig'); // validly signed, but old
    await repo.commit('replay old a');
    const r = refused(await source.sync(), 'VerificationFailed', 'm/a.yaml');
    assert.match(r.error!.reason, /does not match the signed index/);
  });

  test('files mixed from two revisions are refused', async () => {
    const { repo, source, r1 } = await indexedRepo();
    await signed(repo, 'm/a.yaml', level('a', 2));
    await signed(repo, 'm/b.yaml', level('b', 2));
    await writeIndex(path.join(repo.dir, 'm'), key);
    await repo.commit('serial 2');
    // New a and index, old b: every file is signed, the mix never was.
    await repo.git('checkout', '-q', r1, '--', 'm/b.yaml', 'm/b.yaml.sig');
    await repo.commit('mixed');
    refused(await source.sync(), 'VerificationFailed', 'm/b.yaml');
  });

  test('a commit that leaves the index alone keeps its serial', async () => {
    const { repo, source } = await indexedRepo();
    await repo.write('README.md', 'outside path\n');
    const next = await repo.commit('docs only');
    assert.equal(ready(await source.sync()).commit, next);
  });

  test('an added file that the index does not list is refused', async () => {
    const { repo, source } = await indexedRepo();
    await signed(repo, 'm/c.yaml', level('c'));
    await repo.commit('c without the index');
    const r = refused(await source.sync(), 'VerificationFailed', 'm/c.yaml');
    assert.match(r.error!.reason, /not in the signed index/);
  });

  test('an index whose serial is not above the applied one is refused; an unsigned or removed index too', async () => {
    const { repo, source } = await indexedRepo();
    await signed(repo, 'm/a.yaml', level('a', 3));
    await writeIndex(path.join(repo.dir, 'm'), key, 5);
    await repo.commit('serial 5');
    assert.equal(ready(await source.sync()).load.serial, 5);
    const old = await fs.readFile(path.join(repo.dir, 'm', 'qwamos-index.yaml'), 'utf8');
    // A signed index with serial 5 again (and 4) for new content: replaying the serial is refused.
    for (const serial of [5, 4]) {
      await signed(repo, 'm/b.yaml', level('b', serial));
      await repo.remove('m/qwamos-index.yaml');
      await writeIndex(path.join(repo.dir, 'm'), key, serial);
      await repo.commit(`serial ${serial} again`);
      const r = refused(await source.sync(), 'VerificationFailed', 'm/qwamos-index.yaml');
      assert.match(r.error!.reason, new RegExp(`serial ${serial} is not above the applied serial 5`));
    }
    assert.ok(old.includes('serial: 5'));
    await repo.write('m/qwamos-index.yaml', old.replace('serial: 5', 'serial: 9'));
    await repo.commit('edited index');
    assert.match(refused(await source.sync(), 'VerificationFailed', 'm/qwamos-index.yaml').error!.reason, /^tampered/);
    await repo.remove('m/qwamos-index.yaml');
    await repo.remove('m/qwamos-index.yaml.sig');
    await repo.commit('index removed');
    assert.match(refused(await source.sync(), 'VerificationFailed', 'm/qwamos-index.yaml').error!.reason, /had one \(serial 5\)/);
  });

  test('requireIndex refuses a revision without one', async () => {
    const repo = await TestRepo.create(path.join(tmp, 'local', `q${++counter}`));
    await signed(repo, 'a.yaml', level('a'));
    await repo.commit('no index');
    const r = refused(await new Source('require', { url: repo.dir, requireIndex: true }).sync(), 'VerificationFailed', 'qwamos-index.yaml');
    assert.match(r.error!.reason, /requires a signed index/);
  });
});

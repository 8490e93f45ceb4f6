// Integration tests of the git driver against real repositories (git CLI) and a local `git http-backend`.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  GitError, ensureMirror, fetchRef, isDescendant, localGitdir, mergeBase, readTokenFile, readTreeFiles, resolveCommit,
} from '../../src/drivers/git.ts';
import { startGitServer, type GitServer } from '../helpers/git-server.ts';
import { TestRepo } from '../git/repo.ts';

let tmp: string;
let server: GitServer;
const text = (bytes: Uint8Array) => Buffer.from(bytes).toString('utf8');
const all = () => true;

before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-git-driver-'));
  server = await startGitServer({ root: path.join(tmp, 'served') });
});

after(async () => {
  await server.close();
  await fs.rm(tmp, { recursive: true, force: true });
});

let counter = 0;
async function servedRepo(): Promise<{ repo: TestRepo; url: string }> {
  const name = `r${++counter}`;
  return { repo: await TestRepo.create(path.join(tmp, 'served', name)), url: `${server.url}/${name}` };
}

async function mirror(url: string): Promise<string> {
  const dir = path.join(tmp, 'mirrors', `m${++counter}`);
  await ensureMirror(dir, url);
  return dir;
}

async function rejectsWith(promise: Promise<unknown>, reason: string, pattern?: RegExp): Promise<GitError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof GitError, `expected a GitError, got ${err}`);
    assert.equal(err.reason, reason, err.message);
    if (pattern) assert.match(err.message, pattern);
    return err;
  }
  assert.fail(`expected a GitError (${reason})`);
}

describe('fetch over http', () => {
  test('fetches a branch and reads the files under a directory from the object store', async () => {
    const { repo, url } = await servedRepo();
    await repo.write('manifests/a.yaml', 'a: 1\n');
    await repo.write('manifests/sub/b.yml', 'b: 2\n');
    await repo.write('manifests/.hidden.yaml', 'hidden\n');
    await repo.write('manifests/README.md', 'not wanted\n');
    await repo.write('other/c.yaml', 'c: 3\n');
    const commit = await repo.commit('first');
    const gitdir = await mirror(url);
    const cache = {};
    assert.equal(await fetchRef({ gitdir, url, remoteRef: 'refs/heads/main', timeoutMs: 10_000, cache }), commit);
    const files = await readTreeFiles({ gitdir, commit, dir: 'manifests', want: (p) => p.endsWith('.yaml') || p.endsWith('.yml'), maxBytes: 1024, cache });
    assert.deepEqual(files?.map((f) => [f.path, text(f.bytes)]), [['a.yaml', 'a: 1\n'], ['sub/b.yml', 'b: 2\n']]);
    assert.equal(await readTreeFiles({ gitdir, commit, dir: 'missing', want: all, maxBytes: 1024, cache }), null);
    await rejectsWith(readTreeFiles({ gitdir, commit, dir: 'manifests', want: all, maxBytes: 4, cache }), 'too-large', /manifests\/README\.md/);
  });

  test('HEAD and an annotated tag resolve to their commit', async () => {
    const { repo, url } = await servedRepo();
    await repo.write('a.yaml', 'v1\n');
    const v1 = await repo.commit('v1');
    await repo.git('tag', '-a', 'v1', '-m', 'release 1');
    await repo.write('a.yaml', 'v2\n');
    const v2 = await repo.commit('v2');
    const gitdir = await mirror(url);
    assert.equal(await fetchRef({ gitdir, url, remoteRef: 'refs/tags/v1', timeoutMs: 10_000, cache: {} }), v1);
    assert.equal(await fetchRef({ gitdir, url, remoteRef: 'HEAD', timeoutMs: 10_000, cache: {} }), v2);
  });

  test('an empty repository fetches as null; a missing branch is not-found', async () => {
    const { repo, url } = await servedRepo();
    const gitdir = await mirror(url);
    assert.equal(await fetchRef({ gitdir, url, remoteRef: 'refs/heads/main', timeoutMs: 10_000, cache: {} }), null);
    await repo.write('a.yaml', 'a\n');
    await repo.commit('first');
    await rejectsWith(fetchRef({ gitdir, url, remoteRef: 'refs/heads/nope', timeoutMs: 10_000, cache: {} }), 'not-found');
  });

  test('an incremental fetch downloads only what is new', async () => {
    const { repo, url } = await servedRepo();
    // Random content, so compression cannot hide what a fetch without "haves" would send again.
    for (let i = 0; i < 100; i++) await repo.write(`m/f${i}.yaml`, `name: file-${i}\nvalue: ${randomBytes(600).toString('base64')}\n`);
    await repo.commit('100 files');
    const gitdir = await mirror(url);
    let before = server.bytesSent;
    await fetchRef({ gitdir, url, remoteRef: 'refs/heads/main', timeoutMs: 10_000, cache: {} });
    const first = server.bytesSent - before;
    await repo.write('m/f7.yaml', 'name: changed\n');
    const second = await repo.commit('one file');
    before = server.bytesSent;
    assert.equal(await fetchRef({ gitdir, url, remoteRef: 'refs/heads/main', timeoutMs: 10_000, cache: {} }), second);
    const incremental = server.bytesSent - before;
    assert.ok(incremental * 10 < first, `incremental fetch ${incremental} bytes, first ${first} bytes`);
    const files = await readTreeFiles({ gitdir, commit: second, dir: 'm', want: (p) => p === 'f7.yaml', maxBytes: 4096, cache: {} });
    assert.equal(text(files![0]!.bytes), 'name: changed\n');
  });

  test('a server that never answers times out', async () => {
    const hanging = await startGitServer({ root: path.join(tmp, 'served') });
    hanging.hang = true;
    try {
      const url = `${hanging.url}/r1`;
      const started = Date.now();
      await rejectsWith(fetchRef({ gitdir: await mirror(url), url, remoteRef: 'refs/heads/main', timeoutMs: 300, cache: {} }), 'timeout', /timed out after 300 ms/);
      assert.ok(Date.now() - started < 3000);
      assert.ok(hanging.requests.length >= 1, 'the request reached the server');
    } finally {
      await hanging.close();
    }
  });

  test('a server that wants a token: 401 without it, a wrong one refused, the right one (bearer or basic) accepted', async () => {
    const root = path.join(tmp, 'private');
    const guarded = await startGitServer({ root, token: 'user:s3cret-token' });
    try {
      const repo = await TestRepo.create(path.join(root, 'p'));
      await repo.write('a.yaml', 'a\n');
      const commit = await repo.commit('first');
      const url = `${guarded.url}/p`;
      const gitdir = await mirror(url);
      const err = await rejectsWith(fetchRef({ gitdir, url, remoteRef: 'HEAD', timeoutMs: 10_000, cache: {} }), 'auth', /HTTP 401/);
      const wrong = await rejectsWith(fetchRef({ gitdir, url, remoteRef: 'HEAD', timeoutMs: 10_000, cache: {}, token: { scheme: 'bearer', value: 'nope' } }), 'auth');
      assert.doesNotMatch(`${err.message} ${wrong.message}`, /s3cret|nope/);
      const tokenFile = path.join(tmp, 'token');
      await fs.writeFile(tokenFile, 'user:s3cret-token\n', { mode: 0o600 });
      for (const scheme of ['bearer', 'basic'] as const) {
        const token = await readTokenFile(tokenFile, scheme);
        assert.equal(await fetchRef({ gitdir: await mirror(url), url, remoteRef: 'HEAD', timeoutMs: 10_000, cache: {}, token }), commit);
      }
    } finally {
      await guarded.close();
    }
  });

  test('a mirror follows one URL: another URL starts it afresh', async () => {
    const a = await servedRepo();
    await a.repo.write('a.yaml', 'a\n');
    const ca = await a.repo.commit('a');
    const gitdir = await mirror(a.url);
    await fetchRef({ gitdir, url: a.url, remoteRef: 'HEAD', timeoutMs: 10_000, cache: {} });
    const b = await servedRepo();
    await b.repo.write('b.yaml', 'b\n');
    await b.repo.commit('b');
    await ensureMirror(gitdir, b.url);
    await assert.rejects(resolveCommit(gitdir, ca, {}));
  });
});

describe('local repositories, read directly', () => {
  test('a work-tree repository and a bare one are found; HEAD of an empty one is null', async () => {
    const repo = await TestRepo.create(path.join(tmp, 'local', 'plain'));
    assert.equal(await localGitdir(repo.dir), path.join(repo.dir, '.git'));
    assert.equal(await resolveCommit(await localGitdir(repo.dir), 'HEAD', {}), null);
    await repo.write('a.yaml', 'a\n');
    const commit = await repo.commit('first');
    const bare = path.join(tmp, 'local', 'bare.git');
    await repo.git('clone', '-q', '--bare', repo.dir, bare);
    assert.equal(await localGitdir(bare), bare);
    assert.equal(await resolveCommit(bare, 'refs/heads/main', {}), commit);
    await rejectsWith(localGitdir(path.join(tmp, 'local')), 'not-a-repository');
  });

  test('a symlink or a submodule under the directory is refused, naming it', async () => {
    const repo = await TestRepo.create(path.join(tmp, 'local', 'links'));
    await repo.write('m/a.yaml', 'a\n');
    await fs.symlink('/etc/passwd', path.join(repo.dir, 'm', 'evil.yaml'));
    const withLink = await repo.commit('link');
    const gitdir = await localGitdir(repo.dir);
    await rejectsWith(readTreeFiles({ gitdir, commit: withLink, dir: 'm', want: all, maxBytes: 1024, cache: {} }), 'symlink', /^m\/evil\.yaml: symbolic links are refused/);
    // Outside the directory read, a symlink does not matter.
    assert.equal((await readTreeFiles({ gitdir, commit: withLink, dir: 'n', want: all, maxBytes: 1024, cache: {} })), null);
    await repo.remove('m/evil.yaml');
    await repo.git('add', '-A');
    await repo.git('update-index', '--add', '--cacheinfo', `160000,${withLink},m/vendor`);
    await repo.git('commit', '-q', '-m', 'submodule');
    await rejectsWith(readTreeFiles({ gitdir, commit: await repo.head(), dir: 'm', want: all, maxBytes: 1024, cache: {} }), 'submodule', /^m\/vendor: submodules are refused/);
  });

  test('ancestry: a commit descends from itself and its parents; diverged branches have a merge base', async () => {
    const repo = await TestRepo.create(path.join(tmp, 'local', 'history'));
    await repo.write('a.yaml', '1\n');
    const c1 = await repo.commit('1');
    await repo.write('a.yaml', '2\n');
    const c2 = await repo.commit('2');
    await repo.git('checkout', '-q', '-b', 'side', c1);
    await repo.write('a.yaml', 'side\n');
    const side = await repo.commit('side');
    const gitdir = await localGitdir(repo.dir);
    const cache = {};
    assert.equal(await isDescendant(gitdir, c2, c2, cache), true);
    assert.equal(await isDescendant(gitdir, c2, c1, cache), true);
    assert.equal(await isDescendant(gitdir, c1, c2, cache), false);
    assert.equal(await isDescendant(gitdir, side, c2, cache), false);
    assert.equal(await mergeBase(gitdir, side, c2, cache), c1);
    await repo.git('checkout', '-q', '--orphan', 'orphan');
    const orphan = await repo.commit('orphan');
    assert.equal(await mergeBase(gitdir, orphan, c2, cache), undefined);
  });
});

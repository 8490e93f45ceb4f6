// Git as the source of truth end to end: the real bin and daemon in a private test host, following a
// local repository of signed Route manifests. One sandbox for the whole sequence (CI time).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { listAllNetns } from '../helpers/hostns.ts';
import { Store } from '../../src/store/store.ts';
import { TestRepo } from '../git/repo.ts';
import { createSandbox, route, until, type Sandbox } from './harness.ts';

const WEBHOOK_SECRET = 'e2e webhook secret, 0600';

/** A TCP port free on 127.0.0.1 right now. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const netnsOf = async (sb: Sandbox) => (await listAllNetns()).filter((n) => n.startsWith(`${sb.host.prefix}-`)).map((n) => n.slice(sb.host.prefix.length + 1)).sort();

describe('GitSource: a local repository of signed manifests', () => {
  let sb: Sandbox;
  let repo: TestRepo;
  let daemon: ChildProcess | undefined;
  const commits: string[] = [];
  let webhookPort = 0;

  before(async () => {
    sb = await createSandbox();
    repo = await TestRepo.create(path.join(sb.dir, 'fleet'));
  });
  after(async () => {
    if (daemon && daemon.exitCode === null) {
      const exited = new Promise((r) => daemon!.once('exit', r));
      daemon.kill('SIGTERM');
      await exited;
    }
    await sb.cleanup();
  });

  /** Writes manifests into the repository and signs them with the sandbox's key (`qwamos sign`). */
  async function signed(files: Record<string, string>): Promise<void> {
    for (const [file, text] of Object.entries(files)) await repo.write(file, text);
    const r = await sb.qwamos(['sign', '-k', path.join(sb.dir, 'keys/e2e.key'), ...Object.keys(files).map((f) => path.join(repo.dir, f))]);
    assert.equal(r.exitCode, 0, r.stderr);
  }
  const status = async () => (await Store.open(sb.stateDir)).getStatus('GitSource', 'fleet');
  const conditionOf = async (type: string) => (await status())?.conditions.find((c) => c.type === type);
  async function applySource(extra = ''): Promise<void> {
    const file = await sb.manifest(
      'gitsource.yaml',
      `apiVersion: qwamos.io/v1alpha1\nkind: GitSource\nmetadata:\n  name: fleet\nspec:\n  url: ${repo.dir}\n  ref:\n    branch: main\n  path: routes\n  interval: 1h\n${extra}`,
    );
    const r = await sb.qwamos(['apply', '-f', file]);
    assert.equal(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
  }
  async function notify(): Promise<void> {
    const r = await sb.qwamos(['notify', 'gitsource/fleet']);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /^ok gitsource\/fleet$/m);
  }

  test('apply -f gitsource.yaml: the Routes of the repository converge on the host', async () => {
    await signed({ 'routes/alpha.yaml': route('alpha', 'isolated', ''), 'routes/beta.yaml': route('beta', 'direct', '10.8.0.2/24') });
    await repo.write('README.md', 'not a manifest\n');
    commits.push(await repo.commit('alpha and beta'));
    await applySource();
    assert.deepEqual(await netnsOf(sb), ['alpha', 'beta']);

    const get = await sb.qwamos(['get', 'gitsources']);
    assert.equal(get.exitCode, 0, get.stderr);
    assert.match(get.stdout, new RegExp(`GitSource\\s+fleet\\s+True\\s+Ready\\s+\\S+\\s+main@sha1:${commits[0]!.slice(0, 12)}\\s+applied revision main@sha1:${commits[0]}`));
    const wide = await sb.qwamos(['get', 'rt', '-o', 'wide']);
    assert.match(wide.stdout, new RegExp(`Route\\s+alpha\\s+True\\s+Ready.*gitsource/fleet@${commits[0]!.slice(0, 7)}`));
    const describe = await sb.qwamos(['describe', 'gitsource/fleet']);
    assert.match(describe.stdout, new RegExp(`lastAppliedRevision: main@sha1:${commits[0]}`));
    assert.match(describe.stdout, /appliedDigest: sha256:[0-9a-f]{64}/);
    assert.match(describe.stdout, /VerificationFailed\s+False/);
  });

  test('with the daemon running, a new commit converges after a notification', async () => {
    webhookPort = await freePort();
    const secretFile = path.join(sb.dir, 'webhook.secret');
    await writeFile(secretFile, `${WEBHOOK_SECRET}\n`, { mode: 0o600 });
    daemon = await sb.startDaemon(['--webhook-port', String(webhookPort), '--webhook-secret-file', secretFile]);
    await signed({ 'routes/gamma.yaml': route('gamma', 'isolated', '') });
    commits.push(await repo.commit('gamma'));
    const started = Date.now();
    await notify();
    await until('gamma converges', async () => (await netnsOf(sb)).includes('gamma'), 10_000);
    const took = Date.now() - started;
    console.log(`# commit -> notify -> Route on the host: ${took} ms`);
    assert.ok(took < 5_000, `converged in ${took} ms`);
    await until('status names the new revision', async () => (await status())?.fields.lastAppliedRevision === `main@sha1:${commits[1]}`, 5_000);
  });

  test('the loopback webhook: a bad signature is 401 and changes nothing; a valid one converges the commit', async () => {
    await signed({ 'routes/hooked.yaml': route('hooked', 'isolated', '') });
    const commit = await repo.commit('hooked');
    const body = JSON.stringify({ ref: 'refs/heads/main', after: commit });
    const hook = (signature?: string) =>
      fetch(`http://127.0.0.1:${webhookPort}/hooks/gitsource/fleet`, { method: 'POST', body, headers: signature ? { 'x-hub-signature-256': signature } : {} });
    assert.equal((await hook()).status, 401);
    assert.equal((await hook(`sha256=${createHmac('sha256', 'not the secret').update(body).digest('hex')}`)).status, 401);
    await new Promise((r) => setTimeout(r, 1500));
    assert.notEqual((await status())?.fields.lastFetchedRevision, `main@sha1:${commit}`, 'a refused webhook asked for no pass (interval 1h)');
    assert.ok(!(await netnsOf(sb)).includes('hooked'));
    const started = Date.now();
    const ok = await hook(`sha256=${createHmac('sha256', WEBHOOK_SECRET).update(body).digest('hex')}`);
    assert.equal(ok.status, 202);
    await until('hooked converges', async () => (await netnsOf(sb)).includes('hooked'), 10_000);
    console.log(`# commit -> webhook -> Route on the host: ${Date.now() - started} ms`);
    commits.push(commit);
  });

  test('a commit with one tampered file changes nothing and the status names the file', async () => {
    await repo.write('routes/beta.yaml', route('beta', 'direct', '10.8.0.3/24')); // not signed again
    await signed({ 'routes/delta.yaml': route('delta', 'isolated', '') });
    const bad = await repo.commit('tampered beta, delta');
    await notify();
    await until('refused', async () => (await conditionOf('VerificationFailed'))?.status === 'True', 10_000);
    const ready = await conditionOf('Ready');
    assert.equal(ready?.status, 'False');
    assert.match(ready!.message, new RegExp(`main@sha1:${bad}: routes/beta\\.yaml: signature: tampered`));
    assert.match(ready!.message, new RegExp(`main@sha1:${commits.at(-1)} stays in force`));
    assert.deepEqual(await netnsOf(sb), ['alpha', 'beta', 'gamma', 'hooked'], 'nothing of the bad revision is applied');
    const st = await status();
    assert.equal(st?.fields.lastAttemptedRevision, `main@sha1:${bad}`);
    assert.equal(st?.fields.lastAppliedRevision, `main@sha1:${commits.at(-1)}`);
    assert.deepEqual((st?.fields.lastError as { file: string; key: string }) && { file: (st!.fields.lastError as { file: string }).file, key: (st!.fields.lastError as { key: string }).key }, { file: 'routes/beta.yaml', key: 'signature' });
  });

  test('a force-push to an older commit is refused, then accepted once through acceptRevision (what it lacks is pruned)', async () => {
    await repo.git('reset', '-q', '--hard', commits[0]!);
    await notify();
    await until('rollback refused', async () => (await conditionOf('RollbackRefused'))?.status === 'True', 10_000);
    const refused = await conditionOf('RollbackRefused');
    assert.match(refused!.message, new RegExp(`not a descendant of the applied main@sha1:${commits.at(-1)} \\(merge base sha1:${commits[0]}\\)`));
    assert.deepEqual(await netnsOf(sb), ['alpha', 'beta', 'gamma', 'hooked']);
    const describe = await sb.qwamos(['describe', 'gitsource/fleet']);
    assert.match(describe.stdout, /RollbackRefused\s+True/);
    assert.match(describe.stdout, /history:/);

    await applySource(`  acceptRevision: "${commits[0]}"\n`);
    await until('gamma and hooked pruned', async () => (await netnsOf(sb)).join() === 'alpha,beta', 15_000);
    await until('accepted', async () => (await status())?.fields.lastAppliedRevision === `main@sha1:${commits[0]}`, 5_000);
    assert.equal((await conditionOf('RollbackRefused'))?.status, 'False');
    assert.equal((await status())?.fields.consumedAcceptRevision, commits[0]);
  });

  test('apply -f of a resource the source owns: a warned conflict, and git wins', async () => {
    const file = await sb.manifest('alpha.yaml', route('alpha', 'direct', '10.8.0.9/24'));
    const r = await sb.qwamos(['apply', '-f', file]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stderr, /^warning: Route\/alpha is applied by gitsource\/fleet: a conflict; the source applies its revision over it again at its next pass \(git wins\)$/m);
    const store = await Store.open(sb.stateDir);
    await until('the source takes alpha back', async () => (await store.getResource('Route', 'alpha'))?.source.path === 'gitsource/fleet:routes/alpha.yaml', 10_000);
    // The events are written just after the revision is stored.
    await until('a Conflict event on Route/alpha', async () => (await store.listEvents({ resource: 'Route/alpha' })).some((e) => e.reason === 'Conflict' && /git wins/.test(e.message)), 5_000);
  });

  test('a deleted file: its Route is pruned from the host and the store', async () => {
    await repo.remove('routes/beta.yaml');
    await repo.remove('routes/beta.yaml.sig');
    await repo.commit('beta removed');
    await notify();
    await until('beta pruned', async () => (await netnsOf(sb)).join() === 'alpha', 15_000);
    const store = await Store.open(sb.stateDir);
    await until('beta gone from the store', async () => (await store.getResource('Route', 'beta')) === undefined, 10_000);
    assert.ok(await store.getResource('Route', 'alpha'));
  });

  test('qwamos reconcile gitsource/fleet fetches now (handed to the running daemon)', async () => {
    await signed({ 'routes/epsilon.yaml': route('epsilon', 'isolated', '') });
    const commit = await repo.commit('epsilon');
    const r = await sb.qwamos(['reconcile', 'gitsource/fleet']);
    assert.equal(r.exitCode, 0, r.stderr);
    await until('epsilon converges', async () => (await netnsOf(sb)).includes('epsilon'), 10_000);
    await until('the status names it', async () => (await status())?.fields.lastAppliedRevision === `main@sha1:${commit}`, 5_000);
  });
});

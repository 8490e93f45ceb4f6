// GitSource validation (schema and semantic checks), the index file format and `qwamos sign --index`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { globToRegExp } from '../../src/git/ignore.ts';
import { nextPollMs } from '../../src/git/spec.ts';
import { validateSources } from '../../src/resources/validate.ts';
import { parseIndex, renderIndex } from '../../src/trust/index-file.ts';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

function check(spec: string): string[] {
  const text = `apiVersion: qwamos.io/v1alpha1\nkind: GitSource\nmetadata:\n  name: src\nspec:\n${spec}`;
  const result = validateSources([{ file: 'gs.yaml', bytes: new TextEncoder().encode(text) }], { imageRoot: '/tmp', prefix: 'qt' });
  return result.diagnostics.map((d) => d.message);
}

test('a valid GitSource gets its defaults', () => {
  const text = 'apiVersion: qwamos.io/v1alpha1\nkind: GitSource\nmetadata:\n  name: src\nspec:\n  url: https://git.example.org/fleet.git\n  ref:\n    branch: main\n  path: clusters/a\n';
  const result = validateSources([{ file: 'gs.yaml', bytes: new TextEncoder().encode(text) }], { imageRoot: '/tmp', prefix: 'qt' });
  assert.deepEqual(result.diagnostics, []);
  const spec = result.resources[0]!.resource.spec as Record<string, unknown>;
  assert.equal(spec.prune, true);
  assert.equal(spec.allowEmpty, false);
  assert.equal(spec.requireIndex, false);
  assert.equal(spec.interval, '1m');
});

test('GitSource refusals: credentials (never echoed), paths that escape, bad refs, tokens over plain http', () => {
  const creds = check('  url: https://alice:hunter2@git.example.org/x.git\n');
  assert.equal(creds.length, 1);
  assert.match(creds[0]!, /must not contain credentials/);
  assert.doesNotMatch(creds.join(' '), /hunter2/);
  assert.match(check('  url: https://git.example.org/x.git?private_token=abc\n').join(' '), /must not carry a query/);
  assert.match(check('  url: /srv/git/x\n  path: ../etc\n').join(' '), /spec\.path/);
  assert.match(check('  url: /srv/git/x\n  path: /etc\n').join(' '), /spec\.path/);
  assert.match(check('  url: /srv/../etc\n').join(' '), /must not contain '\.\.'/);
  assert.match(check('  url: file:///srv/git/x\n').join(' '), /spec\.url/);
  assert.match(check('  url: /srv/git/x\n  ref:\n    branch: a..b\n').join(' '), /contains '\.\.'/);
  assert.match(check('  url: /srv/git/x\n  ref:\n    branch: a\n    tag: b\n').join(' '), /not both/);
  assert.match(check('  url: /srv/git/x\n  tokenFile: /etc/token\n').join(' '), /only an http\(s\) source/);
  assert.match(check('  url: http://git.example.org/x\n  tokenFile: /etc/token\n').join(' '), /only sent over https/);
  assert.deepEqual(check('  url: http://127.0.0.1:8080/x\n  tokenFile: /etc/token\n'), []);
  assert.match(check('  url: /srv/git/x\n  acceptRevision: abc\n').join(' '), /40 lowercase hex/);
  assert.match(check('  url: /srv/git/x\n  interval: 0s\n').join(' '), /duration/);
  assert.match(check('  url: /srv/git/x\n  ignore: ["../x"]\n').join(' '), /relative to spec\.path/);
  assert.match(check('  url: /srv/git/x\n  bogus: 1\n').join(' '), /unknown field/);
});

test('ignore patterns', () => {
  const m = (pattern: string, p: string) => globToRegExp(pattern).test(p);
  assert.ok(m('*.test.yaml', 'a/b/x.test.yaml'));
  assert.ok(!m('*.test.yaml', 'a/b/x.yaml'));
  assert.ok(m('drafts/', 'drafts/a/b.yaml'));
  assert.ok(!m('drafts/', 'x/drafts/b.yaml'), 'a pattern with a / is anchored at spec.path');
  assert.ok(m('a/*.yaml', 'a/x.yaml'));
  assert.ok(!m('a/*.yaml', 'a/b/x.yaml'));
  assert.ok(m('a/**/x.yaml', 'a/x.yaml'));
  assert.ok(m('a/**/x.yaml', 'a/b/c/x.yaml'));
  assert.ok(!m('a.yaml', 'ba.yaml'));
});

test('the poll interval is spread by at most 10%', () => {
  assert.equal(nextPollMs({ url: '/x', interval: '10s' }, () => 0), 9000);
  assert.equal(nextPollMs({ url: '/x', interval: '10s' }, () => 1), 11000);
});

test('the index format round-trips and nothing else parses', () => {
  const index = { serial: 3, files: new Map([['b/c.yaml', 'a'.repeat(64)], ['a.yaml', 'b'.repeat(64)]]) };
  const text = renderIndex(index);
  assert.deepEqual(parseIndex(text), { serial: 3, files: new Map([['a.yaml', 'b'.repeat(64)], ['b/c.yaml', 'a'.repeat(64)]]) });
  assert.deepEqual(parseIndex(renderIndex({ serial: 0, files: new Map() })).files.size, 0);
  for (const bad of [
    text.replace('serial: 3', 'serial: -1'),
    text.replace('"a.yaml"', '"../a.yaml"'),
    text.replace('"a.yaml"', '"/a.yaml"'),
    text.replace('"a.yaml"', '"z.yaml"'), // unsorted
    text.replace('format: qwamos-index-v1', 'format: v2'),
    text.trimEnd(),
    `${text}extra: 1\n`,
  ]) assert.throws(() => parseIndex(bad), /malformed index/, bad);
});

function cli(env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['bin/qwamos.js', ...args], { cwd: repoRoot, env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

test('qwamos sign --index writes a signed index whose serial grows', async () => {
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-sign-index-'));
  try {
    const env = { QWAMOS_STATE_DIR: path.join(tmp, 'state') };
    assert.equal((await cli(env, 'keygen', 'alice', '--out', path.join(tmp, 'keys'))).code, 0);
    const key = path.join(tmp, 'keys', 'alice.key');
    const dir = path.join(tmp, 'm');
    await fs.mkdir(path.join(dir, 'sub'), { recursive: true });
    await fs.writeFile(path.join(dir, 'a.yaml'), 'a\n');
    await fs.writeFile(path.join(dir, 'sub', 'b.yml'), 'b\n');
    await fs.writeFile(path.join(dir, 'notes.md'), 'n\n');
    const first = await cli(env, 'sign', '-k', key, '--index', dir, path.join(dir, 'a.yaml'));
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /qwamos-index\.yaml: serial 1, 2 manifests, signed/);
    await fs.stat(path.join(dir, 'a.yaml.sig'));
    await fs.stat(path.join(dir, 'qwamos-index.yaml.sig'));
    const index = parseIndex(await fs.readFile(path.join(dir, 'qwamos-index.yaml'), 'utf8'));
    assert.deepEqual([...index.files.keys()], ['a.yaml', 'sub/b.yml']);
    assert.match((await cli(env, 'sign', '-k', key, '--index', dir)).stdout, /serial 2,/);
    const low = await cli(env, 'sign', '-k', key, '--index', dir, '--serial', '2');
    assert.equal(low.code, 2);
    assert.match(low.stderr, /--serial 2 is not above the serial 2/);
    assert.match((await cli(env, 'sign', '-k', key, '--index', dir, '--serial', '10')).stdout, /serial 10,/);
    assert.equal((await cli(env, 'sign', '-k', key)).code, 2);
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
});

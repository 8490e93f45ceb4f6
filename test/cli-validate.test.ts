// `qwamos validate` as users run it: the real bin, a fresh state directory per test, exit codes
// 0 (valid) / 1 (invalid) / 2 (usage), diagnostics as FILE:LINE:COL: Kind/name: message on stderr,
// and never a stack trace or a raw control character, whatever the input.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const examples = path.join(root, 'examples');
const corpus = path.join(root, 'test', 'corpus', 'invalid');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

let stateDir: string;
let work: string;

beforeEach(() => {
  stateDir = mkdtempSync(path.join(tmpdir(), 'qwamos-cli-state-'));
  work = mkdtempSync(path.join(tmpdir(), 'qwamos-cli-work-'));
});

afterEach(() => {
  rmSync(stateDir, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
});

/** Runs the real CLI; every run is checked for stack traces and raw control characters. */
function qwamos(...args: string[]): Run {
  const env: NodeJS.ProcessEnv = { ...process.env, QWAMOS_STATE_DIR: stateDir };
  for (const name of ['QWAMOS_DEBUG', 'QWAMOS_IMAGE_ROOT', 'QWAMOS_PREFIX']) delete env[name];
  const run = spawnSync(process.execPath, [path.join(root, 'bin', 'qwamos.js'), ...args], { cwd: root, env, encoding: 'utf8', timeout: 60_000 });
  const result = { status: run.status, stdout: run.stdout, stderr: run.stderr };
  const all = `${result.stdout}\n${result.stderr}`;
  assert.doesNotMatch(all, /\n\s+at /, `stack trace in output of qwamos ${args.join(' ')}:\n${all}`);
  // Lines end in \n; no other control character (C0, DEL, C1, bidi overrides) may reach a terminal.
  assert.doesNotMatch(all, /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/, `raw control character in output:\n${JSON.stringify(all)}`);
  return result;
}

/** A corpus file by its name without the number, as a path relative to the repository. */
function corpusFile(name: string): string {
  const file = readdirSync(corpus).find((f) => f.replace(/^\d+-/, '') === `${name}.yaml`);
  assert.ok(file, `no corpus file ${name}`);
  return `test/corpus/invalid/${file}`;
}

function copyExamples(to: string): string[] {
  const files = readdirSync(examples).filter((f) => f.endsWith('.yaml'));
  for (const f of files) copyFileSync(path.join(examples, f), path.join(to, f));
  return files.map((f) => path.join(to, f));
}

describe('qwamos validate', () => {
  test('exits 0 on the examples with --allow-unsigned', () => {
    const run = qwamos('validate', '-f', 'examples/', '--allow-unsigned');
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /resources in 11 files are valid/);
    assert.match(run.stderr, /examples\/vm-dev\.yaml:1:1: signature: warning: unsigned/);
  });

  test('exits 1 on an invalid file, printing FILE:LINE:COL: Kind/name: message', () => {
    const file = corpusFile('vm-cpus-zero');
    const run = qwamos('validate', '-f', file, '--allow-unsigned');
    assert.equal(run.status, 1, run.stderr);
    const lines = run.stderr.split('\n').filter((l) => !l.includes('signature: warning'));
    assert.deepEqual(lines, [`${file}:11:9: VirtualMachine/web: spec.cpus: must be at least 1 (got 0)`, '']);
  });

  test('exits 1 on a set with a cross-reference error, naming the referring field', () => {
    const file = corpusFile('vm-route-missing');
    const run = qwamos('validate', '-f', file, '--allow-unsigned');
    assert.equal(run.status, 1, run.stderr);
    assert.ok(run.stderr.includes(`${file}:23:5: VirtualMachine/web: spec.network.route: Route "wbe" does not exist\n`), run.stderr);
  });

  test('exits 1 on the whole invalid corpus, one line per problem, nothing raw', () => {
    const run = qwamos('validate', '-f', corpus, '--allow-unsigned');
    assert.equal(run.status, 1);
    for (const line of run.stderr.trimEnd().split('\n')) {
      assert.match(line, /^[^:]+:\d+:\d+: [^:]+: /, `not a diagnostic line: ${line}`);
    }
    // The terminal-escape and bidi-override cases come out escaped.
    assert.match(run.stderr, /web\\u001b\[2J/);
    assert.match(run.stderr, /web\\u202egnp\.exe/);
  });

  test('exits 1 on an unsigned file without --allow-unsigned, naming the file', () => {
    const run = qwamos('validate', '-f', 'examples/route-dev.yaml');
    assert.equal(run.status, 1);
    assert.match(run.stderr, /^examples\/route-dev\.yaml:1:1: signature: refused: unsigned/m);
    assert.match(run.stderr, /--allow-unsigned/);
  });

  test('exits 2 without -f', () => {
    const run = qwamos('validate');
    assert.equal(run.status, 2);
    assert.match(run.stderr, /-f/);
  });

  test('exits 2 on a path that does not exist', () => {
    const run = qwamos('validate', '-f', path.join(work, 'missing.yaml'));
    assert.equal(run.status, 2);
    assert.match(run.stderr, /missing\.yaml: no such file or directory/);
  });

  test('exits 2 on an unknown option', () => {
    const run = qwamos('validate', '-f', 'examples/', '--frobnicate');
    assert.equal(run.status, 2);
    assert.match(run.stderr, /unknown option '--frobnicate'/);
  });

  test('-o json is parseable JSON, valid or not', () => {
    const ok = qwamos('validate', '-f', 'examples/', '--allow-unsigned', '-o', 'json');
    assert.equal(ok.status, 0, ok.stderr);
    const good = JSON.parse(ok.stdout);
    assert.equal(good.valid, true);
    assert.equal(good.resources.length, 16);

    const bad = qwamos('validate', '-f', corpusFile('route-gateway-outside-subnet'), '--allow-unsigned', '-o', 'json');
    assert.equal(bad.status, 1);
    const report = JSON.parse(bad.stdout);
    assert.equal(report.valid, false);
    const errors = report.diagnostics.filter((d: { severity?: string }) => d.severity !== 'warning');
    assert.equal(errors.length, 1);
    assert.deepEqual(
      { line: errors[0].line, col: errors[0].col, resource: errors[0].resource },
      { line: 33, col: 3, resource: 'Route/web' },
    );
  });

  test('a file name with a newline and an escape character is printed escaped', () => {
    const dir = path.join(work, 'manifests');
    mkdirSync(dir);
    const name = 'evil\nname\u001b[31m.yaml';
    writeFileSync(path.join(dir, name), 'apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata:\n  name: web\nspec:\n  vm: web\n  mode: vpn\n');
    const run = qwamos('validate', '-f', dir, '--allow-unsigned');
    assert.equal(run.status, 1);
    assert.match(run.stderr, /evil\\u000aname\\u001b\[31m\.yaml:7:9: Route\/web: spec\.mode: must be one of/);

    const json = qwamos('validate', '-f', dir, '--allow-unsigned', '-o', 'json');
    assert.equal(JSON.parse(json.stdout).files[0], path.join(dir, name));

    const missing = qwamos('validate', '-f', path.join(work, 'gone\u001b]0;pwned\u0007.yaml'));
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /gone\\u001b\]0;pwned\\u0007\.yaml/);
  });

  test('hostile files are reported, not thrown', () => {
    writeFileSync(path.join(work, 'big.yaml'), `# ${'x'.repeat(1.1 * 1024 * 1024)}\n`);
    writeFileSync(path.join(work, 'binary.yaml'), Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0xff, 0xfe]));
    writeFileSync(path.join(work, 'empty.yaml'), '');
    writeFileSync(path.join(work, 'latin1.yaml'), Buffer.from('kind: Route\nname: caf\xe9\n', 'latin1'));
    writeFileSync(path.join(work, 'deep.yaml'), `a: ${'['.repeat(5000)}${']'.repeat(5000)}\n`);
    const run = qwamos('validate', '-f', work, '--allow-unsigned');
    assert.equal(run.status, 1);
    assert.match(run.stderr, /big\.yaml:1:1: file: file is \d+ bytes, over the 1048576-byte limit/);
    assert.match(run.stderr, /binary\.yaml:1:8: file: binary data \(NUL byte\)/);
    assert.match(run.stderr, /empty\.yaml:1:1: file: no resources in file/);
    assert.match(run.stderr, /latin1\.yaml:2:10: file: not valid UTF-8 \(byte 0xe9\)/);
    assert.match(run.stderr, /deep\.yaml:1:\d+: file: YAML: nesting exceeded/);
  });

  test('a signed set validates without --allow-unsigned; a tampered file is refused by name', () => {
    const keygen = qwamos('keygen', 'tester');
    assert.equal(keygen.status, 0, keygen.stderr);
    const files = copyExamples(work);
    const sign = qwamos('sign', '-k', path.join(stateDir, 'keys', 'tester.key'), ...files);
    assert.equal(sign.status, 0, sign.stderr);
    mkdirSync(path.join(stateDir, 'trust'), { recursive: true });
    copyFileSync(path.join(stateDir, 'keys', 'tester.pub'), path.join(stateDir, 'trust', 'tester.pub'));

    const run = qwamos('validate', '-f', work);
    assert.equal(run.status, 0, run.stderr);
    assert.equal(run.stderr, '');
    assert.match(run.stdout, /16 resources in 11 files are valid/);

    appendFileSync(path.join(work, 'route-dev.yaml'), '# an innocent-looking comment\n');
    const tampered = qwamos('validate', '-f', work, '--allow-unsigned');
    assert.equal(tampered.status, 1);
    assert.match(tampered.stderr, /route-dev\.yaml:1:1: signature: refused: tampered/);
  });
});

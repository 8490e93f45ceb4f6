// The invalid-manifest corpus: every file in test/corpus/invalid holds one mistake and says, in its
// `# expect: LINE[:COL] text` header, where it must be reported and what the message must say. Each file
// must produce exactly the expected errors: a missing one and an unexpected one both fail.
// Hostile inputs too big or too odd to keep as files are built here.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MAX_DOCUMENTS_PER_FILE, MAX_MANIFEST_BYTES } from '../src/config.ts';
import type { Diagnostic } from '../src/resources/diagnostics.ts';
import { validateSources, type ValidationResult } from '../src/resources/validate.ts';

const here = path.dirname(new URL(import.meta.url).pathname);
const corpusDir = path.join(here, 'corpus', 'invalid');
const examplesDir = path.join(here, '..', 'examples');

interface Expectation {
  line: number;
  col?: number;
  text: string;
}

let imageRoot: string;
let outside: string;

// The image root holds a directory symlink out of it (outside/) and a dangling file symlink out of
// it (guest/vmlinux-link), for the corpus cases about paths that escape.
before(() => {
  imageRoot = mkdtempSync(path.join(tmpdir(), 'qwamos-images-'));
  outside = mkdtempSync(path.join(tmpdir(), 'qwamos-outside-'));
  mkdirSync(path.join(imageRoot, 'guest'));
  mkdirSync(path.join(imageRoot, 'base'));
  symlinkSync(outside, path.join(imageRoot, 'outside'));
  symlinkSync(path.join(outside, 'vmlinux'), path.join(imageRoot, 'guest', 'vmlinux-link'));
});

after(() => {
  rmSync(imageRoot, { recursive: true, force: true });
  rmSync(outside, { recursive: true, force: true });
});

function validate(files: { file: string; bytes: Uint8Array | string }[]): ValidationResult {
  const sources = files.map((f) => ({ file: f.file, bytes: typeof f.bytes === 'string' ? Buffer.from(f.bytes) : f.bytes }));
  const result = validateSources(sources, { imageRoot, prefix: 'qw' });
  for (const d of result.diagnostics) assertWellFormed(d);
  return result;
}

function validateOne(bytes: Uint8Array | string, file = 'test.yaml'): ValidationResult {
  return validate([{ file, bytes }]);
}

/** Every diagnostic, whatever the input: a real position and a one-line, bounded message. */
function assertWellFormed(d: Diagnostic): void {
  assert.ok(Number.isInteger(d.line) && d.line >= 1, `line ${d.line} in ${JSON.stringify(d)}`);
  assert.ok(Number.isInteger(d.col) && d.col >= 1, `col ${d.col} in ${JSON.stringify(d).slice(0, 300)}`);
  assert.ok(!/[\n\r]/.test(d.message), `message spans lines: ${JSON.stringify(d.message).slice(0, 300)}`);
  assert.ok(d.message.length <= 400, `message is ${d.message.length} characters long`);
  assert.ok(d.resource.length <= 200, `resource label is ${d.resource.length} characters long`);
}

function errors(result: ValidationResult): Diagnostic[] {
  return result.diagnostics.filter((d) => d.severity !== 'warning');
}

function show(list: Diagnostic[]): string {
  return list.map((d) => `  ${d.line}:${d.col} ${d.resource}: ${d.message}`).join('\n') || '  (none)';
}

function parseExpectations(bytes: Uint8Array): Expectation[] {
  const expectations: Expectation[] = [];
  for (const line of Buffer.from(bytes).toString('latin1').split('\n')) {
    const m = /^# expect: (\d+)(?::(\d+))? (.+)$/.exec(line);
    if (!m) break;
    expectations.push({ line: Number(m[1]), ...(m[2] ? { col: Number(m[2]) } : {}), text: Buffer.from(m[3]!, 'latin1').toString('utf8') });
  }
  return expectations;
}

function matches(d: Diagnostic, e: Expectation): boolean {
  return d.line === e.line && (e.col === undefined || d.col === e.col) && `${d.resource}: ${d.message}`.includes(e.text);
}

/** Every expectation is met and every error is expected. */
function assertExactly(result: ValidationResult, expectations: Expectation[], what: string): void {
  const all = result.diagnostics;
  for (const e of expectations) {
    const where = e.col === undefined ? `${e.line}` : `${e.line}:${e.col}`;
    assert.ok(all.some((d) => matches(d, e)), `${what}: expected at ${where}: ${e.text}\ngot:\n${show(all)}`);
  }
  const unexpected = errors(result).filter((d) => !expectations.some((e) => matches(d, e)));
  assert.equal(unexpected.length, 0, `${what}: unexpected errors:\n${show(unexpected)}\nall:\n${show(all)}`);
  assert.ok(errors(result).length > 0, `${what}: no errors at all`);
}

/** Line-ending and BOM variants of a file: positions must not move. */
function variants(bytes: Buffer): [string, Buffer][] {
  const text = bytes.toString('latin1');
  const latin1 = (s: string) => Buffer.from(s, 'latin1');
  return [
    ['as is', bytes],
    ['CRLF', latin1(text.replace(/\n/g, '\r\n'))],
    ['CR only', latin1(text.replace(/\n/g, '\r'))],
    ['BOM', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), bytes])],
  ];
}

describe('invalid corpus', () => {
  const files = readdirSync(corpusDir).filter((f) => f.endsWith('.yaml')).sort();

  test('holds at least 65 focused cases, each with expectations', () => {
    assert.ok(files.length >= 65, `only ${files.length} files`);
    for (const f of files) {
      assert.match(f, /^\d{3}-[a-z0-9-]+\.yaml$/);
      assert.ok(parseExpectations(readFileSync(path.join(corpusDir, f))).length > 0, `${f} has no # expect: line`);
    }
  });

  for (const f of files) {
    test(f, () => {
      const bytes = readFileSync(path.join(corpusDir, f));
      const expectations = parseExpectations(bytes);
      for (const [name, variant] of variants(bytes)) {
        assertExactly(validateOne(variant, f), expectations, `${f} (${name})`);
      }
    });
  }
});

describe('valid examples', () => {
  test('examples/ validate with no diagnostics', () => {
    const files = readdirSync(examplesDir)
      .filter((f) => f.endsWith('.yaml'))
      .map((f) => ({ file: `examples/${f}`, bytes: readFileSync(path.join(examplesDir, f)) }));
    assert.ok(files.length > 0);
    const result = validate(files);
    assert.deepEqual(result.diagnostics, [], show(result.diagnostics));
    assert.ok(result.resources.length >= files.length);
  });

  test('every example, cut short anywhere, is reported without throwing', () => {
    for (const f of readdirSync(examplesDir).filter((x) => x.endsWith('.yaml'))) {
      const bytes = readFileSync(path.join(examplesDir, f));
      for (let cut = 0; cut < bytes.length; cut += Math.max(1, Math.floor(bytes.length / 40))) {
        validateOne(bytes.subarray(0, cut), f); // assertWellFormed checks every diagnostic
      }
    }
  });

  test('a VM name of 11 characters fits the interface names; 12 does not', () => {
    const vm = (name: string) =>
      `apiVersion: qwamos.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: ${name}\nspec:\n  boot:\n    kernel: guest/vmlinux\n`;
    assert.deepEqual(validateOne(vm('webbrowser1')).diagnostics, []);
    assertExactly(validateOne(vm('webbrowser12')), [{ line: 4, col: 3, text: 'exceed 15 bytes' }], '12 characters');
  });
});

const route = (name: string, extra = '') =>
  `apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata:\n  name: ${name}\nspec:\n  vm: ${name}\n  mode: isolated\n${extra}`;

describe('hostile input', () => {
  test('an empty file', () => {
    assertExactly(validateOne(''), [{ line: 1, col: 1, text: 'no resources in file' }], 'empty');
    assertExactly(validateOne(' \n\n\t\n'), [{ line: 1, col: 1, text: 'no resources in file' }], 'blank');
  });

  test('a file over the size limit is refused before parsing', () => {
    const big = `# ${'x'.repeat(1.1 * 1024 * 1024)}\n${route('web')}`;
    assertExactly(validateOne(big), [{ line: 1, col: 1, text: `over the ${MAX_MANIFEST_BYTES}-byte limit` }], '1.1 MiB');
  });

  test('a file of exactly the size limit is read', () => {
    const body = route('web');
    const padding = `# ${'x'.repeat(MAX_MANIFEST_BYTES - body.length - 3)}\n`;
    const exact = padding + body;
    assert.equal(Buffer.byteLength(exact), MAX_MANIFEST_BYTES);
    const result = validateOne(exact);
    assert.deepEqual(result.diagnostics, []);
    assert.equal(result.resources.length, 1);
  });

  test(`more than ${MAX_DOCUMENTS_PER_FILE} documents in one file`, () => {
    const docs = Array.from({ length: 600 }, (_, i) => route(`r${i}`));
    const text = docs.join('---\n');
    const line501 = docs.slice(0, 500).join('---\n').split('\n').length + 1;
    const started = Date.now();
    const result = validateOne(text);
    assertExactly(result, [{ line: line501, col: 1, text: `more than ${MAX_DOCUMENTS_PER_FILE} documents in one file` }], '600 documents');
    assert.ok(Date.now() - started < 5000, 'took too long');
  });

  test(`exactly ${MAX_DOCUMENTS_PER_FILE} documents are accepted`, () => {
    const text = Array.from({ length: MAX_DOCUMENTS_PER_FILE }, (_, i) => route(`r${i}`)).join('---\n');
    const result = validateOne(text);
    assert.deepEqual(result.diagnostics, []);
    assert.equal(result.resources.length, MAX_DOCUMENTS_PER_FILE);
  });

  test('nesting 200 deep, in flow and block style', () => {
    const flow = `${route('web')}  x: ${'['.repeat(200)}${']'.repeat(200)}\n`;
    assertExactly(validateOne(flow), [{ line: 8, text: 'nesting exceeded' }], 'flow');
    const block = route('web', Array.from({ length: 200 }, (_, i) => `${'  '.repeat(i + 1)}k${i}:\n`).join(''));
    const result = validateOne(block);
    assert.equal(errors(result).length, 1, show(result.diagnostics));
    assert.match(errors(result)[0]!.message, /nesting exceeded/);
  });

  test('a billion-laughs alias bomb is refused at the first alias, quickly', () => {
    let text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n';
    const names = 'abcdefghij';
    for (let i = 1; i < names.length; i++) {
      text += `${names[i]}: &${names[i]} [${Array(9).fill(`*${names[i - 1]}`).join(',')}]\n`;
    }
    const started = Date.now();
    assertExactly(validateOne(text), [{ line: 2, col: 8, text: 'YAML aliases (*name) are not allowed' }], 'alias bomb');
    assert.ok(Date.now() - started < 2000, 'took too long');
  });

  test('random binary bytes', () => {
    let seed = 42;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % 256;
    const withNul = Buffer.from(Array.from({ length: 4096 }, random));
    withNul[100] = 0;
    const nul = validateOne(withNul);
    assert.equal(errors(nul).length, 1, show(nul.diagnostics));
    assert.match(errors(nul)[0]!.message, /binary data \(NUL byte\)/);
    const noNul = Buffer.from(Array.from({ length: 4096 }, () => 1 + (random() % 255)));
    const result = validateOne(noNul);
    assert.equal(errors(result).length, 1, show(result.diagnostics));
    assert.match(errors(result)[0]!.message, /not valid UTF-8/);
  });

  test('invalid UTF-8 is reported on its line', () => {
    const bytes = Buffer.concat([Buffer.from(route('web')), Buffer.from('  # caf'), Buffer.from([0xe9]), Buffer.from(' au lait\n')]);
    assertExactly(validateOne(bytes), [{ line: 8, col: 8, text: 'not valid UTF-8 (byte 0xe9)' }], 'latin-1');
    const overlong = Buffer.concat([Buffer.from(route('web')), Buffer.from([0xc0, 0xaf, 0x0a])]);
    assertExactly(validateOne(overlong), [{ line: 8, text: 'not valid UTF-8' }], 'overlong');
    const surrogate = Buffer.concat([Buffer.from(route('web')), Buffer.from('# '), Buffer.from([0xed, 0xa0, 0x80, 0x0a])]);
    assertExactly(validateOne(surrogate), [{ line: 8, text: 'not valid UTF-8' }], 'surrogate');
  });

  test('random printable text is reported, never thrown', () => {
    let seed = 7;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
    const alphabet = 'ab:- \n[]{}&*!|>\'"%@`#,?~\t';
    for (let n = 0; n < 200; n++) {
      const text = Array.from({ length: 200 }, () => alphabet[random() % alphabet.length]).join('');
      validateOne(text);
    }
  });

  test('a name of 100,000 characters', () => {
    const result = validateOne(route('web').replace('  name: web', `  name: ${'a'.repeat(100_000)}`));
    assertExactly(result, [{ line: 4, col: 9, text: 'metadata.name: must be at most 63 characters long' }], 'long name');
  });

  test('a name of 100,000 shell metacharacters', () => {
    const result = validateOne(route('web').replace('  name: web', `  name: "${';$(reboot)`id`|&'.repeat(7_000)}"`));
    assert.equal(errors(result).length, 2, show(result.diagnostics)); // too long, and not a DNS label
    for (const d of result.diagnostics) assert.equal(d.line, 4);
  });

  test('a key, a kind and an apiVersion of 100,000 characters', () => {
    const long = 'k'.repeat(100_000);
    assertExactly(validateOne(route('web', `  ${long}: 1\n`)), [{ line: 8, col: 3, text: 'unknown field "spec.kkkk' }], 'long key');
    assertExactly(validateOne(route('web').replace('kind: Route', `kind: ${long}`)), [{ line: 2, col: 7, text: 'unknown kind' }], 'long kind');
    assertExactly(validateOne(route('web').replace('apiVersion: qwamos.io/v1alpha1', `apiVersion: ${long}`)), [{ line: 1, col: 13, text: 'unknown apiVersion' }], 'long apiVersion');
  });

  test('the same resource in two files', () => {
    const result = validate([
      { file: 'a.yaml', bytes: route('web') },
      { file: 'b.yaml', bytes: `# again\n${route('web')}` },
    ]);
    assert.equal(errors(result).length, 1, show(result.diagnostics));
    assert.deepEqual(
      { file: errors(result)[0]!.file, line: errors(result)[0]!.line, col: errors(result)[0]!.col },
      { file: 'b.yaml', line: 5, col: 3 },
    );
    assert.match(errors(result)[0]!.message, /Route\/web is declared twice \(first in a\.yaml\)/);
  });
});

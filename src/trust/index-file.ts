// The signed revision index: qwamos-index.yaml lists every manifest under a directory with its SHA-256 and
// a serial that only grows; qwamos-index.yaml.sig signs it like any manifest. Per-file signatures alone let
// someone with push access (but no key) delete a signed file, restore an older signed copy of one file, or
// mix signed files of two revisions; the index binds the files of one signing together, and the serial
// stops an older signed index from being replayed.
//
//   # qwamos revision index (qwamos sign --index): ...
//   format: qwamos-index-v1
//   serial: 7
//   files:
//     "a.yaml": "<64 hex>"
//     "sub/b.yml": "<64 hex>"
//
// Paths are relative to the index's directory, '/'-separated, sorted, JSON-quoted (valid YAML). The
// parser accepts exactly this layout: the bytes are signed, so there is one way to write an index.
import { createHash } from 'node:crypto';
import { lstat, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { MAX_MANIFEST_BYTES } from '../config.ts';
import { UsageError, UserError, printable } from '../errors.ts';
import { fsReason, readSmallFile, writeFileAtomic, type SecretKeyRecord } from './keys.ts';
import { MAX_SIGNATURE_BYTES, signBytes, verifyBytes } from './signature.ts';
import type { TrustStore } from './truststore.ts';

export const INDEX_FILE = 'qwamos-index.yaml';
export const INDEX_SIG_FILE = `${INDEX_FILE}.sig`;
export const INDEX_FORMAT = 'qwamos-index-v1';
const MAX_SERIAL = Number.MAX_SAFE_INTEGER;

export interface RevisionIndex {
  serial: number;
  /** Relative path -> sha256 hex of the file's bytes. */
  files: Map<string, string>;
}

/** Files an index covers: manifests (.yaml, .yml) other than the index; no component may start with '.'. */
export function isIndexedPath(relative: string): boolean {
  if (relative === INDEX_FILE) return false;
  if (relative.split('/').some((part) => part.startsWith('.') || part === '')) return false;
  return relative.endsWith('.yaml') || relative.endsWith('.yml');
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export function renderIndex(index: RevisionIndex): string {
  const lines = [
    `# qwamos revision index (qwamos sign --index): every manifest below with its SHA-256; signed in ${INDEX_SIG_FILE}`,
    `format: ${INDEX_FORMAT}`,
    `serial: ${index.serial}`,
    index.files.size === 0 ? 'files: {}' : 'files:',
  ];
  for (const file of [...index.files.keys()].sort(byCodeUnit)) lines.push(`  ${JSON.stringify(file)}: "${index.files.get(file)}"`);
  return `${lines.join('\n')}\n`;
}

function byCodeUnit(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Parses index text; throws a UserError saying what is wrong. */
export function parseIndex(text: string): RevisionIndex {
  const lines = text.split('\n');
  if (lines.at(-1) !== '') throw new UserError('malformed index (does not end with a newline)');
  lines.pop();
  let at = 0;
  while (lines[at]?.startsWith('#')) at++;
  if (lines[at++] !== `format: ${INDEX_FORMAT}`) throw new UserError(`malformed index (line ${at}: expected "format: ${INDEX_FORMAT}")`);
  const serialMatch = /^serial: (0|[1-9][0-9]{0,15})$/.exec(lines[at++] ?? '');
  const serial = Number(serialMatch?.[1]);
  if (!serialMatch || serial > MAX_SERIAL) throw new UserError(`malformed index (line ${at}: expected "serial: N")`);
  const header = lines[at++];
  if (header === 'files: {}' && at === lines.length) return { serial, files: new Map() };
  if (header !== 'files:') throw new UserError(`malformed index (line ${at}: expected "files:")`);
  const files = new Map<string, string>();
  let previous: string | undefined;
  for (; at < lines.length; at++) {
    const m = /^ {2}("(?:[^"\\]|\\.)*"): "([0-9a-f]{64})"$/.exec(lines[at]!);
    let file: unknown;
    try {
      file = m ? JSON.parse(m[1]!) : undefined;
    } catch {
      file = undefined;
    }
    if (!m || typeof file !== 'string' || !isIndexedPath(file) || path.posix.normalize(file) !== file || file.startsWith('../') || file.startsWith('/')) {
      throw new UserError(`malformed index (line ${at + 1}: expected "  \\"relative/path.yaml\\": \\"<sha256>\\"")`);
    }
    if (previous !== undefined && byCodeUnit(previous, file) >= 0) throw new UserError(`malformed index (line ${at + 1}: paths must be sorted and unique)`);
    files.set(file, m[2]!);
    previous = file;
  }
  if (files.size === 0) throw new UserError('malformed index (files: lists nothing; write "files: {}")');
  return { serial, files };
}

export type IndexCheck =
  | { ok: true; index?: RevisionIndex; /** sha256 of the index bytes. */ digest?: string }
  | { ok: false; file: string; reason: string };

export interface IndexCheckInput {
  /** Every file of the revision under the source's path that isIndexedPath accepts, by relative path. */
  files: Map<string, Uint8Array>;
  /** qwamos-index.yaml and its signature, when the revision has them. */
  indexBytes?: Uint8Array;
  indexSig?: Uint8Array;
  store: TrustStore;
  /** Serial of the index of the revision in force; a new one must be above it, unless it is that same index. */
  appliedSerial?: number;
  /** sha256 of the applied index's bytes: a revision that leaves the index alone keeps its serial. */
  appliedIndexDigest?: string;
  /** No index is an error (spec.requireIndex). Once a source has applied an indexed revision it always is. */
  required: boolean;
  /** The operator accepted this revision by name (acceptRevision): an older serial is let through. */
  acceptOlderSerial?: boolean;
}

/**
 * Accepts a revision only if its index verifies, its serial is above the applied one, and the files match
 * it exactly (none missing, none extra, none changed). Errors name the file.
 */
export function checkIndex(input: IndexCheckInput): IndexCheck {
  if (!input.indexBytes) {
    if (input.required || input.appliedSerial !== undefined) {
      const why = input.required ? 'this source requires a signed index' : `the revision in force had one (serial ${input.appliedSerial})`;
      return { ok: false, file: INDEX_FILE, reason: `missing: ${why} (write it with qwamos sign --index DIR)` };
    }
    return { ok: true };
  }
  if (input.indexSig && input.indexSig.length > MAX_SIGNATURE_BYTES) {
    return { ok: false, file: INDEX_SIG_FILE, reason: `malformed signature (larger than ${MAX_SIGNATURE_BYTES} bytes)` };
  }
  const sigText = input.indexSig === undefined ? undefined : decodeSignature(input.indexSig);
  if (sigText === null) return { ok: false, file: INDEX_SIG_FILE, reason: 'malformed signature (not UTF-8 text)' };
  const outcome = verifyBytes(input.indexBytes, sigText, input.store);
  if (outcome.status !== 'verified') return { ok: false, file: INDEX_FILE, reason: outcome.message };
  let index: RevisionIndex;
  try {
    index = parseIndex(new TextDecoder('utf-8', { fatal: true }).decode(input.indexBytes));
  } catch (err) {
    return { ok: false, file: INDEX_FILE, reason: err instanceof UserError ? err.message : 'malformed index (not UTF-8 text)' };
  }
  const digest = sha256Hex(input.indexBytes);
  const sameIndex = index.serial === input.appliedSerial && digest === input.appliedIndexDigest;
  if (input.appliedSerial !== undefined && index.serial <= input.appliedSerial && !sameIndex && !input.acceptOlderSerial) {
    return { ok: false, file: INDEX_FILE, reason: `serial ${index.serial} is not above the applied serial ${input.appliedSerial} (an older signed index replayed?)` };
  }
  for (const file of [...index.files.keys()].sort(byCodeUnit)) {
    if (!input.files.has(file)) return { ok: false, file, reason: 'missing: listed in the signed index but not in the revision' };
  }
  for (const [file, bytes] of [...input.files].sort(([a], [b]) => byCodeUnit(a, b))) {
    const expected = index.files.get(file);
    if (expected === undefined) return { ok: false, file, reason: 'not in the signed index (added without re-signing the index)' };
    const actual = sha256Hex(bytes);
    if (actual !== expected) return { ok: false, file, reason: `does not match the signed index (sha256 ${actual.slice(0, 12)}…, index has ${expected.slice(0, 12)}…)` };
  }
  return { ok: true, index, digest };
}

function decodeSignature(bytes: Uint8Array): string | null {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

/** The indexed files under dir, relative and sorted. A symlink is refused: git sources refuse them too. */
export async function listIndexedFiles(dir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (relative: string): Promise<void> => {
    const entries = await readdir(path.join(dir, relative), { withFileTypes: true });
    for (const entry of entries) {
      if (entry.name.startsWith('.')) continue;
      const rel = relative ? `${relative}/${entry.name}` : entry.name;
      if (entry.isSymbolicLink()) throw new UserError(`${printable(path.join(dir, rel))}: symbolic links cannot be indexed`);
      if (entry.isDirectory()) await walk(rel);
      else if (entry.isFile() && isIndexedPath(rel)) found.push(rel);
    }
  };
  await walk('');
  return found.sort(byCodeUnit);
}

/** The serial of the index already in dir, if there is one. */
async function previousSerial(dir: string): Promise<number | undefined> {
  const file = path.join(dir, INDEX_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new UserError(`cannot read ${printable(file)}: ${fsReason(err)}`);
  }
  try {
    return parseIndex(text).serial;
  } catch (err) {
    throw new UserError(`${printable(file)}: ${(err as Error).message}; pass --serial N to write a new one`);
  }
}

/**
 * Writes DIR/qwamos-index.yaml over every manifest under dir and signs it. The serial is the previous
 * index's plus one (1 for the first), or `serial` when given, which must be above the previous one.
 */
export async function writeIndex(dir: string, key: SecretKeyRecord, serial?: number): Promise<{ file: string; serial: number; count: number }> {
  try {
    if (!(await lstat(dir)).isDirectory()) throw new UsageError(`${printable(dir)}: not a directory`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`${printable(dir)}: ${fsReason(err)}`);
  }
  const previous = await previousSerial(dir);
  if (serial !== undefined && (!Number.isSafeInteger(serial) || serial < 0)) throw new UsageError(`--serial must be a non-negative integer (got ${serial})`);
  if (serial !== undefined && previous !== undefined && serial <= previous) {
    throw new UsageError(`--serial ${serial} is not above the serial ${previous} of the index in ${printable(dir)}: a source would refuse it`);
  }
  const next = serial ?? (previous ?? 0) + 1;
  const files = new Map<string, string>();
  for (const rel of await listIndexedFiles(dir)) {
    let bytes: Uint8Array;
    try {
      ({ bytes } = await readSmallFile(path.join(dir, rel), MAX_MANIFEST_BYTES));
    } catch (err) {
      throw new UserError(`${printable(path.join(dir, rel))}: ${fsReason(err)}`);
    }
    files.set(rel, sha256Hex(bytes));
  }
  const text = renderIndex({ serial: next, files });
  const file = path.join(dir, INDEX_FILE);
  try {
    // The signature first: a reader that sees the new index beside the old signature refuses it, never the reverse.
    await writeFileAtomic(`${file}.sig`, signBytes(new TextEncoder().encode(text), key), 0o644, true);
    await writeFileAtomic(file, text, 0o644, true);
  } catch (err) {
    throw new UserError(`cannot write ${printable(file)}: ${fsReason(err)}`);
  }
  return { file, serial: next, count: files.size };
}

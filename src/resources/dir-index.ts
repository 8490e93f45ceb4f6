// `apply -f DIR` (and validate, diff, delete) honour a signed revision index in DIR, as a git source does:
// when DIR holds qwamos-index.yaml, the directory is read only if the index verifies, the manifests under
// DIR match it exactly (none missing, none extra, none changed) and its serial is above the last one applied
// from that directory. The last applied serial lives in STATE/indexes/<sha256 of DIR's real path>.json
// (0600): keyed by where the files are, because the threat is someone who can write the directory (restore
// older signed files and an older signed index) but not choose the path the operator applies.
import { readFile, realpath } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { UserError } from '../errors.ts';
import { ensureDir, readJsonFile, writeFileAtomic } from '../store/atomic.ts';
import { INDEX_FILE, INDEX_SIG_FILE, checkIndex, isIndexedPath, listIndexedFiles } from '../trust/index-file.ts';
import { MAX_SIGNATURE_BYTES } from '../trust/signature.ts';
import type { TrustStore } from '../trust/truststore.ts';
import { MAX_MANIFEST_BYTES } from '../config.ts';

/** An index that verified: what to record once the directory is applied. */
export interface VerifiedDirIndex {
  /** The directory's real path (the key of its serial record). */
  dir: string;
  serial: number;
  /** sha256 of the index bytes. */
  digest: string;
}

export type DirIndexCheck =
  | { status: 'none' }
  | { status: 'ok'; index: VerifiedDirIndex }
  | { status: 'refused'; file: string; reason: string };

/** What STATE/indexes/<key>.json holds. */
interface SerialRecord {
  dir: string;
  serial: number;
  digest: string;
  at: string;
}

export function indexStateFile(stateDir: string, realDir: string): string {
  return path.join(stateDir, 'indexes', `${createHash('sha256').update(realDir).digest('hex')}.json`);
}

async function readOptional(file: string, max: number): Promise<Uint8Array | undefined> {
  try {
    const bytes = await readFile(file);
    if (bytes.length > max) throw new UserError(`${file}: larger than ${max} bytes`);
    return bytes;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

async function readRecord(stateDir: string | undefined, realDir: string): Promise<SerialRecord | undefined> {
  if (!stateDir) return undefined;
  const file = indexStateFile(stateDir, realDir);
  const record = await readJsonFile<SerialRecord>(file);
  if (record === undefined) return undefined;
  if (typeof record !== 'object' || record === null || !Number.isSafeInteger(record.serial) || typeof record.digest !== 'string') {
    throw new UserError(`${file}: not an index serial record (move it away to accept ${realDir} afresh)`);
  }
  return record;
}

/**
 * Checks the index of one -f directory. `files`: the manifest files this invocation would read from it
 * (absolute or as given), each of which the index must cover. A directory without an index is 'none',
 * unless an earlier apply of it had one: removing the index would switch the protection off.
 */
export async function checkDirIndex(dir: string, readFiles: string[], store: TrustStore, stateDir: string | undefined): Promise<DirIndexCheck> {
  const realDir = await realpath(dir);
  const shown = (rel: string) => path.join(dir, rel);
  const refused = (rel: string, reason: string): DirIndexCheck => ({ status: 'refused', file: shown(rel), reason });
  const indexBytes = await readOptional(path.join(dir, INDEX_FILE), MAX_MANIFEST_BYTES);
  const record = await readRecord(stateDir, realDir);
  if (!indexBytes && !record) return { status: 'none' };
  const indexSig = await readOptional(path.join(dir, INDEX_SIG_FILE), MAX_SIGNATURE_BYTES + 1);

  let onDisk: string[];
  try {
    onDisk = indexBytes ? await listIndexedFiles(dir) : [];
  } catch (err) {
    return { status: 'refused', file: dir, reason: (err as Error).message.replace(`${dir}: `, '') };
  }
  const files = new Map<string, Uint8Array>();
  for (const rel of onDisk) {
    const bytes = await readOptional(path.join(dir, rel), MAX_MANIFEST_BYTES + 1);
    if (bytes) files.set(rel, bytes);
  }
  const check = checkIndex({
    files,
    ...(indexBytes ? { indexBytes } : {}),
    ...(indexSig ? { indexSig } : {}),
    store,
    ...(record ? { appliedSerial: record.serial, appliedIndexDigest: record.digest } : {}),
    required: false,
  });
  if (!check.ok) {
    // checkIndex speaks of a revision and of the serial "applied"; here it is a directory.
    return refused(check.file, check.reason.replace('the revision in force had one', 'the last apply of this directory had one').replace('not in the revision', 'not in the directory'));
  }
  // What apply reads must be what the index covers: a .json manifest, say, is not indexed.
  for (const file of readFiles) {
    const rel = path.relative(dir, file).split(path.sep).join('/');
    if (!isIndexedPath(rel)) return refused(rel, 'not covered by the signed index (only .yaml and .yml files are indexed)');
  }
  return { status: 'ok', index: { dir: realDir, serial: check.index!.serial, digest: check.digest! } };
}

/** Records the serial of an applied directory's index (after the apply stored its resources). */
export async function recordDirIndex(stateDir: string, index: VerifiedDirIndex): Promise<void> {
  const file = indexStateFile(stateDir, index.dir);
  await ensureDir(path.dirname(file));
  const record: SerialRecord = { dir: index.dir, serial: index.serial, digest: index.digest, at: new Date().toISOString() };
  await writeFileAtomic(file, `${JSON.stringify(record, null, 2)}\n`);
}

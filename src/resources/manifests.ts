// Reading manifests from -f paths: find the files, read them within limits, verify their signatures,
// validate them. What every command that reads manifests (validate, apply, diff, delete) starts with.
import type { Stats } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { MAX_MANIFEST_BYTES, stateDir } from '../config.ts';
import { mapLimit } from '../concurrency.ts';
import { UsageError } from '../errors.ts';
import type { VerifyOutcome } from '../trust/signature.ts';
import { loadTrustStore } from '../trust/truststore.ts';
import { signatureCacheDir } from '../trust/verify-cache.ts';
import { verifySignedFiles, type PoolOptions } from '../trust/verify-pool.ts';
import { INDEX_FILE } from '../trust/index-file.ts';
import { checkDirIndex, type VerifiedDirIndex } from './dir-index.ts';
import type { Diagnostic } from './diagnostics.ts';
import type { LoadedResource } from './types.ts';
import { validateSources, type SourceFile, type ValidateContext } from './validate.ts';

const MANIFEST_EXTENSIONS = new Set(['.yaml', '.yml', '.json']);

/** A -f path as given: a file, or a directory whose manifest files were read. */
export interface ManifestRoot {
  path: string;
  isDirectory: boolean;
}

/** A directory entry that looked like a manifest but was not read, and why. */
export interface SkippedEntry {
  path: string;
  reason: string;
}

export interface CollectedFiles {
  files: string[];
  roots: ManifestRoot[];
  /** Entries not read; pruning must not run while there are any (it would delete what they declare). */
  skipped: SkippedEntry[];
}

/**
 * Expands files and directories (their manifest files, sorted; subdirectories only when recursive).
 * Symbolic links are followed to regular files (read and verified like any other); a link to a
 * directory, a dangling link or a link loop is reported in `skipped`, never silently left out.
 */
export async function collectFiles(paths: string[], recursive = false): Promise<CollectedFiles> {
  if (paths.length === 0) throw new UsageError('no manifests given: use -f FILE|DIR');
  const files: string[] = [];
  const roots: ManifestRoot[] = [];
  const skipped: SkippedEntry[] = [];
  for (const p of paths) {
    let info;
    try {
      info = await stat(p);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new UsageError(`${p}: ${code === 'ELOOP' ? 'symbolic link loop' : 'no such file or directory'}`);
    }
    if (info.isDirectory()) {
      roots.push({ path: p, isDirectory: true });
      files.push(...(await listDirectory(p, recursive, skipped)));
    } else if (info.isFile()) {
      roots.push({ path: p, isDirectory: false });
      files.push(p);
    } else throw new UsageError(`${p}: not a regular file or directory`);
  }
  return { files: [...new Set(files)], roots, skipped };
}

const isManifestName = (name: string) => !name.startsWith('.') && MANIFEST_EXTENSIONS.has(path.extname(name));

async function listDirectory(dir: string, recursive: boolean, skipped: SkippedEntry[]): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => a.name.localeCompare(b.name));
  const files: string[] = [];
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const full = path.join(dir, e.name);
    if (e.isSymbolicLink()) {
      let target: Stats;
      try {
        target = await stat(full);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (recursive || isManifestName(e.name)) {
          skipped.push({ path: full, reason: code === 'ELOOP' ? 'symbolic link loop' : code === 'ENOENT' ? 'dangling symbolic link' : `unreadable symbolic link (${code ?? err})` });
        }
        continue;
      }
      if (target.isFile()) {
        if (isManifestName(e.name)) files.push(full);
      } else if (target.isDirectory()) {
        // Not followed: a link can lead out of the tree or round in a loop.
        if (recursive) skipped.push({ path: full, reason: 'symbolic link to a directory (not followed; give it with -f)' });
      } else if (isManifestName(e.name)) {
        skipped.push({ path: full, reason: 'symbolic link to something that is not a regular file' });
      }
    } else if (e.isDirectory()) {
      if (recursive) files.push(...(await listDirectory(full, true, skipped)));
    } else if (e.isFile()) {
      if (isManifestName(e.name)) files.push(full);
    } else if (isManifestName(e.name)) {
      skipped.push({ path: full, reason: 'not a regular file' });
    }
  }
  return files;
}

/**
 * Whether a manifest file at `file` is one this invocation (-f roots, -R or not) reads: the basis for
 * pruning, which may only delete what the same command would have applied had the file still existed.
 * Paths are compared as given (resolved, symbolic links not resolved), as they are stored.
 */
export function withinReach(file: string, roots: ManifestRoot[], recursive: boolean): boolean {
  return roots.some((root) => {
    const base = path.resolve(root.path);
    if (!root.isDirectory) return file === base;
    const rel = path.relative(base, file);
    if (!rel || rel.startsWith('..') || path.isAbsolute(rel)) return false;
    const parts = rel.split(path.sep);
    if (parts.length > 1 && !recursive) return false;
    return parts.every((part) => !part.startsWith('.')) && isManifestName(parts[parts.length - 1]!);
  });
}

/** Reads at most the limit plus one byte, so an oversized file is detected without reading it all. */
async function readLimited(file: string): Promise<Uint8Array> {
  const handle = await open(file, 'r');
  try {
    const { size } = await handle.stat();
    // Files can grow while being read; never read past the limit either way.
    const buffer = Buffer.allocUnsafe(Math.min(size, MAX_MANIFEST_BYTES) + 1);
    let length = 0;
    while (length < buffer.length) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    return buffer.subarray(0, length);
  } finally {
    await handle.close();
  }
}

export interface ReadOptions extends ValidateContext {
  trustDir: string;
  allowUnsigned: boolean;
  recursive?: boolean;
  /** The verified-signature cache: a directory, or false for none. Default: cache/signatures in the state dir. */
  signatureCacheDir?: string | false;
  /** How signatures are spread over worker threads (the bench runs it on one core to compare). */
  verifyPool?: PoolOptions;
  /** Where the last applied serial of each indexed directory is kept; false for none. Default: the state dir. */
  indexStateDir?: string | false;
}

/** Who signed a file (the trusted key that verified it). */
export interface Signer {
  keyId: string;
  alg: string;
  name: string;
}

export interface ManifestSet {
  files: string[];
  roots: ManifestRoot[];
  skipped: SkippedEntry[];
  /** Signer of each verified file; files accepted unsigned (--allow-unsigned) have none. */
  signers: Map<string, Signer>;
  resources: LoadedResource[];
  /** Errors and warnings, in file order. Any error means nothing of the set may be applied. */
  diagnostics: Diagnostic[];
  /** The signed indexes of -f directories that verified: apply records their serials once it stored the set. */
  indexes: VerifiedDirIndex[];
}

export function hasErrors(diagnostics: Diagnostic[]): boolean {
  return diagnostics.some((d) => d.severity !== 'warning');
}

/**
 * Verifies and validates manifests. A file whose signature fails is refused whole and its contents
 * are not parsed. With allowUnsigned, unsigned or untrusted files pass with a warning; a tampered or
 * malformed signature is still refused, since it means someone changed a signed file.
 */
export async function readManifests(paths: string[], opts: ReadOptions): Promise<ManifestSet> {
  const collected = await collectFiles(paths, opts.recursive);
  const { roots, skipped } = collected;
  // A directory's index is not a manifest: it is checked against the directory below.
  const files = collected.files.filter((f) => path.basename(f) !== INDEX_FILE);
  const store = await loadTrustStore(opts.trustDir);
  const indexes: VerifiedDirIndex[] = [];
  const indexStateDir = opts.indexStateDir ?? defaultStateDir();
  for (const root of roots.filter((r) => r.isDirectory)) {
    const inRoot = files.filter((f) => {
      const rel = path.relative(root.path, f);
      return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
    });
    const check = await checkDirIndex(root.path, inRoot, store, indexStateDir || undefined);
    if (check.status === 'refused') {
      // Nothing of a directory whose index does not hold is read: one line naming the file says why.
      const diagnostic: Diagnostic = { file: check.file, line: 1, col: 1, resource: 'index', message: `refused: ${check.reason}` };
      return { files, roots, skipped, signers: new Map(), resources: [], diagnostics: [diagnostic], indexes: [] };
    }
    if (check.status === 'ok') indexes.push(check.index);
  }
  const read = await mapLimit(files, 16, (file) => readLimited(file).then((bytes) => ({ file, bytes }), (err: unknown) => ({ file, err })));
  const readable = read.flatMap((r) => ('bytes' in r ? [r] : []));
  const cacheDir = opts.signatureCacheDir ?? defaultSignatureCacheDir();
  const { outcomes } = await verifySignedFiles(readable, store, { ...(cacheDir ? { cacheDir } : {}), ...(opts.verifyPool ? { pool: opts.verifyPool } : {}) });
  const outcomeOf = new Map(readable.map((r, i) => [r.file, outcomes[i]!]));
  const checked = read.map((r) => ('bytes' in r ? judge(r.file, r.bytes, outcomeOf.get(r.file)!, opts.allowUnsigned) : unreadable(r.file, r.err)));
  const diagnostics: Diagnostic[] = skipped.map((s) => ({ file: s.path, line: 1, col: 1, resource: 'file', message: `skipped: ${s.reason}`, severity: 'warning' }));
  diagnostics.push(...checked.flatMap((c) => c.diagnostics));
  const sources = checked.flatMap((c) => (c.source ? [c.source] : []));
  const signers = new Map(checked.flatMap((c) => (c.source && c.signer ? [[c.source.file, c.signer] as const] : [])));
  const result = validateSources(sources, opts);
  return { files, roots, skipped, signers, resources: result.resources, diagnostics: [...diagnostics, ...result.diagnostics], indexes };
}

/** The state dir's signature cache; none when the configuration cannot name a state dir. */
function defaultSignatureCacheDir(): string | undefined {
  const dir = defaultStateDir();
  return dir ? signatureCacheDir(dir) : undefined;
}

function defaultStateDir(): string | undefined {
  try {
    return stateDir();
  } catch {
    return undefined;
  }
}

type Checked = { source?: SourceFile; signer?: Signer; diagnostics: Diagnostic[] };

function unreadable(file: string, err: unknown): Checked {
  return { diagnostics: [{ file, line: 1, col: 1, resource: 'file', message: `cannot read: ${(err as NodeJS.ErrnoException).code ?? err}` }] };
}

function judge(file: string, bytes: Uint8Array, outcome: VerifyOutcome, allowUnsigned: boolean): Checked {
  if (outcome.status === 'verified') {
    return { source: { file, bytes }, signer: { keyId: outcome.keyId, alg: outcome.alg, name: outcome.keyName }, diagnostics: [] };
  }
  const forgivable = outcome.status === 'unsigned' || outcome.status === 'untrusted';
  if (allowUnsigned && forgivable) {
    const warning: Diagnostic = { file, line: 1, col: 1, resource: 'signature', message: `${outcome.message} (accepted: --allow-unsigned)`, severity: 'warning' };
    return { source: { file, bytes }, diagnostics: [warning] };
  }
  const hint = forgivable ? ' (sign with `qwamos sign`, trust the key, or pass --allow-unsigned)' : '';
  return { diagnostics: [{ file, line: 1, col: 1, resource: 'signature', message: `refused: ${outcome.message}${hint}` }] };
}

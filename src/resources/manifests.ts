// Reading manifests from -f paths: find the files, read them within limits, verify their signatures,
// validate them. What every command that reads manifests (validate, apply, diff, delete) starts with.
import { open, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { MAX_MANIFEST_BYTES } from '../config.ts';
import { mapLimit } from '../concurrency.ts';
import { UsageError } from '../errors.ts';
import { verifyFile } from '../trust/signature.ts';
import { loadTrustStore, type TrustStore } from '../trust/truststore.ts';
import type { Diagnostic } from './diagnostics.ts';
import type { LoadedResource } from './types.ts';
import { validateSources, type SourceFile, type ValidateContext } from './validate.ts';

const MANIFEST_EXTENSIONS = new Set(['.yaml', '.yml', '.json']);

/** Expands files and directories (their manifest files, sorted; subdirectories only when recursive). */
export async function collectFiles(paths: string[], recursive = false): Promise<string[]> {
  if (paths.length === 0) throw new UsageError('no manifests given: use -f FILE|DIR');
  const files: string[] = [];
  for (const p of paths) {
    let info;
    try {
      info = await stat(p);
    } catch {
      throw new UsageError(`${p}: no such file or directory`);
    }
    if (info.isDirectory()) files.push(...(await listDirectory(p, recursive)));
    else if (info.isFile()) files.push(p);
    else throw new UsageError(`${p}: not a regular file or directory`);
  }
  return [...new Set(files)];
}

async function listDirectory(dir: string, recursive: boolean): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => a.name.localeCompare(b.name));
  const files: string[] = [];
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const full = path.join(dir, e.name);
    if (e.isDirectory() && recursive) files.push(...(await listDirectory(full, true)));
    else if (e.isFile() && MANIFEST_EXTENSIONS.has(path.extname(e.name))) files.push(full);
  }
  return files;
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
}

export interface ManifestSet {
  files: string[];
  resources: LoadedResource[];
  /** Errors and warnings, in file order. Any error means nothing of the set may be applied. */
  diagnostics: Diagnostic[];
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
  const files = await collectFiles(paths, opts.recursive);
  const store = await loadTrustStore(opts.trustDir);
  // Files are read and verified a few at a time so disk waits overlap with signature checks.
  const checked = await mapLimit(files, 16, (file) => readAndVerify(file, store, opts.allowUnsigned));
  const diagnostics = checked.flatMap((c) => c.diagnostics);
  const sources = checked.flatMap((c) => (c.source ? [c.source] : []));
  const result = validateSources(sources, opts);
  return { files, resources: result.resources, diagnostics: [...diagnostics, ...result.diagnostics] };
}

async function readAndVerify(
  file: string,
  store: TrustStore,
  allowUnsigned: boolean,
): Promise<{ source?: SourceFile; diagnostics: Diagnostic[] }> {
  let bytes: Uint8Array;
  try {
    bytes = await readLimited(file);
  } catch (err) {
    return { diagnostics: [{ file, line: 1, col: 1, resource: 'file', message: `cannot read: ${(err as NodeJS.ErrnoException).code ?? err}` }] };
  }
  const outcome = await verifyFile(file, store, bytes);
  if (outcome.status === 'verified') return { source: { file, bytes }, diagnostics: [] };
  const forgivable = outcome.status === 'unsigned' || outcome.status === 'untrusted';
  if (allowUnsigned && forgivable) {
    const warning: Diagnostic = { file, line: 1, col: 1, resource: 'signature', message: `${outcome.message} (accepted: --allow-unsigned)`, severity: 'warning' };
    return { source: { file, bytes }, diagnostics: [warning] };
  }
  const hint = forgivable ? ' (sign with `qwamos sign`, trust the key, or pass --allow-unsigned)' : '';
  return { diagnostics: [{ file, line: 1, col: 1, resource: 'signature', message: `refused: ${outcome.message}${hint}` }] };
}

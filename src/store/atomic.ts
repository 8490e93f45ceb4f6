// Crash-safe file primitives for the state directory. A write goes to a temp file in the same directory,
// is fsynced, renamed over the target and the directory is fsynced: readers see the old or the new file,
// never half of one, and once a write resolves it survives kill -9 and power loss.
import { constants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { CorruptStateError } from './shapes.ts';

export const DIR_MODE = 0o700;
export const FILE_MODE = 0o600;

/** Temp files are dot-files carrying the writer's pid, so open() can tell abandoned ones from in-flight ones. */
const TEMP_RE = /^\..+\.(\d+)\.[0-9a-f]{12}\.tmp$/;

export function tempPath(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomHex(6)}.tmp`);
}

/**
 * bytes random bytes as hex, for names and tokens that must not collide (temp files also carry the pid
 * and are created O_EXCL). Not node:crypto: loading it costs every CLI start ~10 ms, and none of these
 * is a secret.
 */
export function randomHex(bytes: number): string {
  let hex = '';
  for (let i = 0; i < bytes; i++) hex += Math.floor(Math.random() * 256).toString(16).padStart(2, '0');
  return hex;
}

/** The pid that wrote a temp file, or undefined if the name is not one of ours. */
export function tempOwner(name: string): number | undefined {
  const m = TEMP_RE.exec(name);
  return m ? Number(m[1]) : undefined;
}

export function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}

/** fsync a directory so a rename, create or unlink inside it is durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Creates dir and any missing parents with mode 0700, fsyncing each parent so the new entry is durable. */
export async function ensureDir(dir: string): Promise<void> {
  try {
    const st = await fs.stat(dir);
    if (!st.isDirectory()) throw new Error(`${dir} exists and is not a directory`);
    return;
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
  const parent = path.dirname(dir);
  if (parent !== dir) await ensureDir(parent);
  try {
    await fs.mkdir(dir, { mode: DIR_MODE });
  } catch (err) {
    if (isErrno(err, 'EEXIST')) return; // another writer made it first
    throw err;
  }
  await fs.chmod(dir, DIR_MODE); // mkdir's mode is filtered by umask
  await fsyncDir(parent);
}

/**
 * Atomically replaces file with data (mode 0600). Resolves only once the new content is durable; with
 * syncDir false the caller fsyncs the directory itself (once for many files written there). With durable
 * false nothing is fsynced: for files that only other processes read and that mean nothing after a power
 * loss (the cluster lease file), written too often to wait for a busy disk.
 */
export async function writeFileAtomic(file: string, data: string, opts: { syncDir?: boolean; durable?: boolean } = {}): Promise<void> {
  const durable = opts.durable !== false;
  const tmp = tempPath(file);
  const fh = await fs.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, FILE_MODE);
  try {
    try {
      await fh.chmod(FILE_MODE); // the umask may have removed bits; make the mode exact
      await fh.writeFile(data, 'utf8');
      if (durable) await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.unlink(tmp).catch(() => {});
    throw err;
  }
  if (durable && opts.syncDir !== false) await fsyncDir(path.dirname(file));
}

/**
 * Parsed JSON content of file, or undefined if it does not exist. Anything else that goes wrong is a
 * CorruptStateError naming the file (never the raw bytes: JSON.parse quotes them in its message).
 */
export async function readJsonFile<T>(file: string): Promise<T | undefined> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw new CorruptStateError(file, `cannot read it (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  if (text.trim() === '') throw new CorruptStateError(file, 'empty (truncated)');
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new CorruptStateError(file, 'not valid JSON');
  }
}

/** Removes file durably (with syncDir false the caller fsyncs the directory); false if it was not there. */
export async function removeFile(file: string, opts: { syncDir?: boolean } = {}): Promise<boolean> {
  try {
    await fs.unlink(file);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
  if (opts.syncDir !== false) await fsyncDir(path.dirname(file));
  return true;
}

/** Entries of dir, or [] if it does not exist. */
export async function listDir(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return [];
    throw err;
  }
}

// ML-DSA signing keys and their files.
//
// Secret key file (NAME.key, mode 0600): JSON holding only the 32-byte seed; the expanded key is derived
// again on load, so the file stays small and cannot disagree with itself.
//   {"format":"qwamos-secret-key-v1","alg":"ml-dsa-65","name":"alice","keyId":"<32 hex>","seed":"<base64>"}
// Public key file (NAME.pub): what goes into a trust store.
//   {"format":"qwamos-public-key-v1","alg":"ml-dsa-65","name":"alice","keyId":"<32 hex>","publicKey":"<base64>"}
// The key id is the first 16 bytes of sha256(alg + ':' + publicKey), in hex: it names the algorithm too,
// so a key cannot be passed off as one of another parameter set.
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { ml_dsa65, ml_dsa87 } from '@noble/post-quantum/ml-dsa.js';
import { UsageError, UserError, oneLine, printable } from '../errors.ts';

export type Alg = 'ml-dsa-65' | 'ml-dsa-87';
export const ALGS: readonly Alg[] = ['ml-dsa-65', 'ml-dsa-87'];
export const DEFAULT_ALG: Alg = 'ml-dsa-65';

export const SECRET_KEY_FORMAT = 'qwamos-secret-key-v1';
export const PUBLIC_KEY_FORMAT = 'qwamos-public-key-v1';

/** Largest key or signature file read; real ones are a few KiB. */
export const MAX_KEY_FILE_BYTES = 64 * 1024;

const KEY_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const KEY_ID = /^[0-9a-f]{32}$/;

export interface PublicKeyRecord {
  alg: Alg;
  name: string;
  keyId: string;
  publicKey: Uint8Array;
  /** File the key was read from, when it came from one. */
  path?: string;
}

export interface SecretKeyRecord {
  alg: Alg;
  name: string;
  keyId: string;
  seed: Uint8Array;
  publicKey: Uint8Array;
  /** The expanded ML-DSA secret key, derived from the seed. */
  secretKey: Uint8Array;
}

/** The noble implementation behind each algorithm name. */
export function dsa(alg: Alg) {
  return alg === 'ml-dsa-87' ? ml_dsa87 : ml_dsa65;
}

export function isAlg(value: unknown): value is Alg {
  return typeof value === 'string' && (ALGS as readonly string[]).includes(value);
}

export function isKeyName(value: unknown): value is string {
  return typeof value === 'string' && KEY_NAME.test(value);
}

export function isKeyId(value: unknown): value is string {
  return typeof value === 'string' && KEY_ID.test(value);
}

export function keyIdOf(alg: Alg, publicKey: Uint8Array): string {
  return createHash('sha256').update(`${alg}:`).update(publicKey).digest().subarray(0, 16).toString('hex');
}

export function toBase64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64');
}

/** Strict base64: canonical padding and alphabet only, so one text has exactly one meaning. */
export function fromBase64(text: unknown): Uint8Array | undefined {
  if (typeof text !== 'string' || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return undefined;
  const bytes = Buffer.from(text, 'base64');
  return bytes.toString('base64') === text ? new Uint8Array(bytes) : undefined;
}

/** A short reason for a file-system error, for one-line messages. */
export function fsReason(err: unknown): string {
  switch ((err as NodeJS.ErrnoException)?.code) {
    case 'ENOENT': return 'no such file';
    case 'EACCES': case 'EPERM': return 'permission denied';
    case 'EISDIR': return 'is a directory';
    case 'ENOTDIR': return 'a parent is not a directory';
    case 'ELOOP': return 'too many symbolic links';
    default: return oneLine(err);
  }
}

/**
 * Reads a regular file of at most `max` bytes. Opens non-blocking and checks the type before reading so a
 * FIFO or device planted where a file is expected cannot hang or flood the process.
 * Returns the bytes and the file's mode; throws the fs error (with .code) or a UserError.
 */
export async function readSmallFile(file: string, max: number): Promise<{ bytes: Uint8Array; mode: number }> {
  const fh = await fs.open(file, fsc.O_RDONLY | fsc.O_NONBLOCK);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new UserError('not a regular file');
    if (st.size > max) throw new UserError(`larger than ${max} bytes`);
    // Read at most max + 1 bytes: a file that grew since fstat is still caught.
    const buf = Buffer.alloc(max + 1);
    let length = 0;
    while (length < buf.length) {
      const { bytesRead } = await fh.read(buf, length, buf.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    if (length > max) throw new UserError(`larger than ${max} bytes`);
    return { bytes: new Uint8Array(buf.subarray(0, length)), mode: st.mode };
  } finally {
    await fh.close();
  }
}

/** Parses a JSON object from key-file bytes; anything else throws a UserError. */
function parseObject(bytes: Uint8Array): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw new UserError('not a JSON key file');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new UserError('not a JSON key file');
  return value as Record<string, unknown>;
}

/** Checks the fields every key file carries. */
function checkHeader(obj: Record<string, unknown>, format: string): { alg: Alg; name: string } {
  if (obj.format !== format) throw new UserError(`not a ${format} file`);
  if (!isAlg(obj.alg)) throw new UserError(`unknown algorithm (expected ${ALGS.join(' or ')})`);
  if (!isKeyName(obj.name)) throw new UserError('invalid key name');
  if (!isKeyId(obj.keyId)) throw new UserError('invalid key id');
  return { alg: obj.alg, name: obj.name };
}

/** Parses public key file text; throws a UserError naming what is wrong. */
export function parsePublicKey(bytes: Uint8Array): PublicKeyRecord {
  const obj = parseObject(bytes);
  const { alg, name } = checkHeader(obj, PUBLIC_KEY_FORMAT);
  const publicKey = fromBase64(obj.publicKey);
  if (!publicKey || publicKey.length !== dsa(alg).lengths.publicKey) {
    throw new UserError(`public key is not ${dsa(alg).lengths.publicKey} bytes of base64 for ${alg}`);
  }
  // The id is recomputed, never trusted from the file, so a file cannot claim another key's identity.
  const keyId = keyIdOf(alg, publicKey);
  if (keyId !== obj.keyId) throw new UserError('key id does not match the public key');
  return { alg, name, keyId, publicKey };
}

export async function readPublicKey(file: string): Promise<PublicKeyRecord> {
  let bytes: Uint8Array;
  try {
    ({ bytes } = await readSmallFile(file, MAX_KEY_FILE_BYTES));
  } catch (err) {
    throw new UserError(`cannot read public key ${printable(file)}: ${fsReason(err)}`);
  }
  try {
    return { ...parsePublicKey(bytes), path: file };
  } catch (err) {
    throw new UserError(`invalid public key ${printable(file)}: ${oneLine(err)}`);
  }
}

/** Reads a secret key file, refusing one that others could read (as ssh does). */
export async function readSecretKey(file: string): Promise<SecretKeyRecord> {
  let bytes: Uint8Array;
  let mode: number;
  try {
    ({ bytes, mode } = await readSmallFile(file, MAX_KEY_FILE_BYTES));
  } catch (err) {
    throw new UserError(`cannot read secret key ${printable(file)}: ${fsReason(err)}`);
  }
  if ((mode & 0o077) !== 0) {
    const perms = (mode & 0o777).toString(8).padStart(4, '0');
    throw new UserError(`permissions ${perms} for secret key ${printable(file)} are too open; it must be accessible by its owner only (chmod 600 ${printable(file)})`);
  }
  try {
    const obj = parseObject(bytes);
    const { alg, name } = checkHeader(obj, SECRET_KEY_FORMAT);
    const seed = fromBase64(obj.seed);
    if (!seed || seed.length !== 32) throw new UserError('seed is not 32 bytes of base64');
    const { publicKey, secretKey } = dsa(alg).keygen(seed);
    const keyId = keyIdOf(alg, publicKey);
    if (keyId !== obj.keyId) throw new UserError('key id does not match the seed');
    return { alg, name, keyId, seed, publicKey, secretKey };
  } catch (err) {
    throw new UserError(`invalid secret key ${printable(file)}: ${oneLine(err)}`);
  }
}

/**
 * Writes `text` to `file` atomically: a private temp file beside it, then link (fails if `file` exists,
 * so nothing is ever overwritten) or, with `replace`, rename.
 */
export async function writeFileAtomic(file: string, text: string, mode: number, replace: boolean): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  const fh = await fs.open(tmp, 'wx', mode);
  try {
    try {
      await fh.writeFile(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (replace) await fs.rename(tmp, file);
    else await fs.link(tmp, file);
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

/** Generates a key pair and writes NAME.key (0600) and NAME.pub into outDir (created 0700). */
export async function generateKey(
  name: string,
  alg: Alg,
  outDir: string,
  opts: { force?: boolean } = {},
): Promise<{ keyId: string; secretPath: string; publicPath: string }> {
  if (!isKeyName(name)) {
    throw new UsageError(`invalid key name ${JSON.stringify(name)}: use 1-63 of a-z 0-9 . _ -, starting with a letter or digit`);
  }
  if (!isAlg(alg)) throw new UsageError(`unknown algorithm ${JSON.stringify(alg)} (expected ${ALGS.join(' or ')})`);
  await fs.mkdir(outDir, { recursive: true, mode: 0o700 });

  const seed = randomBytes(32);
  const { publicKey } = dsa(alg).keygen(seed);
  const keyId = keyIdOf(alg, publicKey);
  const secretPath = path.join(outDir, `${name}.key`);
  const publicPath = path.join(outDir, `${name}.pub`);
  const secretText = `${JSON.stringify({ format: SECRET_KEY_FORMAT, alg, name, keyId, seed: toBase64(seed) }, null, 2)}\n`;
  const publicText = `${JSON.stringify({ format: PUBLIC_KEY_FORMAT, alg, name, keyId, publicKey: toBase64(publicKey) }, null, 2)}\n`;
  seed.fill(0);

  const exists = (file: string) => new UserError(`${printable(file)} already exists; not overwriting it (use --force to replace the key ${name})`);
  try {
    await writeFileAtomic(secretPath, secretText, 0o600, !!opts.force);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw exists(secretPath);
    throw new UserError(`cannot write ${printable(secretPath)}: ${fsReason(err)}`);
  }
  try {
    await writeFileAtomic(publicPath, publicText, 0o644, !!opts.force);
  } catch (err) {
    // Without its public half the new secret key is of no use: remove it so a retry starts clean.
    await fs.rm(secretPath, { force: true });
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw exists(publicPath);
    throw new UserError(`cannot write ${printable(publicPath)}: ${fsReason(err)}`);
  }
  return { keyId, secretPath, publicPath };
}

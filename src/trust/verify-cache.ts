// Signatures already verified, so an unchanged file is not verified again.
//
// A cache key is sha256 over (file bytes, signature bytes, trust store digest); the trust store digest
// covers every trusted key's id, algorithm and public key, so adding, removing or changing a key changes
// every key and nothing cached survives it. Only positive outcomes are cached: a key means "the ML-DSA
// check of this file, this signature, under this trust store passed". A hit still runs every other check
// (verifyBytesKnownGood), so the outcome, signer name included, is the one a full verification gives.
//
// The persistent cache is one JSON index, STATE/cache/signatures/index.json (dir 0700, file 0600),
// written atomically, newest SIGNATURE_CACHE_LIMIT keys kept. It is only trusted when it is private
// (owned by root or the running user, not writable by others); an entry that is not a 64-hex key is
// ignored, and an index that cannot be read or parsed is treated as empty. Any failure to create or write
// it just leaves the cache out: it can only ever save work, never decide an outcome.
import { createHash } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from './keys.ts';
import type { TrustStore } from './truststore.ts';

export const SIGNATURE_CACHE_FORMAT = 'qwamos-signature-cache-v1';
/** Keys kept in the persistent cache (newest first kept): about 1.4 MB of index. */
export const SIGNATURE_CACHE_LIMIT = 20_000;
const MAX_INDEX_BYTES = 4 * 1024 * 1024;
const CACHE_KEY = /^[0-9a-f]{64}$/;
const INDEX_FILE = 'index.json';

/** A digest of the trust store's keys: part of every signature cache key. */
export function trustStoreDigest(store: TrustStore): string {
  const hash = createHash('sha256');
  for (const id of [...store.keys.keys()].sort()) {
    const key = store.keys.get(id)!;
    hash.update(`${id}:${key.alg}:`).update(key.publicKey).update('\n');
  }
  return hash.digest('hex');
}

export function signatureCacheKey(bytes: Uint8Array, sig: Uint8Array, storeDigest: string): string {
  // Lengths first, so no two (file, signature) pairs hash the same bytes.
  return createHash('sha256').update(`${bytes.length}:${sig.length}:${storeDigest}:`).update(bytes).update(sig).digest('hex');
}

/** The signature cache directory under a state directory. */
export function signatureCacheDir(stateDir: string): string {
  return path.join(stateDir, 'cache', 'signatures');
}

/** The verified-signature keys stored under dir; see the header. */
export class SignatureCacheFile {
  private readonly added: string[] = [];

  private constructor(
    readonly dir: string,
    private readonly keys: Set<string>,
  ) {}

  /**
   * Opens (creating cache/ and cache/signatures/ under an existing state dir, 0700) and reads the cache.
   * Undefined when it cannot be used: no state dir, not writable, or not private.
   */
  static async open(dir: string): Promise<SignatureCacheFile | undefined> {
    try {
      // Never creates the state dir itself: a command run without one keeps no cache.
      await fs.mkdir(path.dirname(dir), { mode: 0o700 }).catch(ignoreExists);
      await fs.mkdir(dir, { mode: 0o700 }).catch(ignoreExists);
      if (!(await isPrivateDir(dir))) return undefined;
      await fs.access(dir, fsc.W_OK);
    } catch {
      return undefined;
    }
    return new SignatureCacheFile(dir, new Set(await readIndex(path.join(dir, INDEX_FILE))));
  }

  has(key: string): boolean {
    return this.keys.has(key);
  }

  /** Records a key whose ML-DSA check passed. */
  add(key: string): void {
    if (this.keys.has(key)) return;
    this.keys.add(key);
    this.added.push(key);
  }

  /**
   * Writes the keys added since open, merged with what is on disk now (another command may have written
   * meanwhile), keeping the newest SIGNATURE_CACHE_LIMIT. A failure leaves the cache as it was.
   */
  async save(): Promise<void> {
    if (this.added.length === 0) return;
    const file = path.join(this.dir, INDEX_FILE);
    try {
      const merged = new Set(await readIndex(file));
      for (const key of this.added) {
        merged.delete(key);
        merged.add(key);
      }
      const keys = [...merged].slice(-SIGNATURE_CACHE_LIMIT);
      await writeFileAtomic(file, `${JSON.stringify({ format: SIGNATURE_CACHE_FORMAT, keys })}\n`, 0o600, true);
      this.added.length = 0;
    } catch {
      // A cache that cannot be written only costs the next command its verification time.
    }
  }
}

function ignoreExists(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
}

function isOwnedPrivately(st: { uid: number; mode: number }): boolean {
  const me = process.getuid?.();
  if (me !== undefined && st.uid !== 0 && st.uid !== me) return false;
  return (st.mode & 0o022) === 0;
}

async function isPrivateDir(dir: string): Promise<boolean> {
  const st = await fs.lstat(dir);
  return st.isDirectory() && isOwnedPrivately(st);
}

/** The keys in an index file, oldest first; [] for a missing, foreign, oversized or unparsable file. */
async function readIndex(file: string): Promise<string[]> {
  let text: string;
  try {
    // O_NOFOLLOW and O_NONBLOCK: a link or FIFO planted in place of the index is not followed or waited on.
    const fh = await fs.open(file, fsc.O_RDONLY | fsc.O_NOFOLLOW | fsc.O_NONBLOCK);
    try {
      const st = await fh.stat();
      if (!st.isFile() || !isOwnedPrivately(st) || st.size > MAX_INDEX_BYTES) return [];
      text = await fh.readFile('utf8');
    } finally {
      await fh.close();
    }
  } catch {
    return [];
  }
  try {
    const index: unknown = JSON.parse(text);
    if (typeof index !== 'object' || index === null) return [];
    const { format, keys } = index as Record<string, unknown>;
    if (format !== SIGNATURE_CACHE_FORMAT || !Array.isArray(keys)) return [];
    return keys.filter((k): k is string => typeof k === 'string' && CACHE_KEY.test(k));
  } catch {
    return [];
  }
}

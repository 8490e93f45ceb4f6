// Detached signatures over a file's exact bytes, kept beside it as FILE.sig:
//   {"format":"qwamos-signature-v1","alg":"ml-dsa-65","keyId":"<32 hex>","keyName":"alice","signature":"<base64>"}
// The ML-DSA context string separates these signatures from anything else the same key might sign.
// keyName is only a hint for people: the name reported after verification comes from the trust store.
import { MAX_MANIFEST_BYTES } from '../config.ts';
import { UsageError, UserError, printable } from '../errors.ts';
import {
  ALGS, MAX_KEY_FILE_BYTES, dsa, fromBase64, fsReason, isAlg, isKeyId, isKeyName, readSmallFile, toBase64,
  type Alg, type SecretKeyRecord,
} from './keys.ts';
import type { TrustStore } from './truststore.ts';

export type { Alg } from './keys.ts';

export const SIGNATURE_FORMAT = 'qwamos-signature-v1';
export const SIGNATURE_CONTEXT = new TextEncoder().encode('qwamos-manifest-v1');
/** Largest signature file accepted; a real one is under 7 KiB. */
export const MAX_SIGNATURE_BYTES = MAX_KEY_FILE_BYTES;

/**
 * What verification found. `message` (all but verified) is the text to print after "FILE: ", e.g.
 * "tampered (signature by key ID does not match the file's bytes)".
 */
export type VerifyOutcome =
  | { status: 'verified'; keyId: string; keyName: string; alg: Alg }
  | { status: 'unsigned' | 'tampered' | 'untrusted' | 'malformed'; keyId?: string; message: string };

/** Signs bytes with a secret key; returns the text of the .sig file. */
export function signBytes(bytes: Uint8Array, key: SecretKeyRecord): string {
  const signature = dsa(key.alg).sign(bytes, key.secretKey, { context: SIGNATURE_CONTEXT });
  const sig = { format: SIGNATURE_FORMAT, alg: key.alg, keyId: key.keyId, keyName: key.name, signature: toBase64(signature) };
  return `${JSON.stringify(sig, null, 2)}\n`;
}

const malformed = (why: string, keyId?: string): VerifyOutcome => ({
  status: 'malformed', ...(keyId ? { keyId } : {}), message: `malformed signature (${why})`,
});

/** Checks a signature text against bytes and a trust store. Never throws: bad input is an outcome. */
export function verifyBytes(bytes: Uint8Array, sigText: string | undefined, store: TrustStore): VerifyOutcome {
  return checkSignature(bytes, sigText, store, true);
}

/**
 * verifyBytes for a (file, signature, trust store) whose ML-DSA check already passed (a signature cache
 * hit): every other check runs again, so the outcome is the one verifyBytes gives, signer name included.
 */
export function verifyBytesKnownGood(bytes: Uint8Array, sigText: string, store: TrustStore): VerifyOutcome {
  return checkSignature(bytes, sigText, store, false);
}

function checkSignature(bytes: Uint8Array, sigText: string | undefined, store: TrustStore, runCrypto: boolean): VerifyOutcome {
  if (sigText === undefined) return { status: 'unsigned', message: 'unsigned (no signature)' };
  if (Buffer.byteLength(sigText) > MAX_SIGNATURE_BYTES) return malformed(`larger than ${MAX_SIGNATURE_BYTES} bytes`);

  let sig: unknown;
  try {
    sig = JSON.parse(sigText);
  } catch {
    return malformed('not JSON');
  }
  if (typeof sig !== 'object' || sig === null || Array.isArray(sig)) return malformed('not a JSON object');
  const { format, alg, keyId, keyName, signature } = sig as Record<string, unknown>;
  if (format !== SIGNATURE_FORMAT) return malformed(`unknown format, expected ${SIGNATURE_FORMAT}`);
  if (!isAlg(alg)) return malformed(`unknown algorithm, expected ${ALGS.join(' or ')}`);
  if (!isKeyId(keyId)) return malformed('key id is not 32 hex digits');
  if (keyName !== undefined && !isKeyName(keyName)) return malformed('invalid key name', keyId);
  const sigBytes = fromBase64(signature);
  if (!sigBytes) return malformed('signature is not valid base64', keyId);
  const expected = dsa(alg).lengths.signature;
  if (sigBytes.length !== expected) {
    return malformed(`signature is ${sigBytes.length} bytes, ${alg} signatures are ${expected}`, keyId);
  }

  const key = store.keys.get(keyId);
  if (!key) return { status: 'untrusted', keyId, message: `untrusted key ${keyId} (not in ${printable(store.dir)})` };
  // The key id already covers the algorithm, so a mismatch means a doctored signature file.
  if (key.alg !== alg) return malformed(`claims ${alg} but key ${keyId} is ${key.alg}`, keyId);

  let ok = !runCrypto;
  if (runCrypto) {
    try {
      ok = dsa(alg).verify(sigBytes, bytes, key.publicKey, { context: SIGNATURE_CONTEXT });
    } catch {
      ok = false;
    }
  }
  if (!ok) return { status: 'tampered', keyId, message: `tampered (signature by key ${keyId} does not match the file's bytes)` };
  return { status: 'verified', keyId, keyName: key.name, alg };
}

/**
 * Reads FILE (unless its bytes are given) and FILE.sig, then verifies. A missing or unreadable FILE
 * throws a UserError; everything wrong with FILE.sig is an outcome.
 */
export async function verifyFile(file: string, store: TrustStore, bytes?: Uint8Array): Promise<VerifyOutcome> {
  if (!bytes) bytes = await readSignedFile(file);
  const sig = await readSignature(file);
  return 'outcome' in sig ? sig.outcome : verifyBytes(bytes, sig.text, store);
}

/**
 * Reads FILE.sig: its bytes and UTF-8 text, or the outcome when there is nothing to verify (no .sig,
 * unreadable, not UTF-8).
 */
export async function readSignature(file: string): Promise<{ bytes: Uint8Array; text: string } | { outcome: VerifyOutcome }> {
  const sigFile = `${file}.sig`;
  let sigBytes: Uint8Array;
  try {
    ({ bytes: sigBytes } = await readSmallFile(sigFile, MAX_SIGNATURE_BYTES));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return { outcome: { status: 'unsigned', message: `unsigned (no ${printable(sigFile)})` } };
    }
    return { outcome: malformed(`cannot read ${printable(sigFile)}: ${fsReason(err)}`) };
  }
  try {
    return { bytes: sigBytes, text: new TextDecoder('utf-8', { fatal: true }).decode(sigBytes) };
  } catch {
    return { outcome: malformed('not UTF-8 text') };
  }
}

/**
 * Reads every file given on a command line before anything is decided: a missing or unreadable one is a
 * usage error (exit 2), and nothing gets signed or reported.
 */
export async function readSignedFiles(files: string[]): Promise<Uint8Array[]> {
  const contents: Uint8Array[] = [];
  for (const file of files) {
    try {
      contents.push(await readSignedFile(file));
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  }
  return contents;
}

/** Reads a file to sign or verify (a manifest: regular file, at most MAX_MANIFEST_BYTES). */
export async function readSignedFile(file: string): Promise<Uint8Array> {
  try {
    return (await readSmallFile(file, MAX_MANIFEST_BYTES)).bytes;
  } catch (err) {
    throw new UserError(`${printable(file)}: ${fsReason(err)}`);
  }
}

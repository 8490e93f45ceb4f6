// One revision of a git source, loaded whole: its files under `path` (already read from the object store),
// the signed index when there is one, every manifest's signature, and the validation of the whole set.
// The answer is either every resource of the revision, or the first thing wrong, naming the file and key:
// nothing of a revision is applied unless all of it is good.
import { createHash } from 'node:crypto';
import type { Diagnostic } from '../resources/diagnostics.ts';
import { sortDiagnostics } from '../resources/diagnostics.ts';
import type { LoadedResource } from '../resources/types.ts';
import { validateSources, type ValidateContext } from '../resources/validate.ts';
import { INDEX_FILE, INDEX_SIG_FILE, checkIndex, isIndexedPath, sha256Hex } from '../trust/index-file.ts';
import { verifyBytes, type VerifyOutcome } from '../trust/signature.ts';
import type { TrustStore } from '../trust/truststore.ts';
import { signatureCacheKey, trustStoreDigest } from '../trust/verify-cache.ts';
import { ignoreMatcher } from './ignore.ts';

// The cache key helpers live with the persistent signature cache; the GitSource controller imports this one from here.
export { trustStoreDigest };

/** Files a revision is read for: manifests, their signatures, the index and its signature. */
export function isRevisionFile(relative: string): boolean {
  if (relative === INDEX_FILE || relative === INDEX_SIG_FILE) return true;
  return isIndexedPath(relative) || (relative.endsWith('.sig') && isIndexedPath(relative.slice(0, -4)));
}

export interface RevisionFile {
  /** Relative to the source's path. */
  path: string;
  bytes: Uint8Array;
}

/**
 * Signatures already verified, keyed by sha256(file bytes, signature bytes, trust store digest): a file
 * whose blob and signature did not change is not verified again, unless the trust store changed.
 * Only verified outcomes are kept.
 */
export type SignatureCache = Map<string, VerifyOutcome>;

export type Verify = (bytes: Uint8Array, sigText: string | undefined, store: TrustStore) => VerifyOutcome;

export interface RevisionInput {
  commit: string;
  files: RevisionFile[];
  /** Shown before each file's relative path in messages (the source's path inside the repository). */
  pathPrefix: string;
  ignore: string[];
  allowEmpty: boolean;
  requireIndex: boolean;
  /** Serial and sha256 of the index of the revision in force, if it had one. */
  appliedSerial?: number;
  appliedIndexDigest?: string;
  /** The operator named this commit in acceptRevision (an older index serial is let through). */
  accepted: boolean;
  store: TrustStore;
  signatureCache: SignatureCache;
  validate: ValidateContext;
  /** Signature verification (tests count calls); verifyBytes by default. */
  verify?: Verify;
}

/** What is wrong with a revision: the file, the key (Kind/name, or what part of the file) and why. */
export interface RevisionError {
  file: string;
  key: string;
  reason: string;
}

export type RevisionResult =
  | {
      ok: true;
      commit: string;
      resources: LoadedResource[];
      /** 'sha256:<hex>' over the applied manifests' paths and contents. */
      digest: string;
      /** The index serial and the sha256 of its bytes, when the revision has an index. */
      serial?: number;
      indexDigest?: string;
      warnings: Diagnostic[];
      /** Signature checks this load actually ran (the rest came from the cache). */
      verified: number;
      /** The verified signer of each applied file, by the file as shown (pathPrefix/relative). */
      signers: Map<string, { keyId: string; alg: string; name: string }>;
    }
  | { ok: false; commit: string; condition: 'VerificationFailed' | 'EmptyRefused'; error: RevisionError; diagnostics: Diagnostic[] };

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function loadRevision(input: RevisionInput): RevisionResult {
  const { commit } = input;
  const shown = (rel: string) => (input.pathPrefix && input.pathPrefix !== '.' ? `${input.pathPrefix.replace(/\/+$/, '')}/${rel}` : rel);
  const fail = (condition: 'VerificationFailed' | 'EmptyRefused', file: string, key: string, reason: string, diagnostics: Diagnostic[] = []): RevisionResult => ({
    ok: false, commit, condition, error: { file: shown(file), key, reason }, diagnostics,
  });

  const byPath = new Map(input.files.map((f) => [f.path, f.bytes]));
  const manifests = new Map([...byPath].filter(([p]) => isIndexedPath(p)));

  // The index covers every manifest under path, ignored or not: ignore decides what is applied, the
  // index what the signer saw.
  const index = checkIndex({
    files: manifests,
    ...(byPath.has(INDEX_FILE) ? { indexBytes: byPath.get(INDEX_FILE)! } : {}),
    ...(byPath.has(INDEX_SIG_FILE) ? { indexSig: byPath.get(INDEX_SIG_FILE)! } : {}),
    store: input.store,
    ...(input.appliedSerial !== undefined ? { appliedSerial: input.appliedSerial } : {}),
    ...(input.appliedIndexDigest !== undefined ? { appliedIndexDigest: input.appliedIndexDigest } : {}),
    required: input.requireIndex,
    acceptOlderSerial: input.accepted,
  });
  if (!index.ok) return fail('VerificationFailed', index.file, 'index', index.reason);

  const ignored = ignoreMatcher(input.ignore);
  const applied = [...manifests.keys()].filter((p) => !ignored(p)).sort();
  if (applied.length === 0 && !input.allowEmpty) {
    return fail('EmptyRefused', '.', 'path', 'no manifests in this revision (set allowEmpty: true to let an empty revision prune everything)');
  }

  const verify = input.verify ?? verifyBytes;
  const storeDigest = trustStoreDigest(input.store);
  let verified = 0;
  const signers = new Map<string, { keyId: string; alg: string; name: string }>();
  const signerOf = (o: VerifyOutcome) => (o.status === 'verified' ? { keyId: o.keyId, alg: o.alg, name: o.keyName } : undefined);
  for (const rel of applied) {
    const bytes = manifests.get(rel)!;
    const sig = byPath.get(`${rel}.sig`);
    if (sig === undefined) return fail('VerificationFailed', rel, 'signature', `unsigned (no ${shown(rel)}.sig in the revision)`);
    const cacheKey = signatureCacheKey(bytes, sig, storeDigest);
    const cached = input.signatureCache.get(cacheKey);
    if (cached) {
      const signer = signerOf(cached);
      if (signer) signers.set(shown(rel), signer);
      continue;
    }
    let sigText: string;
    try {
      sigText = utf8.decode(sig);
    } catch {
      return fail('VerificationFailed', rel, 'signature', 'malformed signature (not UTF-8 text)');
    }
    verified++;
    const outcome = verify(bytes, sigText, input.store);
    if (outcome.status !== 'verified') return fail('VerificationFailed', rel, 'signature', outcome.message);
    input.signatureCache.set(cacheKey, outcome);
    const signer = signerOf(outcome);
    if (signer) signers.set(shown(rel), signer);
  }

  const result = validateSources(applied.map((rel) => ({ file: shown(rel), bytes: manifests.get(rel)! })), input.validate);
  const diagnostics = sortDiagnostics(result.diagnostics);
  const firstError = diagnostics.find((d) => d.severity !== 'warning');
  if (firstError) {
    return { ok: false, commit, condition: 'VerificationFailed', error: { file: firstError.file, key: firstError.resource, reason: `${firstError.line}:${firstError.col}: ${firstError.message}` }, diagnostics };
  }

  const digest = createHash('sha256');
  for (const rel of applied) digest.update(`${rel}\0${sha256Hex(manifests.get(rel)!)}\n`);
  return {
    ok: true,
    commit,
    resources: result.resources,
    digest: `sha256:${digest.digest('hex')}`,
    ...(index.index ? { serial: index.index.serial } : {}),
    ...(index.digest ? { indexDigest: index.digest } : {}),
    warnings: diagnostics,
    verified,
    signers,
  };
}

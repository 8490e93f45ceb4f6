// One pass of a git source, short of applying: fetch (or read the local repository), pick the commit,
// refuse a rollback, read the revision from the object store and load it whole. The GitSource controller
// calls this, applies what it returns as one unit and records the outcome in the source's status.
import path from 'node:path';
import { MAX_MANIFEST_BYTES } from '../config.ts';
import {
  GitError, ensureMirror, fetchRef, isDescendant, localGitdir, mergeBase, readTokenFile, readTreeFiles, resolveCommit,
} from '../drivers/git.ts';
import type { GitSourceSpec } from '../resources/types.ts';
import type { ValidateContext } from '../resources/validate.ts';
import type { TrustStore } from '../trust/truststore.ts';
import { isRevisionFile, loadRevision, type RevisionError, type RevisionResult, type SignatureCache, type Verify } from './revision.ts';
import { DEFAULT_TIMEOUT, durationMs, followedRef, isRemoteUrl, revisionString, type FollowedRef } from './spec.ts';

/** What the source has in force (from its status). */
export interface AppliedState {
  commit?: string;
  /** Index serial and index sha256 of the applied revision, when it had an index. */
  serial?: number;
  indexDigest?: string;
  /** An acceptRevision already used: it is honoured once. */
  consumedAcceptRevision?: string;
}

export interface SyncInput {
  name: string;
  spec: GitSourceSpec;
  /** Mirrors of remote repositories live in STATE/git/<name>. */
  stateDir: string;
  applied: AppliedState;
  store: TrustStore;
  signatureCache: SignatureCache;
  validate: ValidateContext;
  verify?: Verify;
}

export type SyncCondition = 'FetchFailed' | 'VerificationFailed' | 'RollbackRefused' | 'EmptyRefused';

export type SyncResult =
  /** The followed commit is the one applied: nothing to do. */
  | { status: 'unchanged'; commit: string; revision: string }
  /** A new revision, loaded whole, to apply as one unit. acceptedRollback: acceptRevision was used. */
  | { status: 'ready'; commit: string; revision: string; load: Extract<RevisionResult, { ok: true }>; acceptedRollback: boolean }
  | { status: 'failed'; condition: SyncCondition; message: string; commit?: string; revision?: string; error?: RevisionError };

export function mirrorDir(stateDir: string, name: string): string {
  return path.join(stateDir, 'git', name);
}

function remoteRefOf(ref: FollowedRef): string {
  switch (ref.kind) {
    case 'head': return 'HEAD';
    case 'branch': return `refs/heads/${ref.name}`;
    case 'tag': return `refs/tags/${ref.name}`;
    case 'commit': return ref.branch ? `refs/heads/${ref.branch}` : 'HEAD';
  }
}

/** The followed commit, fetched (remote) or resolved (local), ready to be loaded. */
export interface Resolved {
  gitdir: string;
  commit: string;
  revision: string;
  /** isomorphic-git's object cache, shared by every read of one pass. */
  cache: object;
}

type Failed = Extract<SyncResult, { status: 'failed' }>;

function failedResult(spec: GitSourceSpec, condition: SyncCondition, message: string, commit?: string, error?: RevisionError): Failed {
  const ref = followedRef(spec);
  return { status: 'failed', condition, message, ...(commit ? { commit, revision: revisionString(ref, commit) } : {}), ...(error ? { error } : {}) };
}

/** Step 1 of a pass: fetch the followed ref (remote) or resolve it (local) to the commit to load. */
export async function resolveSource(input: Pick<SyncInput, 'name' | 'spec' | 'stateDir'>): Promise<Resolved | Failed> {
  const { spec } = input;
  const ref = followedRef(spec);
  const remoteRef = remoteRefOf(ref);
  // One cache per pass: without it every object read re-reads the pack.
  const cache = {};
  let gitdir: string;
  let tip: string | null;
  try {
    if (isRemoteUrl(spec.url)) {
      gitdir = mirrorDir(input.stateDir, input.name);
      await ensureMirror(gitdir, spec.url);
      const token = spec.tokenFile ? await readTokenFile(spec.tokenFile, spec.tokenScheme ?? 'bearer') : undefined;
      tip = await fetchRef({ gitdir, url: spec.url, remoteRef, timeoutMs: durationMs(spec.timeout ?? DEFAULT_TIMEOUT), cache, ...(token ? { token } : {}) });
    } else {
      gitdir = await localGitdir(spec.url);
      tip = await resolveCommit(gitdir, remoteRef, cache);
    }
  } catch (err) {
    return failedResult(spec, 'FetchFailed', err instanceof GitError ? err.message : `fetch from ${spec.url}: ${(err as Error).message}`);
  }
  if (tip === null) return failedResult(spec, 'EmptyRefused', `${spec.url} has no commits yet`);

  let commit = tip;
  if (ref.kind === 'commit') {
    if (!(await isDescendant(gitdir, tip, ref.commit, cache))) {
      return failedResult(spec, 'FetchFailed', `commit ${ref.commit} is not on ${remoteRef} of ${spec.url}`);
    }
    commit = ref.commit;
  }
  return { gitdir, commit, revision: revisionString(ref, commit), cache };
}

/**
 * Steps 3-6 of a pass: refuse a rollback, read the revision from the object store and load it whole.
 * Loading the applied commit again (to re-apply what someone changed behind the source) passes the
 * rollback check, as a commit descends from itself.
 */
export async function loadSource(input: SyncInput, resolved: Resolved): Promise<Extract<SyncResult, { status: 'ready' }> | Failed> {
  const { spec } = input;
  const { gitdir, commit, revision, cache } = resolved;
  const ref = followedRef(spec);
  const failed = (condition: SyncCondition, message: string, error?: RevisionError) => failedResult(spec, condition, message, commit, error);

  const applied = input.applied.commit;
  const acceptable = spec.acceptRevision === commit && input.applied.consumedAcceptRevision !== commit;
  let acceptedRollback = false;
  if (applied && !(await isDescendant(gitdir, commit, applied, cache))) {
    if (!acceptable) {
      const base = await mergeBase(gitdir, commit, applied, cache);
      const baseText = base ? `merge base sha1:${base}` : 'no common history';
      return failed('RollbackRefused', `revision ${revision} is not a descendant of the applied ${revisionString(ref, applied)} (${baseText}); to accept it once, set spec.acceptRevision: ${commit}`);
    }
    acceptedRollback = true;
  }

  let files;
  try {
    const dir = spec.path ?? '.';
    files = await readTreeFiles({ gitdir, commit, dir, want: isRevisionFile, maxBytes: MAX_MANIFEST_BYTES, cache });
  } catch (err) {
    if (err instanceof GitError) {
      const reason = err.path ? err.message.slice(err.path.length + 2) : err.message;
      return failed('VerificationFailed', `${revision}: ${err.message}`, { file: err.path ?? spec.path ?? '.', key: 'file', reason });
    }
    return failed('FetchFailed', `${revision}: cannot read the revision: ${(err as Error).message}`);
  }
  const load = loadRevision({
    commit,
    files: files ?? [],
    pathPrefix: spec.path ?? '.',
    ignore: spec.ignore ?? [],
    allowEmpty: spec.allowEmpty ?? false,
    requireIndex: spec.requireIndex ?? false,
    ...(input.applied.serial !== undefined ? { appliedSerial: input.applied.serial } : {}),
    ...(input.applied.indexDigest !== undefined ? { appliedIndexDigest: input.applied.indexDigest } : {}),
    accepted: acceptable,
    store: input.store,
    signatureCache: input.signatureCache,
    validate: input.validate,
    ...(input.verify ? { verify: input.verify } : {}),
  });
  if (!load.ok) {
    const { file, key, reason } = load.error;
    return failed(load.condition, `${revision}: ${file}: ${key}: ${reason}`, load.error);
  }
  return { status: 'ready', commit, revision, load, acceptedRollback };
}

/** One whole pass short of applying: resolve, then load unless the followed commit is the applied one. */
export async function syncSource(input: SyncInput): Promise<SyncResult> {
  const resolved = await resolveSource(input);
  if ('status' in resolved) return resolved;
  if (resolved.commit === input.applied.commit) return { status: 'unchanged', commit: resolved.commit, revision: resolved.revision };
  return loadSource(input, resolved);
}

// The GitSource plan and status, both pure: from what observe found (the followed commit, the source's
// state file, owned resources changed behind it) to what to do now and what the status says.
import { inSync, stalled, waiting, type Action, type Plan, type StatusReport } from '../../engine/contract.ts';
import type { ConditionPatch, StoredResource } from '../../store/store.ts';
import { keyOf } from '../../resources/keys.ts';
import type { SyncCondition } from '../../git/sync.ts';
import { nextPollMs } from '../../git/spec.ts';
import type { SourceState } from './state.ts';
import type { AgreedRevision } from '../../cluster/revision.ts';

export type FetchOutcome =
  | { ok: true; commit: string; revision: string; gitdir: string }
  | { ok: false; condition: SyncCondition; message: string };

export interface GitSourceActual {
  state: SourceState;
  /** Absent when the source was not fetched (suspended, being deleted). */
  fetch?: FetchOutcome;
  /** The trust store's digest (part of the refused-revision memo), or why it cannot be read. */
  trust?: { ok: true; digest: string } | { ok: false; message: string };
  /** Resources the source owns whose stored record no longer names it ('Kind/name'), e.g. changed by `apply -f`. */
  conflicts: string[];
  /** The state file or the mirror exists (something to forget when the source is deleted). */
  hasState: boolean;
  /** Stored resources (not being deleted) whose source names this source. */
  ownedStored: number;
  /**
   * In a cluster: the revision agreed in etcd. `fetch` then names the commit to apply (the agreed one, or
   * the fetched one when it is new and descends from the agreed one: `propose`); `unavailable` says why
   * this node cannot apply the agreed revision (not fetched here, etcd unreachable).
   */
  cluster?: { node: string; agreed?: AgreedRevision; propose: boolean; unavailable?: string };
}

export interface ApplyRevisionAction extends Action {
  type: 'apply-revision';
  commit: string;
  revision: string;
  gitdir: string;
  /** 'conflict': the applied commit again, to take back owned resources changed behind the source. */
  reason: 'new' | 'conflict';
  conflicts: string[];
  /** In a cluster: propose this revision (compare-and-swap on the agreed one seen) once verified, store it only if agreed. */
  propose?: { node: string; seen: AgreedRevision | undefined };
}

export interface ForgetSourceAction extends Action {
  type: 'forget-source';
}

export type GitSourceAction = ApplyRevisionAction | ForgetSourceAction;

/** A fetch that failed is tried again sooner than the interval, but not more often than this. */
const FETCH_RETRY_MAX_MS = 30_000;

export const CONDITIONS: readonly SyncCondition[] = ['FetchFailed', 'VerificationFailed', 'RollbackRefused', 'EmptyRefused'];

/** The refusal that holds now: a failed fetch, or the followed commit refused at this generation and trust store. */
export function currentFailure(resource: StoredResource<'GitSource'>, actual: GitSourceActual): { condition: SyncCondition; message: string } | undefined {
  const { fetch, state, trust } = actual;
  if (!fetch) return undefined;
  if (!fetch.ok) return { condition: fetch.condition, message: fetch.message };
  if (trust && !trust.ok) return { condition: 'VerificationFailed', message: trust.message };
  const f = state.failed;
  if (
    f &&
    fetch.commit !== state.applied?.commit &&
    f.commit === fetch.commit &&
    f.generation === resource.generation &&
    trust?.ok &&
    f.trustDigest === trust.digest
  ) {
    return { condition: f.condition, message: f.message };
  }
  return undefined;
}

export function planGitSource(resource: StoredResource<'GitSource'>, actual: GitSourceActual | undefined): Plan<GitSourceAction> {
  const key = keyOf(resource);
  const name = resource.metadata.name;
  if (resource.deletionRequestedAt) {
    const prune = resource.spec.prune ?? true;
    return actual?.hasState || (prune && (actual?.ownedStored ?? 0) > 0)
      ? { actions: [{ type: 'forget-source', resource: key, describe: `forget gitsource/${name}${prune ? ' and delete what it applied' : ''}` }] }
      : inSync();
  }
  if (resource.spec.suspend || !actual?.fetch) return inSync();

  const failure = currentFailure(resource, actual);
  if (failure?.condition === 'FetchFailed') {
    return { actions: [], hold: waiting('FetchFailed', failure.message, Math.min(nextPollMs(resource.spec), FETCH_RETRY_MAX_MS)) };
  }
  if (failure) return { actions: [], hold: stalled(failure.condition, failure.message) };

  const fetch = actual.fetch;
  if (!fetch.ok) return inSync(); // unreachable: a failed fetch is a failure above
  const cluster = actual.cluster;
  if (cluster?.unavailable) return { actions: [], hold: waiting('RevisionUnavailable', cluster.unavailable, Math.min(nextPollMs(resource.spec), FETCH_RETRY_MAX_MS)) };
  const propose = cluster?.propose ? { propose: { node: cluster.node, seen: cluster.agreed } } : {};
  const applied = actual.state.applied;
  if (fetch.commit !== applied?.commit || cluster?.propose) {
    const what = cluster?.propose ? `propose ${fetch.revision} to the cluster and apply it once agreed` : `apply ${fetch.revision}${cluster ? ' (agreed in the cluster)' : ''}`;
    return {
      actions: [{ type: 'apply-revision', resource: key, describe: what, commit: fetch.commit, revision: fetch.revision, gitdir: fetch.gitdir, reason: 'new', conflicts: [], ...propose }],
    };
  }
  if (actual.conflicts.length > 0) {
    return {
      actions: [{
        type: 'apply-revision', resource: key, commit: fetch.commit, revision: fetch.revision, gitdir: fetch.gitdir, reason: 'conflict', conflicts: actual.conflicts,
        describe: `re-apply ${fetch.revision} over ${actual.conflicts.join(', ')} (changed outside the source)`,
      }],
    };
  }
  return inSync();
}

/** Status fields and the GitSource conditions (Ready among them, overriding the engine's with the source's view). */
export function reportGitSource(resource: StoredResource<'GitSource'>, actual: GitSourceActual | undefined): StatusReport {
  if (!actual) return {};
  const { state, fetch } = actual;
  const failure = currentFailure(resource, actual);
  const conditions: ConditionPatch[] = CONDITIONS.map((type) =>
    failure?.condition === type
      ? { type, status: 'True', reason: type, message: failure.message }
      : { type, status: 'False', reason: 'Succeeded', message: '' },
  );
  if (actual.cluster) {
    conditions.push(
      actual.cluster.unavailable
        ? { type: 'RevisionUnavailable', status: 'True', reason: 'RevisionUnavailable', message: actual.cluster.unavailable }
        : { type: 'RevisionUnavailable', status: 'False', reason: 'Available', message: '' },
    );
  }
  const applied = state.applied;
  if (resource.spec.suspend) {
    conditions.push({ type: 'Ready', status: applied ? 'True' : 'False', reason: 'Suspended', message: `spec.suspend: not followed${applied ? `; ${applied.revision} stays in force` : ''}` });
  } else if (failure) {
    conditions.push({ type: 'Ready', status: 'False', reason: failure.condition, message: `${failure.message}${applied ? ` (${applied.revision} stays in force)` : ''}` });
  } else if (actual.cluster?.unavailable) {
    conditions.push({ type: 'Ready', status: 'False', reason: 'RevisionUnavailable', message: `${actual.cluster.unavailable}${applied ? ` (${applied.revision} stays in force)` : ''}` });
  } else if (applied) {
    conditions.push({ type: 'Ready', status: 'True', reason: 'Succeeded', message: `applied revision ${applied.revision}` });
  }
  const attempted = state.failed && state.failed.at > (applied?.at ?? '') ? state.failed.revision : applied?.revision;
  return {
    conditions,
    fields: {
      url: resource.spec.url,
      interval: resource.spec.interval ?? '1m',
      lastFetchedRevision: fetch?.ok ? fetch.revision : null,
      lastAttemptedRevision: attempted ?? null,
      lastAppliedRevision: applied?.revision ?? null,
      ...(actual.cluster ? { agreedRevision: actual.cluster.agreed?.revision ?? null } : {}),
      appliedDigest: applied?.digest ?? null,
      appliedSerial: applied?.serial ?? null,
      appliedResources: applied ? applied.resources.length : null,
      consumedAcceptRevision: state.consumedAcceptRevision ?? null,
      lastError: failure && state.failed?.error && failure.message === state.failed.message ? state.failed.error : null,
      history: state.history.length ? state.history : null,
    },
  };
}

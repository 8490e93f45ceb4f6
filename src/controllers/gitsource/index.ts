// The GitSource controller: follows a git repository of signed manifests (Flux's GitRepository and
// Kustomization in one).
//   observe  fetch (remote, with the spec's timeout) or resolve (local) the followed ref; read the source's
//            state file; find owned resources changed behind it
//   plan     (pure, plan.ts) a new commit -> apply it; the applied one with owned resources changed -> apply
//            it again (git wins); a refused commit -> Stalled with its condition until something changes
//   apply    load the revision whole (src/git/sync.ts loadSource) and store it as ONE unit through
//            store.applyResources, pruning what this source applied before and no longer declares.
//            A refused revision stores nothing: the last good one stays in force.
// Polling: watch() asks for a pass every interval (±10%) and as soon as an owned resource is changed.
import { existsSync } from 'node:fs';
import type { Controller, FieldDiff, World } from '../../engine/contract.ts';
import { OutcomeError, failed, waiting } from '../../engine/contract.ts';
import { clusterKeys, type ClusterKeys } from '../../cluster/keys.ts';
import { ownLeaseFile } from '../../cluster/membership.ts';
import { proposeRevision, readAgreedRevision, type AgreedRevision } from '../../cluster/revision.ts';
import { isDescendant, peelToCommit } from '../../drivers/git.ts';
import type { EtcdClient } from '../../drivers/etcd.ts';
import { oneLine } from '../../errors.ts';
import { gitSourceOf, gitSourcePath } from '../../git/owner.ts';
import { trustStoreDigest, type RevisionError, type SignatureCache } from '../../git/revision.ts';
import { nextPollMs } from '../../git/spec.ts';
import { loadSource, mirrorDir, resolveSource, type SyncResult } from '../../git/sync.ts';
import { crossCheck } from '../../resources/crossref.ts';
import { keyOf, parseKey, type ObjectKey } from '../../resources/keys.ts';
import type { AnyResource, LoadedResource } from '../../resources/types.ts';
import type { Store, StoredResource } from '../../store/store.ts';
import { loadTrustStore } from '../../trust/truststore.ts';
import { planGitSource, reportGitSource, type ApplyRevisionAction, type GitSourceAction, type GitSourceActual } from './plan.ts';
import { appliedStateOf, forgetState, readState, stateFile, withHistory, writeState, type SourceState } from './state.ts';

export interface GitSourceOptions {
  stateDir: string;
  trustDir: string;
  imageRoot: string;
  prefix: string;
  /** Where a revision's resources are stored. */
  store: Store;
}

/** How often the watch looks for sources due for a poll and owned resources changed behind them. */
const TICK_MS = 500;

/** Thrown inside the store's lock to abandon a revision that conflicts with what is stored now. */
class Refused extends Error {
  constructor(readonly error: RevisionError) {
    super(error.reason);
  }
}

export class GitSourceController implements Controller<'GitSource', GitSourceActual, GitSourceAction> {
  readonly kind = 'GitSource' as const;
  /** Verified signatures per source, so an unchanged file is not verified again. */
  private readonly signatureCaches = new Map<string, SignatureCache>();
  /** What each source owned when last observed (for the watch's conflict check). */
  private readonly owned = new Map<string, string[]>();
  /** The etcd client while this daemon is in a cluster. */
  private etcd: { endpoints: string; client: EtcdClient } | undefined;

  constructor(private readonly opts: GitSourceOptions) {}

  async observe(resources: StoredResource<'GitSource'>[]): Promise<Map<ObjectKey, GitSourceActual>> {
    const { stateDir, store } = this.opts;
    const stored = await store.listResources();
    const byKey = new Map<string, StoredResource>(stored.map((r) => [keyOf(r), r]));
    const trust = await loadTrustStore(this.opts.trustDir).then(
      (ts) => ({ ok: true as const, digest: trustStoreDigest(ts) }),
      (err: unknown) => ({ ok: false as const, message: `trust store: ${oneLine(err)}` }),
    );
    // In a cluster (this daemon keeps the node's lease): every node applies only the agreed revision.
    const lease = await ownLeaseFile(stateDir);
    const cluster = lease ? { node: lease.node, keys: clusterKeys(lease.prefix), client: await this.clientFor(lease.endpoints) } : undefined;
    const out = new Map<ObjectKey, GitSourceActual>();
    await Promise.all(
      resources.map(async (r) => {
        const name = r.metadata.name;
        const hasState = existsSync(stateFile(stateDir, name)) || existsSync(mirrorDir(stateDir, name));
        const ownedStored = stored.filter((s) => !s.deletionRequestedAt && gitSourceOf(s.source.path) === name).length;
        let state: SourceState;
        try {
          state = await readState(stateDir, name);
        } catch (err) {
          // Never apply without knowing what is in force: rollback protection depends on it.
          out.set(keyOf(r), { state: { history: [] }, fetch: { ok: false, condition: 'FetchFailed', message: oneLine(err) }, conflicts: [], hasState, ownedStored });
          return;
        }
        const owned = state.applied?.resources ?? [];
        this.owned.set(keyOf(r), owned);
        const conflicts = owned.filter((k) => {
          const s = byKey.get(k);
          return !s || Boolean(s.deletionRequestedAt) || gitSourceOf(s.source.path) !== name;
        });
        const actual: GitSourceActual = { state, conflicts, hasState, ownedStored, trust };
        if (!r.deletionRequestedAt && !r.spec.suspend) {
          const resolved = await resolveSource({ name, spec: r.spec, stateDir });
          actual.fetch = 'status' in resolved
            ? { ok: false, condition: resolved.condition, message: resolved.message }
            : { ok: true, commit: resolved.commit, revision: resolved.revision, gitdir: resolved.gitdir };
          if (cluster && actual.fetch.ok) await this.followAgreed(name, actual, actual.fetch, cluster);
        }
        out.set(keyOf(r), actual);
      }),
    );
    return out;
  }

  /**
   * The cluster's agreed revision of this source decides what is applied. The fetched commit is proposed
   * (after verification, by compare-and-swap) when there is none yet or it descends from the agreed one;
   * an agreed commit this node has (the same, or an older fetch) is applied instead of the fetch; one it
   * has not fetched, or one the fetch does not descend from, is reported and nothing new is applied.
   */
  private async followAgreed(
    name: string,
    actual: GitSourceActual,
    fetched: { commit: string; revision: string; gitdir: string },
    cluster: { node: string; keys: ClusterKeys; client: EtcdClient },
  ): Promise<void> {
    let agreed: AgreedRevision | undefined;
    try {
      agreed = await readAgreedRevision(cluster.client, cluster.keys, cluster.keys.sourceRevision(name));
    } catch (err) {
      actual.cluster = { node: cluster.node, propose: false, unavailable: `cannot read the agreed revision from etcd: ${oneLine(err)}` };
      return;
    }
    const base = { node: cluster.node, ...(agreed ? { agreed } : {}) };
    if (!agreed || agreed.commit === fetched.commit) {
      actual.cluster = { ...base, propose: !agreed };
      return;
    }
    const cache = {};
    const have = agreed.commit !== undefined && (await peelToCommit(fetched.gitdir, agreed.commit, cache).then(() => true, () => false));
    if (!have || agreed.commit === undefined) {
      actual.cluster = { ...base, propose: false, unavailable: `the cluster agreed on ${agreed.revision} (proposed by ${agreed.by}), which this node has not fetched (it has ${fetched.revision})` };
      return;
    }
    if (await isDescendant(fetched.gitdir, fetched.commit, agreed.commit, cache)) {
      actual.cluster = { ...base, propose: true }; // newer than the agreed one
      return;
    }
    if (await isDescendant(fetched.gitdir, agreed.commit, fetched.commit, cache)) {
      // The agreed revision is newer than this node's fetch (and present here): apply it.
      actual.cluster = { ...base, propose: false };
      actual.fetch = { ok: true, commit: agreed.commit, revision: agreed.revision, gitdir: fetched.gitdir };
      return;
    }
    actual.cluster = { ...base, propose: false, unavailable: `fetched ${fetched.revision} does not descend from the agreed ${agreed.revision} (history rewritten?): not proposed` };
  }

  private async clientFor(endpoints: readonly string[]): Promise<EtcdClient> {
    const key = endpoints.join(',');
    if (this.etcd?.endpoints === key) return this.etcd.client;
    this.etcd?.client.close();
    const { EtcdClient } = await import('../../drivers/etcd.ts'); // gRPC: loaded only in a cluster
    const client = new EtcdClient(endpoints, { callTimeoutMs: 2000 });
    this.etcd = { endpoints: key, client };
    return client;
  }

  plan(resource: StoredResource<'GitSource'>, actual: GitSourceActual | undefined) {
    return planGitSource(resource, actual);
  }

  diff(resource: StoredResource<'GitSource'>, actual: GitSourceActual | undefined): FieldDiff[] {
    if (!actual?.conflicts.length || resource.deletionRequestedAt) return [];
    return [{ field: 'resources', desired: `as in ${actual.state.applied?.revision ?? 'the applied revision'}`, actual: `changed outside the source: ${actual.conflicts.join(', ')}` }];
  }

  report(resource: StoredResource<'GitSource'>, actual: GitSourceActual | undefined) {
    return reportGitSource(resource, actual);
  }

  async apply(actions: GitSourceAction[], world: World): Promise<void> {
    for (const action of actions) {
      const source = world.get('GitSource', parseKey(action.resource).name);
      if (!source) continue;
      if (action.type === 'forget-source') await this.forget(source);
      else await this.applyRevision(source, action);
    }
  }

  watch(notify: (keys: ObjectKey[]) => void, world: () => World): { close(): void } {
    const due = new Map<string, number>();
    const timer = setInterval(() => {
      const now = Date.now();
      const w = world();
      const byKey = new Map<string, StoredResource>(w.all.map((r) => [keyOf(r), r]));
      const wake: ObjectKey[] = [];
      for (const s of w.list('GitSource')) {
        const key = keyOf(s);
        if (s.spec.suspend || s.suspended) continue;
        const at = due.get(key);
        if (at === undefined || now >= at) {
          due.set(key, now + nextPollMs(s.spec));
          if (at !== undefined) wake.push(key);
          continue;
        }
        // An owned resource applied from elsewhere (apply -f) or deleted: take it back now.
        const changed = (this.owned.get(key) ?? []).some((k) => {
          const r = byKey.get(k);
          return !r || Boolean(r.deletionRequestedAt) || gitSourceOf(r.source.path) !== s.metadata.name;
        });
        if (changed) wake.push(key);
      }
      if (wake.length) notify(wake);
    }, TICK_MS);
    timer.unref();
    return { close: () => clearInterval(timer) };
  }

  // ---- apply ------------------------------------------------------------------------------------

  private async applyRevision(source: StoredResource<'GitSource'>, action: ApplyRevisionAction): Promise<void> {
    const { stateDir, store } = this.opts;
    const name = source.metadata.name;
    const sourceKey = keyOf(source);
    const state = await readState(stateDir, name);
    const trustStore = await loadTrustStore(this.opts.trustDir);
    const trustDigest = trustStoreDigest(trustStore);
    let cache = this.signatureCaches.get(name);
    if (!cache) this.signatureCaches.set(name, (cache = new Map()));
    const stored = await store.listResources();
    const result = await loadSource(
      {
        name,
        spec: source.spec,
        stateDir,
        applied: appliedStateOf(state),
        store: trustStore,
        signatureCache: cache,
        validate: { imageRoot: this.opts.imageRoot, prefix: this.opts.prefix, known: asLoaded(stored.filter((r) => gitSourceOf(r.source.path) !== name)) },
      },
      { gitdir: action.gitdir, commit: action.commit, revision: action.revision, cache: {} },
    );
    if (result.status === 'failed') {
      // A revision that cannot be read may read next time: retried with backoff, not remembered as refused.
      if (result.condition === 'FetchFailed') throw new OutcomeError(failed('FetchFailed', result.message));
      return this.refuse(source, state, trustDigest, result);
    }

    const { load, commit, revision } = result;
    if (action.propose) await this.propose(name, action.propose, { commit, revision });
    const storedByKey = new Map<string, StoredResource>(stored.map((r) => [keyOf(r), r]));
    const declared = new Set<string>(load.resources.map((r) => r.key));
    const prune = source.spec.prune ?? true;
    const prunable = (current: StoredResource[]) =>
      current.filter((r) => !r.deletionRequestedAt && gitSourceOf(r.source.path) === name && !declared.has(keyOf(r)));
    let takenOver: string[] = [];
    let outcome;
    try {
      outcome = await store.applyResources(
        load.resources.map((r) => {
          const signer = load.signers.get(r.file);
          const source = { path: gitSourcePath(name, r.file), digest: r.digest, commit, ...(signer ? { signer } : {}) };
          // A file unchanged since an earlier revision keeps that revision's commit: its record is not
          // rewritten (at 1,000 files, rewriting every record per revision costs seconds of fsyncs).
          const before = storedByKey.get(r.key);
          const same = before && !before.deletionRequestedAt && before.source.path === source.path && before.source.digest === source.digest && before.source.signer?.keyId === signer?.keyId;
          return { manifest: r.resource, source: same ? before.source : source };
        }),
        {
          // Under the store's lock, against the store as it is now.
          check: (current) => {
            const byKey = new Map(current.map((r) => [keyOf(r), r]));
            takenOver = [];
            for (const r of load.resources) {
              const now = byKey.get(r.key);
              if (!now || now.deletionRequestedAt) continue;
              const owner = gitSourceOf(now.source.path);
              if (owner && owner !== name) throw new Refused({ file: r.file, key: r.key, reason: `already applied by gitsource/${owner} (one resource, one source)` });
              if (owner !== name) takenOver.push(r.key);
            }
            const leaving = new Set(prune ? prunable(current).map((r) => keyOf(r)) : []);
            const issue = crossCheck(load.resources, asLoaded(current.filter((r) => !leaving.has(keyOf(r)) && !declared.has(keyOf(r))))).find((i) => i.severity !== 'warning');
            if (issue) throw new Refused({ file: issue.at.file, key: issue.at.key, reason: issue.message });
          },
          ...(prune ? { prune: (current: StoredResource[]) => prunable(current).map((r) => ({ kind: r.kind, name: r.metadata.name })) } : {}),
        },
      );
    } catch (err) {
      if (!(err instanceof Refused)) throw err;
      const { file, key, reason } = err.error;
      return this.refuse(source, state, trustDigest, { status: 'failed', condition: 'VerificationFailed', commit, revision, message: `${revision}: ${file}: ${key}: ${reason}`, error: err.error });
    }

    const at = new Date().toISOString();
    const count = (what: string) => outcome.applied.filter((a) => a.result === what).length;
    const summary = `${count('created')} created, ${count('configured')} configured, ${count('unchanged')} unchanged, ${outcome.pruned.length} pruned (${load.verified} signature${load.verified === 1 ? '' : 's'} verified)`;
    const reapplied = action.reason === 'conflict';
    await writeState(stateDir, name, {
      applied: {
        commit, revision, digest: load.digest, at, resources: [...declared].sort(),
        ...(load.serial !== undefined ? { serial: load.serial } : {}),
        ...(load.indexDigest !== undefined ? { indexDigest: load.indexDigest } : {}),
      },
      // acceptRevision is honoured once.
      ...(source.spec.acceptRevision === commit ? { consumedAcceptRevision: commit } : state.consumedAcceptRevision ? { consumedAcceptRevision: state.consumedAcceptRevision } : {}),
      history: withHistory(state, { at, revision, result: reapplied ? 'Reapplied' : result.acceptedRollback ? 'AcceptedRollback' : 'Applied', message: summary }),
    });
    await store.withLock(async () => {
      await store.appendEvent({ resource: sourceKey, type: 'Normal', reason: reapplied ? 'Reapplied' : 'RevisionApplied', message: `${revision}: ${summary}` });
      if (takenOver.length) {
        const message = `${takenOver.join(', ')} changed outside gitsource/${name} (apply -f, or deleted); git wins: applied from ${revision}`;
        await store.appendEvent({ resource: sourceKey, type: 'Warning', reason: 'Conflict', message });
        for (const k of takenOver) await store.appendEvent({ resource: k, type: 'Warning', reason: 'Conflict', message: `changed outside gitsource/${name}; git wins: applied from ${revision}` });
      }
    });
  }

  /**
   * Verified here: proposed to the cluster by compare-and-swap on the agreed revision this node saw. Lost
   * (another node proposed first, or the agreed one moved): nothing is stored, the next pass follows it.
   */
  private async propose(name: string, propose: NonNullable<ApplyRevisionAction['propose']>, next: { commit: string; revision: string }): Promise<void> {
    const lease = await ownLeaseFile(this.opts.stateDir);
    if (!lease) throw new OutcomeError(failed('RevisionUnavailable', 'this node left the cluster: the revision cannot be agreed'));
    const keys = clusterKeys(lease.prefix);
    const client = await this.clientFor(lease.endpoints);
    const res = await proposeRevision(client, keys, propose.seen, { revision: next.revision, commit: next.commit, by: propose.node }, keys.sourceRevision(name)).catch((err: unknown) => {
      throw new OutcomeError(failed('RevisionUnavailable', `cannot propose ${next.revision} to the cluster: ${oneLine(err)}`));
    });
    if (!res.accepted) {
      throw new OutcomeError(waiting('RevisionNotAgreed', `the cluster agreed on ${res.current?.revision ?? 'another revision'} (by ${res.current?.by ?? '?'}) meanwhile: following it, ${next.revision} not applied`, 100));
    }
  }

  /** Records a refused revision: nothing of it was stored; the last good revision stays in force. */
  private async refuse(source: StoredResource<'GitSource'>, state: SourceState, trustDigest: string, result: Extract<SyncResult, { status: 'failed' }>): Promise<void> {
    const name = source.metadata.name;
    const at = new Date().toISOString();
    const revision = result.revision ?? '?';
    await writeState(this.opts.stateDir, name, {
      ...state,
      failed: {
        commit: result.commit ?? '', revision, generation: source.generation, trustDigest, condition: result.condition, message: result.message, at,
        ...(result.error ? { error: result.error } : {}),
      },
      history: withHistory(state, { at, revision, result: result.condition, message: result.message }),
    });
    await this.opts.store.appendEvent({ resource: keyOf(source), type: 'Warning', reason: result.condition, message: `${result.message}; nothing of it was applied${state.applied ? `, ${state.applied.revision} stays in force` : ''}` });
  }

  /** A deleted source: what it applied goes too (unless prune: false), then its state and mirror. */
  private async forget(source: StoredResource<'GitSource'>): Promise<void> {
    const { store, stateDir } = this.opts;
    const name = source.metadata.name;
    if (source.spec.prune ?? true) {
      await store.withLock(async () => {
        for (const r of await store.listResources()) {
          if (!r.deletionRequestedAt && gitSourceOf(r.source.path) === name) await store.markForDeletion(r.kind, r.metadata.name);
        }
      });
    }
    await forgetState(stateDir, name);
    this.signatureCaches.delete(name);
    this.owned.delete(keyOf(source));
  }
}

/** Stored resources as validation's `known` set. */
function asLoaded(stored: StoredResource[]): LoadedResource[] {
  return stored
    .filter((r) => !r.deletionRequestedAt)
    .map((r) => {
      const { apiVersion, kind, metadata, spec } = r;
      const resource = { apiVersion, kind, metadata, spec } as AnyResource;
      return { resource, key: keyOf(r), file: r.source.path, digest: r.source.digest };
    });
}


// The one desired-state revision of the cluster: a key changed only by compare-and-swap, so two nodes
// proposing at once from the same view cannot both win, and a node that proposes from a stale view loses.
// Each GitSource has its own key (keys.sourceRevision): a node proposes a revision it fetched and verified
// itself, and applies only the agreed one, once it has fetched and verified that one itself.
import type { EtcdClient } from '../drivers/etcd.ts';
import type { ClusterKeys } from './keys.ts';

export interface AgreedRevision {
  /** The revision, e.g. 'fleet@main@sha1:…'. */
  revision: string;
  /** The node that proposed it. */
  by: string;
  /** The commit (sha1), for git sources. */
  commit?: string;
  at: string;
  /** The key's mod revision: what a proposal that replaces it must name. */
  version: string;
}

/** The agreed revision under `key` (default: the cluster's one key; a GitSource's: keys.sourceRevision(name)). */
export async function readAgreedRevision(client: EtcdClient, keys: ClusterKeys, key: string = keys.revision): Promise<AgreedRevision | undefined> {
  const e = await client.get(key);
  if (!e) return undefined;
  try {
    const v = JSON.parse(e.value) as { revision?: unknown; by?: unknown; at?: unknown; commit?: unknown };
    if (typeof v.revision !== 'string' || typeof v.by !== 'string' || typeof v.at !== 'string') return undefined;
    return { revision: v.revision, by: v.by, at: v.at, ...(typeof v.commit === 'string' ? { commit: v.commit } : {}), version: e.modRevision };
  } catch {
    return undefined;
  }
}

/**
 * Replaces the agreed revision with `next` only if it is still `seen` (undefined: only if there is none).
 * Resolves to the agreed revision after the attempt and whether this proposal made it.
 */
export async function proposeRevision(
  client: EtcdClient,
  keys: ClusterKeys,
  seen: AgreedRevision | undefined,
  next: { revision: string; by: string; commit?: string },
  key: string = keys.revision,
): Promise<{ accepted: boolean; current: AgreedRevision | undefined }> {
  const value = JSON.stringify({ revision: next.revision, by: next.by, at: new Date().toISOString(), ...(next.commit ? { commit: next.commit } : {}) });
  const guard = seen ? { key, modRevision: seen.version } : { key, absent: true as const };
  const res = await client.txn([guard], [{ put: key, value }]);
  return { accepted: res.succeeded, current: await readAgreedRevision(client, keys, key) };
}

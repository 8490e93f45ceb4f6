// The one desired-state revision of the cluster: a key changed only by compare-and-swap, so two nodes
// proposing at once from the same view cannot both win, and a node that proposes from a stale view loses.
// (Library only: no git source proposes or follows it yet. Each node must still fetch and verify a
// revision itself before applying it.)
import type { EtcdClient } from '../drivers/etcd.ts';
import type { ClusterKeys } from './keys.ts';

export interface AgreedRevision {
  /** The revision, e.g. 'fleet@main@sha1:…'. */
  revision: string;
  /** The node that proposed it. */
  by: string;
  at: string;
  /** The key's mod revision: what a proposal that replaces it must name. */
  version: string;
}

export async function readAgreedRevision(client: EtcdClient, keys: ClusterKeys): Promise<AgreedRevision | undefined> {
  const e = await client.get(keys.revision);
  if (!e) return undefined;
  try {
    const v = JSON.parse(e.value) as { revision?: unknown; by?: unknown; at?: unknown };
    if (typeof v.revision !== 'string' || typeof v.by !== 'string' || typeof v.at !== 'string') return undefined;
    return { revision: v.revision, by: v.by, at: v.at, version: e.modRevision };
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
  next: { revision: string; by: string },
): Promise<{ accepted: boolean; current: AgreedRevision | undefined }> {
  const value = JSON.stringify({ revision: next.revision, by: next.by, at: new Date().toISOString() });
  const guard = seen ? { key: keys.revision, modRevision: seen.version } : { key: keys.revision, absent: true as const };
  const res = await client.txn([guard], [{ put: keys.revision, value }]);
  return { accepted: res.succeeded, current: await readAgreedRevision(client, keys) };
}

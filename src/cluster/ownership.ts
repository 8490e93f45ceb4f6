// Ownership of a VM in the cluster: run/<vm>, bound to the owning node's lease, created in one
// transaction "only if absent and only while my node key carries my lease". The key's create revision is
// the fencing token: every status write of the owner is guarded by it, so a node that lost its claim
// (lease expired, key re-created by another node) can no longer write, however late its write arrives.
import type { EtcdClient } from '../drivers/etcd.ts';
import type { ClusterKeys } from './keys.ts';

export interface RunClaim {
  vm: string;
  node: string;
  lease: string;
  /** run/<vm>'s create revision: the fencing token. */
  token: string;
}

export type ClaimResult = { claimed: true; claim: RunClaim } | { claimed: false; reason: string; owner?: string };

/** Tries to claim run/<vm> for `node` under `lease`. */
export async function claimRun(client: EtcdClient, keys: ClusterKeys, vm: string, node: { name: string; lease: string }): Promise<ClaimResult> {
  const key = keys.run(vm);
  const value = JSON.stringify({ node: node.name, claimedAt: new Date().toISOString() });
  const res = await client.txn(
    [{ key, absent: true }, { key: keys.node(node.name), lease: node.lease }],
    [{ put: key, value, lease: node.lease }],
  );
  if (res.succeeded) return { claimed: true, claim: { vm, node: node.name, lease: node.lease, token: res.revision } };
  const current = await client.get(key);
  if (current) {
    const owner = ownerOf(current.value);
    return { claimed: false, reason: `run/${vm} is held by node ${owner ?? '?'}`, ...(owner ? { owner } : {}) };
  }
  return { claimed: false, reason: `node ${node.name} does not hold lease ${node.lease} (lost or rejoined)` };
}

/** Writes `key` only while `claim` still owns its VM (run/<vm> has the claim's create revision). */
export async function fencedPut(client: EtcdClient, keys: ClusterKeys, claim: RunClaim, key: string, value: string): Promise<boolean> {
  const res = await client.txn([{ key: keys.run(claim.vm), createRevision: claim.token }], [{ put: key, value }]);
  return res.succeeded;
}

/** Gives a claim up (the VM was stopped here): deletes run/<vm> only if it is still this claim. */
export async function releaseRun(client: EtcdClient, keys: ClusterKeys, claim: RunClaim): Promise<boolean> {
  const res = await client.txn([{ key: keys.run(claim.vm), createRevision: claim.token }], [{ delete: keys.run(claim.vm) }]);
  return res.succeeded;
}

/** Every VM's current owner (or as of `atRevision`), read at one revision (placement's `owners` input). */
export async function readOwners(client: EtcdClient, keys: ClusterKeys, atRevision?: string): Promise<{ revision: string; owners: Map<string, RunClaim> }> {
  const { revision, entries } = await client.list(keys.runs, atRevision);
  const owners = new Map<string, RunClaim>();
  for (const e of entries) {
    const vm = e.key.slice(keys.runs.length);
    const node = ownerOf(e.value);
    if (node) owners.set(vm, { vm, node, lease: e.lease, token: e.createRevision });
  }
  return { revision, owners };
}

/** The node a `run/<vm>` value names, if it is readable. */
export function ownerOf(value: string): string | undefined {
  try {
    const v = JSON.parse(value) as { node?: unknown };
    return typeof v.node === 'string' ? v.node : undefined;
  } catch {
    return undefined;
  }
}

// Ownership against a real etcd: exactly one winner among concurrent claimers, the create revision as
// fencing token, and late writes under a dead lease refused.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { claimRun, fencedPut, readOwners, releaseRun, type RunClaim } from '../../src/cluster/ownership.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';
import { until } from '../helpers/poll.ts';

const keys = clusterKeys('own/');

describe('run/<vm> ownership', () => {
  let etcd: EtcdCluster;
  const clients: EtcdClient[] = [];
  before(async () => {
    etcd = await startEtcd();
    // One connection per node, as separate daemons have.
    for (let i = 0; i < 4; i++) clients.push(new EtcdClient(etcd.endpoints));
  });
  after(async () => {
    for (const c of clients) c.close();
    await etcd?.stop();
  });

  /** A node as membership would make it: its key under its own lease. */
  async function joinNode(client: EtcdClient, name: string, ttl = 5): Promise<{ name: string; lease: string }> {
    const lease = await client.grantLease(ttl);
    await client.put(keys.node(name), JSON.stringify({ name }), lease.id);
    return { name, lease: lease.id };
  }

  it('has exactly one winner per VM among concurrent claimers, and the token is the key\'s create revision', async () => {
    const nodes = await Promise.all(clients.map((c, i) => joinNode(c, `race${i}`)));
    const vms = Array.from({ length: 50 }, (_, i) => `vm${i}`);
    const results = await Promise.all(
      vms.flatMap((vm) => clients.map((c, i) => claimRun(c, keys, vm, nodes[i]!).then((r) => ({ vm, node: nodes[i]!.name, r })))),
    );
    const { owners } = await readOwners(clients[0]!, keys);
    for (const vm of vms) {
      const wins = results.filter((x) => x.vm === vm && x.r.claimed);
      assert.equal(wins.length, 1, `${vm}: ${wins.length} winners`);
      const claim = (wins[0]!.r as { claim: RunClaim }).claim;
      assert.equal(owners.get(vm)?.node, wins[0]!.node);
      assert.equal(owners.get(vm)?.token, claim.token);
      assert.equal((await clients[0]!.get(keys.run(vm)))?.createRevision, claim.token);
      for (const loser of results.filter((x) => x.vm === vm && !x.r.claimed)) {
        assert.deepEqual(loser.r, { claimed: false, reason: `run/${vm} is held by node ${wins[0]!.node}`, owner: wins[0]!.node });
      }
    }
    for (const n of nodes) await clients[0]!.revokeLease(n.lease);
    assert.equal((await readOwners(clients[0]!, keys)).owners.size, 0, 'the claims die with their leases');
  });

  it('refuses a claim while the node key does not carry the claimer\'s lease', async () => {
    const a = await joinNode(clients[0]!, 'a');
    const stale = { name: 'a', lease: (await clients[0]!.grantLease(5)).id }; // not the lease of a's key
    const r = await claimRun(clients[0]!, keys, 'x', stale);
    assert.deepEqual(r, { claimed: false, reason: `node a does not hold lease ${stale.lease} (lost or rejoined)` });
    assert.equal(await clients[0]!.get(keys.run('x')), undefined);
    await clients[0]!.revokeLease(a.lease);
    assert.equal((await claimRun(clients[0]!, keys, 'x', a)).claimed, false, 'a dead lease claims nothing');
    await clients[0]!.revokeLease(stale.lease);
  });

  it('refuses late writes of a node whose lease died once another node claimed the VM', async () => {
    const a = await joinNode(clients[0]!, 'fa', 2);
    const b = await joinNode(clients[1]!, 'fb');
    const first = await claimRun(clients[0]!, keys, 'web', a);
    assert.ok(first.claimed);
    const claimA = first.claim;
    assert.equal(await fencedPut(clients[0]!, keys, claimA, 'own/status/web', 'running on fa'), true);
    assert.equal((await claimRun(clients[1]!, keys, 'web', b)).claimed, false, 'held by fa');

    // fa stops keeping its lease alive (a frozen or cut-off daemon): etcd expires it with its keys.
    await until('fa\'s lease to expire', async () => (await clients[1]!.get(keys.run('web'))) === undefined, { timeoutMs: 6000, intervalMs: 100 });
    const second = await claimRun(clients[1]!, keys, 'web', b);
    assert.ok(second.claimed);
    assert.ok(Number(second.claim.token) > Number(claimA.token), 'tokens only grow');
    assert.equal(await fencedPut(clients[1]!, keys, second.claim, 'own/status/web', 'running on fb'), true);

    // fa's writes arrive late: all refused, nothing of fb's is touched.
    assert.equal(await fencedPut(clients[0]!, keys, claimA, 'own/status/web', 'running on fa (late)'), false);
    assert.equal(await releaseRun(clients[0]!, keys, claimA), false);
    assert.equal((await claimRun(clients[0]!, keys, 'web', a)).claimed, false);
    assert.equal((await clients[0]!.get('own/status/web'))?.value, 'running on fb');
    assert.equal((await readOwners(clients[0]!, keys)).owners.get('web')?.node, 'fb');

    // The owner releases its own claim.
    assert.equal(await releaseRun(clients[1]!, keys, second.claim), true);
    assert.equal(await clients[1]!.get(keys.run('web')), undefined);
    await clients[1]!.revokeLease(b.lease);
  });
});

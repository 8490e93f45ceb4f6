// The agreed desired-state revision on a real etcd: compare-and-swap, one winner, stale views refused.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { clusterKeys } from '../../src/cluster/keys.ts';
import { proposeRevision, readAgreedRevision } from '../../src/cluster/revision.ts';
import { startEtcd, type EtcdCluster } from '../helpers/etcd.ts';

const keys = clusterKeys('rev/');

describe('agreed revision', () => {
  let etcd: EtcdCluster;
  const clients: EtcdClient[] = [];
  before(async () => {
    etcd = await startEtcd();
    for (let i = 0; i < 3; i++) clients.push(new EtcdClient(etcd.endpoints));
  });
  after(async () => {
    for (const c of clients) c.close();
    await etcd?.stop();
  });

  it('has one winner among nodes proposing from the same view; a stale view is refused', async () => {
    assert.equal(await readAgreedRevision(clients[0]!, keys), undefined);
    const first = await Promise.all(clients.map((c, i) => proposeRevision(c, keys, undefined, { revision: `r1-from-n${i}`, by: `n${i}` })));
    assert.equal(first.filter((r) => r.accepted).length, 1);
    const agreed = (await readAgreedRevision(clients[0]!, keys))!;
    const winner = first.findIndex((r) => r.accepted);
    assert.deepEqual({ revision: agreed.revision, by: agreed.by }, { revision: `r1-from-n${winner}`, by: `n${winner}` });
    for (const r of first) assert.equal(r.current?.revision, agreed.revision, 'losers learn what was agreed');

    const second = await Promise.all(clients.map((c, i) => proposeRevision(c, keys, agreed, { revision: `r2-from-n${i}`, by: `n${i}` })));
    assert.equal(second.filter((r) => r.accepted).length, 1);
    // Proposing from the view before the second round: refused, nothing changes.
    const stale = await proposeRevision(clients[0]!, keys, agreed, { revision: 'r0-rollback', by: 'n0' });
    assert.equal(stale.accepted, false);
    assert.match(stale.current!.revision, /^r2-from-n\d$/);
    assert.equal(await proposeRevision(clients[0]!, keys, undefined, { revision: 'again', by: 'n0' }).then((r) => r.accepted), false, 'only the first proposal may create it');
  });
});

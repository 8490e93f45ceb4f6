// A sync reuses the observation its pass just made (listing a big table costs as much as writing it),
// only while nothing was written since: counted in processes, against the real nft and iptables.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { iptBackend, nftBackend, type FirewallBackend } from '../../src/controllers/firewall/backend.ts';
import { processesSpawned } from '../../src/drivers/exec.ts';
import { compileFirewall } from '../../src/firewall/compile.ts';
import { createTestHost, type TestHost } from '../helpers/hostns.ts';
import { seedCompiled, seedInputs, stubContext } from '../firewall/fixtures.ts';

for (const name of ['nftables', 'iptables'] as const) {
  describe(`${name} backend: a sync reuses a fresh observation`, () => {
    let host: TestHost;
    let backend: FirewallBackend;
    /** A second instance (its own cache) to look at the host without touching the first one's. */
    let viewer: FirewallBackend;
    before(async () => {
      host = await createTestHost();
      const s = { prefix: host.prefix, hostNetns: host.hostNs };
      backend = name === 'nftables' ? nftBackend(s) : iptBackend(s);
      viewer = name === 'nftables' ? nftBackend(s) : iptBackend(s);
      await backend.sync(seedCompiled(host.prefix));
    });
    after(async () => {
      await host?.cleanup();
    });
    const changed = () => {
      const inputs = seedInputs(host.prefix);
      inputs[0]!.policy!.rules = [...inputs[0]!.policy!.rules!, { action: 'accept', proto: 'udp', dstPorts: String(1000 + Math.floor(Math.random() * 1000)) }];
      return compileFirewall(inputs, stubContext());
    };
    const spawnsOf = async (job: () => Promise<unknown>) => {
      const n = processesSpawned();
      await job();
      return processesSpawned() - n;
    };

    test('observe then sync: the sync lists nothing again; a second sync (something was written) does', async () => {
      await backend.observe();
      const c1 = changed();
      const reused = await spawnsOf(() => backend.sync(c1));
      // The write planned on the reused observation is right: dev's chains are what c1 compiles to.
      const have = await viewer.observe();
      const want = backend.desiredView(c1);
      for (const chain of backend.vmChainNames('dev')) assert.deepEqual(have.chains.get(chain), want.chains.get(chain), chain);
      const fresh = await spawnsOf(() => backend.sync(changed()));
      assert.equal(fresh - reused, 1, `one list process fewer when reused (reused ${reused}, fresh ${fresh})`);
      // And the write was right: what the host has now is what the last sync compiled.
      const again = await spawnsOf(() => backend.sync(seedCompiled(host.prefix)));
      assert.equal(again, fresh);
    });

    test('an observation taken before another sync wrote is not reused', async () => {
      await backend.observe();
      await backend.sync(changed());
      const n = await spawnsOf(() => backend.sync(changed()));
      await backend.observe();
      assert.equal(await spawnsOf(() => backend.sync(changed())), n - 1);
    });
  });
}

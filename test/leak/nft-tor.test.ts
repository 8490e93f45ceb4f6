// Leak test: a tor VM behind the nftables backend sends nothing to the internet, whatever it tries,
// also with qwamos' table deleted (the routing backstop) and with a foreign FORWARD accept.
// A positive control first proves the counters see the probes.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { compileFirewall, type VmFirewallInput } from '../../src/firewall/compile.ts';
import { buildNftTable, firewallTableName } from '../../src/firewall/nft.ts';
import { deleteNftTable, syncNftTable, type FirewallLayout } from '../../src/drivers/nftables.ts';
import { backstopComplete, ensureBackstop, observeBackstop, removeBackstop } from '../../src/drivers/policyroute.ts';
import { createLeakLab, type LeakCounters, type LeakLab } from '../helpers/leak.ts';

const TOR = { transPort: 9040, dnsPort: 5353 };
const ZERO = { tcp: 0, udp: 0, icmp: 0, other: 0, v6: 0 };
const leaked = (c: LeakCounters) => ({ tcp: c.tcp, udp: c.udp, icmp: c.icmp, other: c.other, v6: c.v6 });

describe('leak test: tor route on the nftables backend', () => {
  let lab: LeakLab;
  let layout: FirewallLayout;
  const input = (mode: 'direct' | 'tor'): VmFirewallInput => ({
    vm: lab.vm,
    hostIf: lab.hostIf,
    vmAddress: lab.vmAddress,
    gateway: lab.gateway,
    mode,
    dnsTargets: [lab.gateway],
    tor: TOR,
  });
  const table = (mode: 'direct' | 'tor') => buildNftTable(layout.table, compileFirewall([input(mode)], { now: new Date(), resolved: new Map() }), { guardPattern: `${lab.host.prefix}h-*` });
  const backstop = () => ({ hostIf: lab.hostIf, table: 1000 });

  before(async () => {
    lab = await createLeakLab();
    layout = { hostNetns: lab.host.hostNs, table: firewallTableName(lab.host.prefix) };
  });
  after(async () => {
    await lab?.cleanup();
  });

  async function probe(): Promise<LeakCounters> {
    await lab.resetCounters();
    await lab.probeAll();
    return lab.counters();
  }

  test('positive control: from a direct policy every IPv4 probe arrives; with no firewall IPv6 arrives too', async () => {
    await syncNftTable(layout, table('direct'));
    const c = await probe();
    assert.ok(c.tcp > 0 && c.udp > 0 && c.icmp > 0 && c.other > 0, `direct probes must arrive: ${JSON.stringify(c)}`);
    assert.equal(c.v6, 0, 'a direct VM has no IPv6 (Routes are IPv4 only)');
    await deleteNftTable(layout);
    const open = await probe();
    assert.ok(open.v6 > 0 && open.tcp > 0, `without any firewall IPv6 arrives: ${JSON.stringify(open)}`);
  });

  test('tor: zero packets arrive; TCP is redirected to the TransPort stand-in, DNS to DNSPort', async () => {
    await ensureBackstop(layout, backstop());
    await syncNftTable(layout, table('tor'));
    const standIn = await lab.standIn(TOR.transPort, TOR.dnsPort);
    try {
      assert.deepEqual(leaked(await probe()), ZERO);
      const tcp = standIn.events.filter((e) => e.startsWith('tcp '));
      assert.ok(tcp.includes(`tcp ${lab.vmAddress} 203.0.113.1:80`), `redirected TCP keeps its original destination: ${tcp.join('; ')}`);
      assert.ok(tcp.includes(`tcp ${lab.vmAddress} 203.0.113.53:53`), 'DNS over TCP goes to the TransPort');
      const udp = standIn.events.filter((e) => e.startsWith('udp '));
      assert.equal(udp.length, 3, `each of the three resolvers' UDP DNS reached DNSPort: ${udp.join('; ')}`);
    } finally {
      await standIn.stop();
    }
  });

  test('tor with qwamos table deleted: the routing backstop keeps it at zero', async () => {
    await deleteNftTable(layout);
    assert.ok(backstopComplete(await observeBackstop(layout, backstop())));
    assert.deepEqual(leaked(await probe()), ZERO);
  });

  test('tor with a foreign iptables FORWARD accept (and ip6tables): still zero, with and without the table', async () => {
    await lab.inHost(['iptables', '-I', 'FORWARD', '-j', 'ACCEPT']);
    await lab.inHost(['ip6tables', '-I', 'FORWARD', '-j', 'ACCEPT']);
    await syncNftTable(layout, table('tor'));
    assert.deepEqual(leaked(await probe()), ZERO);
    await deleteNftTable(layout);
    assert.deepEqual(leaked(await probe()), ZERO);
  });

  test('the backstop alone is what closed it: removed, the same probes arrive (control for the last phases)', async () => {
    await removeBackstop(layout, backstop());
    assert.ok(!backstopComplete(await observeBackstop(layout, backstop())));
    const c = await probe();
    assert.ok(c.tcp > 0 && c.v6 > 0, `without table and backstop the probes arrive: ${JSON.stringify(c)}`);
  });
});

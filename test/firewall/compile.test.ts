// The policy compiler (pure): Qubes' rule semantics per mode, fail closed per VM, expiry.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { compileFirewall, compileVmFirewall, earliestExpiry, namesToResolve, toCidr, type VmFirewallInput } from '../../src/firewall/compile.ts';
import { resolveNames } from '../../src/firewall/resolve.ts';
import { assertGolden } from './golden.ts';
import { NOW, seedCompiled, seedInputs, stubContext } from './fixtures.ts';

const dev = (): VmFirewallInput => seedInputs()[0]!;

describe('firewall compiler', () => {
  test('golden: the seeds routing table compiles to this IR', () => {
    assertGolden('seeds.ir.json', JSON.stringify(seedCompiled(), null, 2) + '\n');
  });

  test('addresses and networks are canonical CIDRs', () => {
    assert.equal(toCidr('10.1.2.3'), '10.1.2.3/32');
    assert.equal(toCidr('10.1.2.3/8'), '10.0.0.0/8');
    assert.equal(toCidr('0.0.0.0/0'), '0.0.0.0/0');
    assert.equal(toCidr('300.1.1.1'), undefined);
    assert.equal(toCidr('example.org'), undefined);
    assert.deepEqual(namesToResolve(dev().policy!.rules!), ['example.org']);
  });

  test('direct: first match wins in order, dns expands to the VM dns targets on udp and tcp 53, default last', () => {
    const fw = compileVmFirewall(dev(), stubContext());
    assert.equal(fw.failClosed, undefined);
    assert.deepEqual(
      fw.outbound.rules.map((r) => r.comment),
      ['rule 1 dns', 'rule 1 dns', 'rule 2', 'rule 3', 'rule 4', 'rule 5', 'rule 7'],
    );
    assert.deepEqual(fw.outbound.rules[0], { match: { dst: ['9.9.9.9/32', '10.8.0.1/32'], proto: 'udp', ports: { from: 53, to: 53 } }, action: 'accept', comment: 'rule 1 dns' });
    assert.deepEqual(fw.outbound.rules[2]!.match, { dst: ['93.184.215.14/32', '93.184.215.15/32'], proto: 'tcp', ports: { from: 443, to: 443 } });
    assert.deepEqual(fw.outbound.rules[3]!.match.ports, { from: 8000, to: 8100 });
    assert.equal(fw.outbound.defaultAction, 'reject');
    assert.deepEqual(fw.resolved, [{ rule: 2, name: 'example.org', addresses: ['93.184.215.14', '93.184.215.15'] }]);
    // The gateway is a DNS target: DNS to the host itself is allowed on input.
    assert.equal(fw.toGateway.rules.length, 2);
  });

  test('direct without a policy accepts (Qubes default); with one the default is drop', () => {
    const { policy: _p, ...open } = dev();
    assert.equal(compileVmFirewall(open, stubContext()).outbound.defaultAction, 'accept');
    assert.equal(compileVmFirewall({ ...dev(), policy: { rules: [] } }, stubContext()).outbound.defaultAction, 'drop');
  });

  test('expired rules are dropped and the earliest future expiry is reported', () => {
    const fw = compileVmFirewall(dev(), stubContext());
    assert.ok(!fw.outbound.rules.some((r) => r.match.dst?.includes('203.0.113.9/32')));
    assert.ok(fw.outbound.rules.some((r) => r.match.dst?.includes('203.0.113.10/32')));
    assert.equal(fw.nextExpiry, '2026-07-01T00:00:00.000Z');
    assert.equal(earliestExpiry(seedCompiled()), '2026-07-01T00:00:00.000Z');
    const later = compileVmFirewall(dev(), { ...stubContext(), now: new Date('2026-07-01T00:00:00Z') });
    assert.ok(!later.outbound.rules.some((r) => r.match.dst?.includes('203.0.113.10/32')));
    assert.equal(later.nextExpiry, undefined);
  });

  test('an unresolved name makes only that VM reject-all, naming the rule', () => {
    const ctx = { now: NOW, resolved: new Map([['example.org', { error: 'ENOTFOUND' }]]) };
    const all = compileFirewall(seedInputs(), ctx);
    const fw = all.find((f) => f.vm === 'dev')!;
    assert.equal(fw.failClosed, 'FirewallPolicy/dev rule 2: name example.org does not resolve: ENOTFOUND');
    assert.equal(fw.outbound.defaultAction, 'reject');
    assert.deepEqual(fw.outbound.rules, []);
    assert.equal(fw.inbound.allowEstablished, false);
    assert.deepEqual(fw.toGateway.rules, []);
    // The others are unchanged.
    assert.deepEqual(all.filter((f) => f.vm !== 'dev'), seedCompiled().filter((f) => f.vm !== 'dev'));
    const missing = compileVmFirewall(dev(), { now: NOW, resolved: new Map() });
    assert.match(missing.failClosed!, /rule 2: name example.org was not resolved/);
  });

  test('invalid rules fail closed with the reason', () => {
    const cases: [object, RegExp][] = [
      [{ action: 'accept', dstPorts: '80' }, /rule 1: dstPorts needs proto tcp or udp/],
      [{ action: 'accept', proto: 'tcp', dstPorts: '90-80' }, /dstPorts "90-80" is not N or N-M/],
      [{ action: 'accept', proto: 'tcp', dstPorts: '70000' }, /not N or N-M within 1-65535/],
      [{ action: 'accept', proto: 'udp', icmpType: 3 }, /icmpType needs proto icmp/],
      [{ action: 'accept', proto: 'icmp', icmpType: 256 }, /icmpType 256 is not 0-255/],
      [{ action: 'accept', specialTarget: 'dns', dstHost: '1.1.1.1' }, /exclude each other/],
      [{ action: 'accept', expire: 'soon' }, /expire "soon" is not a time/],
      [{ action: 'accept', dstHost: 'Bad_Name!' }, /neither an address/],
    ];
    for (const [rule, re] of cases) {
      const fw = compileVmFirewall({ ...dev(), policy: { rules: [rule as never] } }, stubContext());
      assert.match(fw.failClosed ?? '', re, JSON.stringify(rule));
    }
  });

  test('ports compare numerically (range bounds are numbers)', () => {
    const fw = compileVmFirewall({ ...dev(), policy: { rules: [{ action: 'accept', proto: 'tcp', dstPorts: '0080-0443' }] } }, stubContext());
    assert.deepEqual(fw.outbound.rules[0]!.match.ports, { from: 80, to: 443 });
  });

  test('tor: redirects udp 53 to DNSPort and TCP SYNs to TransPort; only those two gateway ports; forward closed', () => {
    const fw = seedCompiled().find((f) => f.mode === 'tor')!;
    assert.deepEqual(fw.redirects, [
      { proto: 'udp', dport: 53, toPort: 5353, comment: 'tor DNSPort' },
      { proto: 'tcp', synOnly: true, toPort: 9040, comment: 'tor TransPort' },
    ]);
    assert.deepEqual(
      fw.toGateway.rules.map((r) => r.match),
      [
        { dst: ['10.8.1.1/32'], proto: 'tcp', ports: { from: 9040, to: 9040 } },
        { dst: ['10.8.1.1/32'], proto: 'udp', ports: { from: 5353, to: 5353 } },
      ],
    );
    assert.deepEqual(fw.outbound, { allowEstablished: false, rules: [], defaultAction: 'drop' });
    assert.deepEqual(fw.inbound, { allowEstablished: false });
  });

  test('tor without ports, or i2p without proxy ports, fails closed', () => {
    const [, tor, i2p] = seedInputs();
    const { tor: _t, ...noTor } = tor!;
    assert.match(compileVmFirewall(noTor, stubContext()).failClosed!, /TransPort and DNSPort/);
    assert.match(compileVmFirewall({ ...i2p!, i2p: { httpProxyPort: 0, socksProxyPort: 4447 } }, stubContext()).failClosed!, /proxy ports/);
  });

  test('rules in tor/i2p/isolated modes are noted as without effect, never opening anything', () => {
    const [, tor] = seedInputs();
    const fw = compileVmFirewall({ ...tor!, policy: { defaultAction: 'accept', rules: [{ action: 'accept' }] } }, stubContext());
    assert.equal(fw.outbound.defaultAction, 'drop');
    assert.deepEqual(fw.outbound.rules, []);
    assert.match(fw.notes[0]!, /no effect in mode tor/);
  });

  test('identity fields that could break out of a ruleset are refused', () => {
    assert.throws(() => compileVmFirewall({ ...dev(), hostIf: 'x"; flush ruleset' }, stubContext()), /invalid host interface/);
    assert.throws(() => compileVmFirewall({ ...dev(), vm: 'A B' }, stubContext()), /invalid VM name/);
    assert.throws(() => compileFirewall([dev(), dev()], stubContext()), /given twice/);
  });

  test('resolveNames records failures per name instead of throwing', async () => {
    const resolved = await resolveNames([{ action: 'accept', dstHost: 'good.test' }, { action: 'accept', dstHost: 'bad.test' }, { action: 'accept', dstHost: '1.2.3.4' }], {
      async resolve(name) {
        if (name === 'bad.test') throw Object.assign(new Error('nope'), { code: 'ENOTFOUND' });
        return ['192.0.2.1'];
      },
    });
    assert.deepEqual([...resolved.entries()].sort(), [
      ['bad.test', { error: 'ENOTFOUND' }],
      ['good.test', { addresses: ['192.0.2.1'] }],
    ]);
  });
});

// The flow evaluator (first match wins, numeric ports, CIDR) and the conntrack output parser: pure.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compileVmFirewall } from '../../src/firewall/compile.ts';
import { inCidr, outboundAccepts } from '../../src/firewall/evaluate.ts';
import { parseConntrack, tupleArgs } from '../../src/drivers/conntrack.ts';

const ctx = { now: new Date('2026-01-01T00:00:00Z'), resolved: new Map() };
const direct = (rules: object[], defaultAction?: 'accept' | 'drop') =>
  compileVmFirewall({ vm: 'dev', hostIf: 'qwh-dev', vmAddress: '10.8.1.2/24', gateway: '10.8.1.1', mode: 'direct', dnsTargets: [], policy: { rules: rules as never, ...(defaultAction ? { defaultAction } : {}) } }, ctx);
const tcp = (dst: string, dport: number) => ({ src: '10.8.1.2', dst, proto: 'tcp', dport });

test('ports are compared as numbers: 99 is inside 80-443, 1000 is not', () => {
  const fw = direct([{ action: 'accept', proto: 'tcp', dstPorts: '80-443' }]);
  assert.equal(outboundAccepts(fw, tcp('203.0.113.1', 99)), true);
  assert.equal(outboundAccepts(fw, tcp('203.0.113.1', 100)), true);
  assert.equal(outboundAccepts(fw, tcp('203.0.113.1', 1000)), false);
  assert.equal(outboundAccepts(fw, tcp('203.0.113.1', 79)), false);
  assert.equal(outboundAccepts(fw, { src: '10.8.1.2', dst: '203.0.113.1', proto: 'udp', dport: 99 }), false, 'proto must match');
});

test('first match wins; CIDR; default action; anti-spoof; fail closed', () => {
  const fw = direct([
    { action: 'drop', dstHost: '192.0.2.0/25' },
    { action: 'accept', dstHost: '192.0.2.0/24' },
  ], 'drop');
  assert.equal(outboundAccepts(fw, tcp('192.0.2.5', 1)), false);
  assert.equal(outboundAccepts(fw, tcp('192.0.2.200', 1)), true);
  assert.equal(outboundAccepts(fw, tcp('198.51.100.1', 1)), false, 'default drop');
  assert.equal(outboundAccepts({ ...fw, outbound: { ...fw.outbound, defaultAction: 'accept' } }, tcp('198.51.100.1', 1)), true);
  assert.equal(outboundAccepts(fw, { ...tcp('192.0.2.200', 1), src: '10.8.1.3' }), false, 'another source');
  assert.equal(outboundAccepts({ ...fw, failClosed: 'x' }, tcp('192.0.2.200', 1)), false);
  const icmp = direct([{ action: 'accept', proto: 'icmp', icmpType: 8 }]);
  assert.equal(outboundAccepts(icmp, { src: '10.8.1.2', dst: '1.1.1.1', proto: 'icmp', icmpType: 8 }), true);
  assert.equal(outboundAccepts(icmp, { src: '10.8.1.2', dst: '1.1.1.1', proto: 'icmp', icmpType: 13 }), false);
  assert.ok(inCidr('10.0.0.1', '0.0.0.0/0'));
  assert.ok(!inCidr('10.0.0.1', '10.0.0.0/32'));
});

test('conntrack -o extended: the original tuple; the reply tuple is ignored; exact delete arguments', () => {
  const text = [
    'ipv4     2 tcp      6 431999 ESTABLISHED src=10.8.1.2 dst=203.0.113.1 sport=33162 dport=1000 src=203.0.113.1 dst=203.0.113.2 sport=1000 dport=33162 [ASSURED] mark=0 use=1',
    'ipv4     2 udp      17 29 src=10.8.1.2 dst=10.8.1.1 sport=5000 dport=53 [UNREPLIED] src=10.8.1.1 dst=10.8.1.2 sport=53 dport=5000 mark=0 use=1',
    'ipv4     2 icmp     1 29 src=10.8.1.2 dst=203.0.113.1 type=8 code=0 id=7 src=203.0.113.1 dst=10.8.1.2 type=0 code=0 id=7 mark=0 use=1',
    'ipv4     2 unknown  253 599 src=10.8.1.2 dst=203.0.113.1 [UNREPLIED] src=203.0.113.1 dst=10.8.1.2 mark=0 use=1',
    'ipv6     10 tcp      6 10 SYN_SENT src=fd00::1 dst=fd00::2 sport=1 dport=2 [UNREPLIED] src=fd00::2 dst=fd00::1 sport=2 dport=1 mark=0 use=1',
  ].join('\n');
  const flows = parseConntrack(text);
  assert.equal(flows.length, 4);
  assert.deepEqual(flows[0], { proto: 'tcp', protoNumber: 6, src: '10.8.1.2', dst: '203.0.113.1', sport: 33162, dport: 1000, state: 'ESTABLISHED' });
  assert.equal(flows[1]!.dport, 53);
  assert.deepEqual([flows[2]!.icmpType, flows[2]!.icmpCode, flows[2]!.icmpId], [8, 0, 7]);
  assert.equal(flows[3]!.protoNumber, 253);
  assert.deepEqual(tupleArgs(flows[0]!), ['-f', 'ipv4', '-s', '10.8.1.2', '-d', '203.0.113.1', '-p', 'tcp', '--sport', '33162', '--dport', '1000']);
  assert.deepEqual(tupleArgs(flows[3]!), ['-f', 'ipv4', '-s', '10.8.1.2', '-d', '203.0.113.1', '-p', '253']);
});

// Shared inputs for the firewall tests: the seeds' routing table (dev direct with a policy, browser via
// Tor, messaging via I2P, malware isolated), compiled at a fixed time with a stub resolver.
import { compileFirewall, type CompileContext, type VmFirewallInput } from '../../src/firewall/compile.ts';
import type { VmFirewall } from '../../src/firewall/ir.ts';

export const NOW = new Date('2026-06-01T12:00:00Z');

export const TOR_PORTS = { transPort: 9040, dnsPort: 5353 };
export const I2P_PORTS = { httpProxyPort: 4444, socksProxyPort: 4447 };

export function seedInputs(prefix = 'qw'): VmFirewallInput[] {
  return [
    {
      vm: 'dev',
      hostIf: `${prefix}h-dev`,
      vmAddress: '10.8.0.2/24',
      gateway: '10.8.0.1',
      mode: 'direct',
      dnsTargets: ['10.8.0.1', '9.9.9.9'],
      policySource: 'FirewallPolicy/dev',
      policy: {
        defaultAction: 'reject',
        rules: [
          { action: 'accept', specialTarget: 'dns' },
          { action: 'accept', dstHost: 'example.org', proto: 'tcp', dstPorts: '443' },
          { action: 'accept', dstHost: '192.0.2.0/24', proto: 'tcp', dstPorts: '8000-8100' },
          { action: 'drop', proto: 'icmp', icmpType: 8, dstHost: '198.51.100.7' },
          { action: 'accept', proto: 'icmp' },
          { action: 'accept', dstHost: '203.0.113.9', expire: '2026-01-01T00:00:00Z', comment: 'expired' },
          { action: 'accept', dstHost: '203.0.113.10', expire: '2026-07-01T00:00:00Z', comment: 'temporary' },
        ],
      },
    },
    { vm: 'browser', hostIf: `${prefix}h-browser`, vmAddress: '10.8.1.2/24', gateway: '10.8.1.1', mode: 'tor', dnsTargets: ['10.8.1.1'], tor: TOR_PORTS },
    { vm: 'messaging', hostIf: `${prefix}h-messaging`, vmAddress: '10.8.2.2/24', gateway: '10.8.2.1', mode: 'i2p', dnsTargets: [], i2p: I2P_PORTS },
    { vm: 'malware', hostIf: `${prefix}h-malware`, vmAddress: '10.8.3.2/24', gateway: '10.8.3.1', mode: 'isolated', dnsTargets: [] },
  ];
}

export function stubContext(): CompileContext {
  return { now: NOW, resolved: new Map([['example.org', { addresses: ['93.184.215.14', '93.184.215.15'] }]]) };
}

export function seedCompiled(prefix = 'qw'): VmFirewall[] {
  return compileFirewall(seedInputs(prefix), stubContext());
}

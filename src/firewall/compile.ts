// The policy compiler: a VM's Route (mode, addresses, gateway ports) and its FirewallPolicy rules in
// Qubes' semantics -> one VmFirewall (./ir.ts). Pure: names are resolved beforehand (./resolve.ts) and
// handed in, the clock is a parameter. Anything that cannot be compiled makes that VM fail closed with a
// reason naming the rule; other VMs are not affected.
import type { IrMatch, IrRule, ResolvedName, RouteMode, Verdict, VmFirewall } from './ir.ts';

/** The same fields as the FirewallPolicy schema's FirewallRule (structurally compatible). */
export interface PolicyRule {
  action: Verdict;
  dstHost?: string;
  proto?: 'tcp' | 'udp' | 'icmp';
  dstPorts?: string;
  icmpType?: number;
  specialTarget?: 'dns';
  expire?: string;
  comment?: string;
}

export interface PolicyInput {
  defaultAction?: Verdict;
  rules?: readonly PolicyRule[];
}

export interface VmFirewallInput {
  vm: string;
  /** The VM's host-side interface (the veth end in the host namespace). */
  hostIf: string;
  /** The VM's IPv4 address, with or without prefix length. */
  vmAddress: string;
  gateway: string;
  mode: RouteMode;
  /** The resolvers the VM is configured to use (IPv4), for `specialTarget: dns`. */
  dnsTargets: readonly string[];
  /** The VM's FirewallPolicy (merged), if any; without one a direct VM may go anywhere (Qubes' default). */
  policy?: PolicyInput;
  /** Names the policy in reasons, e.g. `FirewallPolicy/web`. */
  policySource?: string;
  tor?: { transPort: number; dnsPort: number };
  /** A tor VM gets no DNS at all (its Route's DNS cannot be served): no DNSPort accept, no redirect. */
  noDns?: boolean;
  i2p?: { httpProxyPort: number; socksProxyPort: number };
}

/** What a name resolved to at apply time, or why it did not. */
export type NameResolution = { addresses: readonly string[] } | { error: string };

export interface CompileContext {
  now: Date;
  /** Every name used in a rule's dstHost (see namesToResolve). */
  resolved: ReadonlyMap<string, NameResolution>;
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const CIDR_RE = /^([0-9.]+)\/(3[0-2]|[12]?\d)$/;
const NAME_RE = /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const IFNAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;
const VM_RE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export function isIpv4(value: string): boolean {
  return IPV4_RE.test(value);
}

function ipToInt(ip: string): number {
  return ip.split('.').reduce((acc, part) => acc * 256 + Number(part), 0);
}

function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

/** `a.b.c.d` or `a.b.c.d/len` -> canonical `network/len` (host bits cleared), or undefined. */
export function toCidr(value: string): string | undefined {
  if (isIpv4(value)) return `${value}/32`;
  const m = CIDR_RE.exec(value);
  if (!m || !isIpv4(m[1]!)) return undefined;
  const len = Number(m[2]);
  const size = 2 ** (32 - len);
  const network = Math.floor(ipToInt(m[1]!) / size) * size;
  return `${intToIp(network)}/${len}`;
}

function addressOnly(value: string): string {
  return value.split('/')[0]!;
}

/** dstHost values that are names (neither an address nor a CIDR): what a resolver must look up. */
export function namesToResolve(rules: readonly PolicyRule[]): string[] {
  const names = new Set<string>();
  for (const r of rules) if (r.dstHost !== undefined && toCidr(r.dstHost) === undefined && NAME_RE.test(r.dstHost)) names.add(r.dstHost);
  return [...names].sort();
}

function parsePorts(text: string): { from: number; to: number } | undefined {
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(text);
  if (!m) return undefined;
  const from = Number(m[1]);
  const to = m[2] === undefined ? from : Number(m[2]);
  if (from < 1 || to > 65535 || from > to) return undefined;
  return { from, to };
}

function sortedUnique(values: Iterable<string>): string[] {
  return [...new Set(values)].sort((a, b) => {
    const [na, la] = a.split('/');
    const [nb, lb] = b.split('/');
    return ipToInt(na!) - ipToInt(nb!) || Number(la) - Number(lb);
  });
}

class RuleError extends Error {}

/** One Qubes rule -> zero or more IR rules (dns expands to udp+tcp; an expired rule to none). */
function compileRule(rule: PolicyRule, index: number, input: VmFirewallInput, ctx: CompileContext, resolved: ResolvedName[]): IrRule[] {
  const label = `rule ${index + 1}`;
  const fail = (why: string): never => {
    throw new RuleError(`${input.policySource ? `${input.policySource} ` : ''}${label}${rule.comment ? ` (${rule.comment})` : ''}: ${why}`);
  };
  if (rule.specialTarget !== undefined && rule.dstHost !== undefined) fail('specialTarget and dstHost exclude each other');
  if (rule.dstPorts !== undefined && rule.proto !== 'tcp' && rule.proto !== 'udp') fail('dstPorts needs proto tcp or udp');
  if (rule.icmpType !== undefined && rule.proto !== 'icmp') fail('icmpType needs proto icmp');
  if (rule.icmpType !== undefined && (!Number.isInteger(rule.icmpType) || rule.icmpType < 0 || rule.icmpType > 255)) fail(`icmpType ${rule.icmpType} is not 0-255`);
  const ports = rule.dstPorts === undefined ? undefined : parsePorts(rule.dstPorts);
  if (rule.dstPorts !== undefined && ports === undefined) fail(`dstPorts ${JSON.stringify(rule.dstPorts)} is not N or N-M within 1-65535`);

  const base: IrMatch = {};
  if (rule.dstHost !== undefined) {
    const cidr = toCidr(rule.dstHost);
    if (cidr) base.dst = [cidr];
    else if (!NAME_RE.test(rule.dstHost)) fail(`dstHost ${JSON.stringify(rule.dstHost)} is neither an address, a network nor a name`);
    else {
      const r = ctx.resolved.get(rule.dstHost);
      if (r === undefined) fail(`name ${rule.dstHost} was not resolved`);
      else if ('error' in r) fail(`name ${rule.dstHost} does not resolve: ${r.error}`);
      else {
        const addrs = r.addresses.filter(isIpv4);
        if (addrs.length === 0) fail(`name ${rule.dstHost} has no IPv4 address`);
        resolved.push({ rule: index + 1, name: rule.dstHost, addresses: sortedUnique(addrs) });
        base.dst = sortedUnique(addrs.map((a) => `${a}/32`));
      }
    }
  }
  if (rule.proto) base.proto = rule.proto;
  if (ports) base.ports = ports;
  if (rule.icmpType !== undefined) base.icmpType = rule.icmpType;

  if (rule.specialTarget === 'dns') {
    if (rule.proto === 'icmp') fail('specialTarget dns is tcp/udp port 53');
    if (ports && (ports.from > 53 || ports.to < 53)) fail('specialTarget dns is port 53; dstPorts excludes it');
    const targets = sortedUnique(input.dnsTargets.filter(isIpv4).map((a) => `${a}/32`));
    if (targets.length === 0) return []; // no DNS configured: the rule matches nothing
    const protos: ('udp' | 'tcp')[] = rule.proto ? [rule.proto as 'udp' | 'tcp'] : ['udp', 'tcp'];
    return protos.map((proto) => ({ match: { dst: targets, proto, ports: { from: 53, to: 53 } }, action: rule.action, comment: `${label} dns` }));
  }
  return [{ match: base, action: rule.action, comment: label }];
}

function closedShape(input: VmFirewallInput, vmAddress: string, reason: string, resolved: ResolvedName[]): VmFirewall {
  return {
    vm: input.vm,
    hostIf: input.hostIf,
    vmAddress,
    gateway: addressOnly(input.gateway),
    mode: input.mode,
    failClosed: reason,
    outbound: { allowEstablished: false, rules: [], defaultAction: 'reject' },
    inbound: { allowEstablished: false },
    toGateway: { rules: [] },
    redirects: [],
    resolved,
    notes: [],
  };
}

function validPort(p: number | undefined): p is number {
  return p !== undefined && Number.isInteger(p) && p >= 1 && p <= 65535;
}

/** Compile one VM. Never throws for bad policy input: the VM fails closed instead. */
export function compileVmFirewall(input: VmFirewallInput, ctx: CompileContext): VmFirewall {
  // Identity fields go into chain names and matches verbatim: refuse what could break out of them.
  if (!VM_RE.test(input.vm)) throw new Error(`invalid VM name ${JSON.stringify(input.vm)}`);
  if (!IFNAME_RE.test(input.hostIf)) throw new Error(`${input.vm}: invalid host interface ${JSON.stringify(input.hostIf)}`);
  const vmAddress = addressOnly(input.vmAddress);
  const gateway = addressOnly(input.gateway);
  if (!isIpv4(vmAddress)) throw new Error(`${input.vm}: vmAddress ${JSON.stringify(input.vmAddress)} is not IPv4`);
  if (!isIpv4(gateway)) throw new Error(`${input.vm}: gateway ${JSON.stringify(input.gateway)} is not IPv4`);

  const out: VmFirewall = {
    vm: input.vm,
    hostIf: input.hostIf,
    vmAddress,
    gateway,
    mode: input.mode,
    outbound: { allowEstablished: false, rules: [], defaultAction: 'drop' },
    inbound: { allowEstablished: false },
    toGateway: { rules: [] },
    redirects: [],
    resolved: [],
    notes: [],
  };
  const rules = input.policy?.rules ?? [];
  const gw = [`${gateway}/32`];

  // Expiry applies in every mode, so the next pass is scheduled even where rules have no effect.
  const now = ctx.now.getTime();
  const live: { rule: PolicyRule; index: number }[] = [];
  let nextExpiry: number | undefined;
  for (const [index, rule] of rules.entries()) {
    if (rule.expire !== undefined) {
      const t = Date.parse(rule.expire);
      if (Number.isNaN(t)) return closedShape(input, vmAddress, `${input.policySource ? `${input.policySource} ` : ''}rule ${index + 1}: expire ${JSON.stringify(rule.expire)} is not a time`, []);
      if (t <= now) continue;
      if (nextExpiry === undefined || t < nextExpiry) nextExpiry = t;
    }
    live.push({ rule, index });
  }
  if (nextExpiry !== undefined) out.nextExpiry = new Date(nextExpiry).toISOString();

  switch (input.mode) {
    case 'direct': {
      try {
        for (const { rule, index } of live) out.outbound.rules.push(...compileRule(rule, index, input, ctx, out.resolved));
      } catch (err) {
        if (err instanceof RuleError) return { ...closedShape(input, vmAddress, err.message, out.resolved), ...(out.nextExpiry ? { nextExpiry: out.nextExpiry } : {}) };
        throw err;
      }
      out.outbound.allowEstablished = true;
      out.inbound.allowEstablished = true;
      // The host may reach a direct VM (ping, ssh): the VM's replies come in by input.
      out.toGateway.allowEstablished = true;
      out.outbound.defaultAction = input.policy ? (input.policy.defaultAction ?? 'drop') : 'accept';
      if (input.dnsTargets.includes(gateway)) {
        out.toGateway.rules.push(
          { match: { dst: gw, proto: 'udp', ports: { from: 53, to: 53 } }, action: 'accept', comment: 'dns' },
          { match: { dst: gw, proto: 'tcp', ports: { from: 53, to: 53 } }, action: 'accept', comment: 'dns' },
        );
      }
      break;
    }
    case 'tor': {
      const t = input.tor;
      if (!t || !validPort(t.transPort) || !validPort(t.dnsPort)) return closedShape(input, vmAddress, `${input.vm}: tor route without valid TransPort and DNSPort`, []);
      out.toGateway.rules.push({ match: { dst: gw, proto: 'tcp', ports: { from: t.transPort, to: t.transPort } }, action: 'accept', comment: 'tor TransPort' });
      if (!input.noDns) {
        out.toGateway.rules.push({ match: { dst: gw, proto: 'udp', ports: { from: t.dnsPort, to: t.dnsPort } }, action: 'accept', comment: 'tor DNSPort' });
        out.redirects.push({ proto: 'udp', dport: 53, toPort: t.dnsPort, comment: 'tor DNSPort' });
      }
      out.redirects.push({ proto: 'tcp', synOnly: true, toPort: t.transPort, comment: 'tor TransPort' });
      break;
    }
    case 'i2p': {
      const p = input.i2p;
      if (!p || !validPort(p.httpProxyPort) || !validPort(p.socksProxyPort)) return closedShape(input, vmAddress, `${input.vm}: i2p route without valid proxy ports`, []);
      out.toGateway.rules.push(
        { match: { dst: gw, proto: 'tcp', ports: { from: p.httpProxyPort, to: p.httpProxyPort } }, action: 'accept', comment: 'i2p http proxy' },
        { match: { dst: gw, proto: 'tcp', ports: { from: p.socksProxyPort, to: p.socksProxyPort } }, action: 'accept', comment: 'i2p socks proxy' },
      );
      // The proxies' replies to the VM leave by output, not forward: nothing more is needed.
      break;
    }
    case 'isolated':
      break;
  }
  if (input.mode !== 'direct' && live.length > 0) out.notes.push(`${live.length} firewall rule(s) have no effect in mode ${input.mode}: only the gateway's own ports are reachable`);
  return out;
}

/** Compile many VMs; duplicate VM names or host interfaces are a programming error. */
export function compileFirewall(inputs: readonly VmFirewallInput[], ctx: CompileContext): VmFirewall[] {
  const seenIf = new Set<string>();
  const seenVm = new Set<string>();
  const result = inputs.map((i) => {
    if (seenVm.has(i.vm)) throw new Error(`VM ${i.vm} given twice`);
    if (seenIf.has(i.hostIf)) throw new Error(`host interface ${i.hostIf} given twice`);
    seenVm.add(i.vm);
    seenIf.add(i.hostIf);
    return compileVmFirewall(i, ctx);
  });
  return result.sort((a, b) => (a.vm < b.vm ? -1 : a.vm > b.vm ? 1 : 0));
}

/** The earliest nextExpiry over all VMs (when the next pass must run), if any. */
export function earliestExpiry(compiled: readonly VmFirewall[]): string | undefined {
  return compiled.map((c) => c.nextExpiry).filter((e): e is string => e !== undefined).sort()[0];
}

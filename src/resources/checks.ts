// Checks of one resource that a JSON Schema cannot express well. Each returns issues by field pointer.
import { isNetworkOrBroadcast, parseCidr, sameSubnet } from './net.ts';
import { imagePathEscape } from './paths.ts';
import { maxVmNameLength, tooLongDerivedName } from '../names.ts';
import { PASSTHROUGH_MIN_LEVEL } from './gpu.ts';
import { checkGitSource } from '../git/spec.ts';
import type { AnyResource, ClusterNode, FirewallPolicy, GpuTrustLevel, Route, VirtualMachine } from './types.ts';

export interface Issue {
  pointer: string;
  message: string;
  severity?: 'error' | 'warning';
}

export interface CheckContext {
  imageRoot: string;
  prefix: string;
}

export function checkResource(r: AnyResource, ctx: CheckContext): Issue[] {
  switch (r.kind) {
    case 'VirtualMachine':
      return checkVirtualMachine(r, ctx);
    case 'Route':
      return checkRoute(r, ctx);
    case 'FirewallPolicy':
      return checkFirewallPolicy(r);
    case 'GpuTrustLevel':
      return checkGpuTrustLevel(r);
    case 'ClusterNode':
      return checkClusterNode(r);
    case 'GitSource':
      return checkGitSource(r);
  }
}

function vmNameIssue(vm: string, pointer: string, ctx: CheckContext): Issue[] {
  const tooLong = tooLongDerivedName(ctx.prefix, vm);
  if (!tooLong) return [];
  return [{ pointer, message: `VM name "${vm}" is too long: its interface name "${tooLong}" would exceed 15 bytes (at most ${maxVmNameLength(ctx.prefix)} characters)` }];
}

function checkVirtualMachine(vm: VirtualMachine, ctx: CheckContext): Issue[] {
  const issues = vmNameIssue(vm.metadata.name, '/metadata/name', ctx);
  const spec = vm.spec;
  if (!spec.boot && !spec.disks?.length) {
    issues.push({ pointer: '/spec', message: 'spec needs boot (kernel) or disks: nothing to boot' });
  }
  const imagePaths: [string, string | undefined][] = [
    ['/spec/boot/kernel', spec.boot?.kernel],
    ['/spec/boot/initrd', spec.boot?.initrd],
    ...(spec.disks ?? []).map((d, i): [string, string | undefined] => [`/spec/disks/${i}/backingImage`, d.backingImage]),
  ];
  for (const [pointer, p] of imagePaths) {
    const escape = p === undefined ? undefined : imagePathEscape(ctx.imageRoot, p);
    if (escape) issues.push({ pointer, message: `${pointer.slice(1).replace(/\/(\d+)/g, '[$1]').replace(/\//g, '.')}: "${p}" ${escape}` });
  }
  const diskNames = new Set<string>();
  (spec.disks ?? []).forEach((d, i) => {
    if (diskNames.has(d.name)) issues.push({ pointer: `/spec/disks/${i}/name`, message: `spec.disks[${i}].name: disk "${d.name}" is declared twice` });
    diskNames.add(d.name);
  });
  if (spec.placement?.node && spec.placement.nodeSelector) {
    issues.push({ pointer: '/spec/placement', message: 'spec.placement: set node or nodeSelector, not both' });
  }
  if (spec.memory && sizeMiB(spec.memory) > 1024 * 1024) {
    issues.push({ pointer: '/spec/memory', message: `spec.memory: ${spec.memory} is more than 1Ti` });
  }
  return issues;
}

export function sizeMiB(size: string): number {
  const n = Number(size.slice(0, -2));
  return size.endsWith('Gi') ? n * 1024 : n;
}

function checkRoute(route: Route, ctx: CheckContext): Issue[] {
  const issues = vmNameIssue(route.spec.vm, '/spec/vm', ctx);
  const { mode, address, gateway, dns } = route.spec;
  if (mode === 'isolated') {
    if (gateway) issues.push({ pointer: '/spec/gateway', message: 'spec.gateway: an isolated route has no gateway (nothing leaves its netns)' });
    if (dns && dns !== 'none') issues.push({ pointer: '/spec/dns', message: `spec.dns: an isolated route cannot use dns "${dns}" (only none)` });
  } else {
    if (!address) issues.push({ pointer: '/spec', message: `missing required field "spec.address" (mode ${mode} needs an address)` });
    if (!gateway) issues.push({ pointer: '/spec', message: `missing required field "spec.gateway" (mode ${mode} needs a gateway)` });
  }
  if (address) issues.push(...addressIssues(address, gateway));
  if (mode === 'tor' && dns !== 'tor' && dns !== 'none') {
    issues.push({ pointer: '/spec/dns', message: `spec.dns: a tor route resolves through Tor: use dns tor (got ${dns}); anything else would leak` });
  }
  if (dns === 'tor' && mode !== 'tor') {
    issues.push({ pointer: '/spec/dns', message: `spec.dns: dns tor needs mode tor (got ${mode})` });
  }
  return issues;
}

/** A route's address must be a host address with room for a gateway, and the gateway on its subnet. */
function addressIssues(address: string, gateway: string | undefined): Issue[] {
  const { ip, prefix } = parseCidr(address);
  // A /31 or /32 has no room for a gateway; that every gateway is then "outside" adds nothing.
  if (prefix > 30) return [{ pointer: '/spec/address', message: `spec.address: /${prefix} leaves no room for a gateway (use /30 or larger)` }];
  const issues: Issue[] = [];
  if (isNetworkOrBroadcast(ip, prefix)) issues.push({ pointer: '/spec/address', message: `spec.address: ${ip} is the network or broadcast address of its /${prefix}` });
  if (gateway === ip) issues.push({ pointer: '/spec/gateway', message: `spec.gateway: ${gateway} is the route's own address` });
  else if (gateway && !sameSubnet(ip, gateway, prefix)) issues.push({ pointer: '/spec/gateway', message: `spec.gateway: ${gateway} is outside the route's subnet ${address}` });
  return issues;
}

function checkFirewallPolicy(policy: FirewallPolicy): Issue[] {
  const issues: Issue[] = [];
  const { vms, selector, rules = [] } = policy.spec;
  if (!vms && !selector) issues.push({ pointer: '/spec', message: 'spec needs vms or selector: the policy applies to nothing' });
  if (vms && selector) issues.push({ pointer: '/spec/selector', message: 'spec: set vms or selector, not both' });
  rules.forEach((rule, i) => {
    const at = `/spec/rules/${i}`;
    const field = `spec.rules[${i}]`;
    if (rule.dstPorts !== undefined) {
      if (rule.proto !== 'tcp' && rule.proto !== 'udp') {
        issues.push({ pointer: `${at}/dstPorts`, message: `${field}.dstPorts: ports need proto tcp or udp${rule.proto ? ` (got ${rule.proto})` : ''}` });
      }
      const [low, high = low] = rule.dstPorts.split('-').map(Number) as [number, number?];
      if (low < 1 || high > 65535 || low > high) {
        issues.push({ pointer: `${at}/dstPorts`, message: `${field}.dstPorts: "${rule.dstPorts}" is not a port or range within 1-65535` });
      }
    }
    if (rule.icmpType !== undefined && rule.proto !== 'icmp') {
      issues.push({ pointer: `${at}/icmpType`, message: `${field}.icmpType: needs proto icmp` });
    }
    if (rule.specialTarget && rule.dstHost) {
      issues.push({ pointer: `${at}/dstHost`, message: `${field}: specialTarget dns and dstHost exclude each other` });
    }
  });
  return issues;
}

function checkGpuTrustLevel(level: GpuTrustLevel): Issue[] {
  const issues: Issue[] = [];
  const { device, hostDevice } = level.spec;
  if (hostDevice && device !== 'vfio') {
    issues.push({ pointer: '/spec/hostDevice', message: 'spec.hostDevice: only a vfio (passthrough) level names a host device' });
  }
  if (device === 'vfio') {
    if (level.spec.level < PASSTHROUGH_MIN_LEVEL) {
      issues.push({ pointer: '/spec/device', message: `spec.device: passthrough (vfio) is only allowed at level ${PASSTHROUGH_MIN_LEVEL} (system), not ${level.spec.level}` });
    }
    if (!hostDevice) issues.push({ pointer: '/spec', message: 'missing required field "spec.hostDevice" (device vfio passes through a host device)' });
  }
  return issues;
}

const PUBLIC_KEY_BYTES: Record<string, number> = { 'ml-dsa-65': 1952, 'ml-dsa-87': 2592 };

function checkClusterNode(node: ClusterNode): Issue[] {
  const { alg, value } = node.spec.publicKey;
  const bytes = Buffer.from(value, 'base64').length;
  if (bytes !== PUBLIC_KEY_BYTES[alg]) {
    return [{ pointer: '/spec/publicKey/value', message: `spec.publicKey.value: ${bytes} bytes is not an ${alg} public key (${PUBLIC_KEY_BYTES[alg]} bytes)` }];
  }
  return [];
}

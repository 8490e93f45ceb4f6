// Would a VM's compiled firewall let this flow out? Pure, the same semantics the backends emit for a
// NEW packet of the VM's outbound chain: fail-closed rejects everything, then the rules in order (first
// match wins; ports compared as numbers, addresses by CIDR), then the default action. Used to cut the
// established flows a tightened policy no longer allows.
import type { IrMatch, VmFirewall } from './ir.ts';

export interface FlowTuple {
  /** The VM's side (original source). */
  src: string;
  dst: string;
  /** tcp, udp, icmp, or another protocol name/number (matches only rules without a proto). */
  proto: string;
  dport?: number;
  icmpType?: number;
}

function ipToInt(ip: string): number | undefined {
  const parts = ip.split('.');
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return undefined;
    n = n * 256 + Number(p);
  }
  return n;
}

/** Is `ip` inside `cidr` (a.b.c.d/len)? */
export function inCidr(ip: string, cidr: string): boolean {
  const [net, lenText] = cidr.split('/');
  const a = ipToInt(ip);
  const b = ipToInt(net ?? '');
  const len = Number(lenText ?? '32');
  if (a === undefined || b === undefined || !Number.isInteger(len) || len < 0 || len > 32) return false;
  const size = 2 ** (32 - len);
  return Math.floor(a / size) === Math.floor(b / size);
}

function matches(m: IrMatch, f: FlowTuple): boolean {
  if (m.dst && !m.dst.some((c) => inCidr(f.dst, c))) return false;
  if (m.proto && m.proto !== f.proto) return false;
  if (m.ports && (f.dport === undefined || f.dport < m.ports.from || f.dport > m.ports.to)) return false;
  if (m.icmpType !== undefined && f.icmpType !== m.icmpType) return false;
  return true;
}

/** True when the VM's outbound chain accepts a new packet of this flow. */
export function outboundAccepts(fw: VmFirewall, f: FlowTuple): boolean {
  if (fw.failClosed) return false;
  if (f.src !== fw.vmAddress) return false; // anti-spoof
  for (const r of fw.outbound.rules) if (matches(r.match, f)) return r.action === 'accept';
  return fw.outbound.defaultAction === 'accept';
}

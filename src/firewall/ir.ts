// The intermediate form of qwamos' firewall: what one VM may send, written once and emitted by two
// backends (nftables: ./nft.ts, iptables: ./iptables.ts). Pure data, no host tools.
//
// Every VM has four hook points, all keyed on its host-side interface (`hostIf`):
//   outbound  forward, iifname hostIf: traffic the VM sends through the host (Qubes' rules live here)
//   inbound   forward, oifname hostIf: traffic the host forwards to the VM (replies only, or nothing)
//   toGateway input,   iifname hostIf: traffic for the host itself (DNS on the gateway, Tor, I2P proxies)
//   redirects nat prerouting, iifname hostIf: Tor's transparent proxying
// Each filter hook point starts with the same fixed prologue, emitted by the backends:
//   ct state invalid drop; IPv6 drop (Routes are IPv4 only); source != vmAddress drop (anti-spoof)
// then the ordered rules (first match wins), then the default action.

export type Verdict = 'accept' | 'drop' | 'reject';
export type RouteMode = 'direct' | 'isolated' | 'tor' | 'i2p';
export type L4Proto = 'tcp' | 'udp' | 'icmp';

/** What one rule matches; every field present must match (an empty match matches every IPv4 packet). */
export interface IrMatch {
  /** Destination IPv4 networks in CIDR form (a.b.c.d/len), sorted; any of them. */
  dst?: string[];
  proto?: L4Proto;
  /** Destination port range, inclusive (only with tcp/udp). */
  ports?: { from: number; to: number };
  /** ICMP type (only with icmp). */
  icmpType?: number;
}

export interface IrRule {
  match: IrMatch;
  action: Verdict;
  /** Names the rule's origin (e.g. `rule 3`, `dns`), written as the backend's rule comment. */
  comment: string;
}

export interface IrRedirect {
  proto: 'tcp' | 'udp';
  /** Only this destination port (undefined: every port). */
  dport?: number;
  /** Only TCP SYNs (new connections). */
  synOnly?: boolean;
  /** The local port on the gateway address the packet is redirected to. */
  toPort: number;
  comment: string;
}

/** A name in a rule and what it resolved to (shown in status). */
export interface ResolvedName {
  rule: number;
  name: string;
  addresses: string[];
}

export interface VmFirewall {
  vm: string;
  hostIf: string;
  /** The VM's IPv4 address, no prefix length. */
  vmAddress: string;
  gateway: string;
  mode: RouteMode;
  /**
   * Set when the policy could not be compiled (unresolved name, invalid rule, missing gateway port):
   * the VM's traffic is rejected in every direction and nothing is redirected. One line, names the rule.
   */
  failClosed?: string;
  outbound: { allowEstablished: boolean; rules: IrRule[]; defaultAction: Verdict };
  /** Forwarded traffic to the VM: replies to its own connections when allowed, else nothing. */
  inbound: { allowEstablished: boolean };
  /** Traffic to the host itself: replies to the host's own connections when allowed, these accepts, the rest dropped. */
  toGateway: { rules: IrRule[]; allowEstablished?: boolean };
  redirects: IrRedirect[];
  /** The earliest expiry still in the future (RFC 3339): schedule a pass then. */
  nextExpiry?: string;
  resolved: ResolvedName[];
  /** Why parts of the input had no effect (e.g. rules in a mode where only the gateway is reachable). */
  notes: string[];
}

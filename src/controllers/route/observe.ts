// Route observe: host facts only. One `ip` process for the host side and the Routes' VM netns, one
// `nft` process for qwamos' table, and the uplink. Everything is found by its derived name; whose it is
// (the mark each carries) is reported, not judged.
import { checkedUplink, defaultRouteDev, derivedNames, observeNetworks, type NetLayout, type NetnsView, type ObservedLink, type ObservedRoute } from '../../drivers/netns.ts';
import { observeNftTable, type ObservedNftTable } from '../../drivers/nft.ts';
import { isDnsLabel } from '../../names.ts';
import { NAT_FAMILY, natTableName } from './nat.ts';
import type { RouteGatewayActual } from './firewall.ts';

export type { ObservedLink, ObservedRoute };

/** One VM's network as the host has it (everything named after the VM, whatever made it). */
export interface ObservedRouteNet {
  vm: string;
  netnsExists: boolean;
  /** lo up inside the VM netns. */
  loUp?: boolean;
  /** Addresses on lo other than its own 127.0.0.1/8 and ::1/128. */
  loAddresses?: string[];
  /** IPv6 off (all and default) inside the VM netns; undefined when it could not be read. */
  ipv6Disabled?: boolean;
  /** Pb-vm inside the VM netns. */
  bridge?: ObservedLink;
  /** Pv-vm inside the VM netns. */
  vmIf?: ObservedLink;
  /** Ph-vm on the host side. */
  hostIf?: ObservedLink;
  /** vmIf and hostIf are both veths and each other's peer. */
  paired: boolean;
  /** Main-table routes inside the VM netns. */
  vmRoutes?: ObservedRoute[];
  /** Destinations of main-table routes via hostIf on the host side ('10.8.0.2', '10.9.0.0/24'). */
  hostRoutes: string[];
  /** Links in the VM netns whose master is the bridge, other than vmIf and the VM's tap Pt-vm. */
  foreignPorts?: string[];
}

/** qwamos' nft table and the forwarding switch, on the host side. */
export interface ObservedNat {
  table?: ObservedNftTable;
  forwarding: boolean;
}

export interface RouteActual extends RouteGatewayActual {
  /** Undefined when nothing of the VM's network exists. */
  net?: ObservedRouteNet;
  nat: ObservedNat;
  /** The interface direct traffic leaves by (configured, else the default route's); undefined = none. */
  uplink?: string;
}

export interface RouteHost {
  /** By VM name. */
  nets: Map<string, ObservedRouteNet>;
  nat: ObservedNat;
  uplink?: string;
}

/**
 * @param vms the VMs whose netns to look into (the host side is read whole); every netns of the
 *   prefix when 'all' (garbage collection). Scoping keeps a one-route heal cheap on a big host.
 */
export async function observeRouteHost(layout: NetLayout, vms: readonly string[] | 'all', configuredUplink?: string): Promise<RouteHost> {
  const hostNetns = layout.hostNetns;
  const [view, nft] = await Promise.all([
    observeNetworks({
      ...(hostNetns ? { hostNetns } : {}),
      ...(vms === 'all' ? { netnsStartingWith: `${layout.prefix}-` } : { netns: vms.map((vm) => derivedNames(layout.prefix, vm).netns) }),
    }),
    observeNftTable(hostNetns, NAT_FAMILY, natTableName(layout.prefix)),
  ]);
  // The host side's routes are read anyway: the default route's interface costs no extra process.
  const uplink = configuredUplink ? checkedUplink(configuredUplink) : defaultRouteDev(view.host);
  const nat: ObservedNat = { forwarding: nft.ipv4Forwarding, ...(nft.table ? { table: nft.table } : {}) };
  return { nets: routeNets(layout.prefix, view.host, view.netns), nat, ...(uplink ? { uplink } : {}) };
}

/** The VM name in an owned name ('qwh-web' with marker 'qwh-' -> 'web'). */
function vmOf(name: string, marker: string): string | undefined {
  if (!name.startsWith(marker)) return undefined;
  const vm = name.slice(marker.length);
  return isDnsLabel(vm) ? vm : undefined;
}

/** Pure: the ip driver's view sorted into one entry per VM. */
export function routeNets(prefix: string, host: NetnsView, netns: Map<string, NetnsView | undefined>): Map<string, ObservedRouteNet> {
  const result = new Map<string, ObservedRouteNet>();
  const entry = (vm: string): ObservedRouteNet => {
    let e = result.get(vm);
    if (!e) result.set(vm, (e = { vm, netnsExists: false, paired: false, hostRoutes: [] }));
    return e;
  };
  for (const link of host.links) {
    const vm = vmOf(link.name, `${prefix}h-`);
    if (vm !== undefined) entry(vm).hostIf = link;
  }
  for (const rt of host.routes) {
    const vm = rt.dev && rt.dst !== 'default' ? vmOf(rt.dev, `${prefix}h-`) : undefined;
    if (vm !== undefined) entry(vm).hostRoutes.push(rt.dst);
  }
  for (const [ns, view] of netns) {
    const vm = vmOf(ns, `${prefix}-`);
    if (vm === undefined) continue;
    const e = entry(vm);
    e.netnsExists = true;
    if (!view) continue; // vanished while we looked, or unreadable: nothing more is known
    let names;
    try {
      names = derivedNames(prefix, vm);
    } catch {
      continue; // a name no Route can have (too long): not ours
    }
    for (const link of view.links) {
      if (link.name === 'lo') {
        e.loUp = link.up;
        e.loAddresses = link.addresses.filter((c) => c !== '127.0.0.1/8' && c !== '::1/128');
      } else if (link.name === names.bridge) e.bridge = link;
      else if (link.name === names.vmIf) e.vmIf = link;
    }
    // The VM's tap (the VM controller's) and the veth end are the bridge's legitimate ports.
    e.foreignPorts = view.links.filter((l) => l.master === names.bridge && l.name !== names.vmIf && l.name !== names.tap).map((l) => l.name);
    e.vmRoutes = view.routes;
    if (view.ipv6Disabled !== undefined) e.ipv6Disabled = view.ipv6Disabled;
  }
  for (const e of result.values()) {
    const h = e.hostIf;
    const v = e.vmIf;
    e.paired = !!(h && v && h.kind === 'veth' && v.kind === 'veth' && h.peerIfindex === v.ifindex && v.peerIfindex === h.ifindex);
  }
  return result;
}

// A tor or i2p Route's gateway side, as the Route controller runs it: the routing backstop (policy
// routing of the host link to `unreachable`, independent of any firewall), the Tor or i2pd process
// bound to the gateway address (supervised: started when dead), and where its private files live.
import path from 'node:path';
import { createHash } from 'node:crypto';
import { backstopComplete, ensureBackstop, observeBackstop, removeBackstop, type Backstop, type ObservedBackstop } from '../../drivers/policyroute.ts';
import { i2pdHealth, i2pdPid, startI2pd, stopI2pd, type I2pGateway } from '../../drivers/i2pd.ts';
import { startTor, stopTor, torHealth, torPid, type TorGateway } from '../../drivers/tor.ts';
import { derivedNames } from '../../drivers/netns.ts';
import type { StoredResource } from '../../store/store.ts';
import { I2P_PORTS, TOR_PORTS } from '../firewall/desired.ts';

export interface GatewaySettings {
  prefix: string;
  hostNetns?: string;
  /** Gateways keep their files under `<stateDir>/gateways/<route>` (0700). */
  stateDir: string;
}

export interface GatewayHealth {
  kind: 'tor' | 'i2pd';
  pid?: number;
  /** Its sockets listen on the gateway address. */
  healthy: boolean;
  /** One line: what listens and what does not. */
  detail: string;
}

/** The Routes whose VM is closed by a backstop and served by a gateway process. */
export const gatewayMode = (mode: string): mode is 'tor' | 'i2p' => mode === 'tor' || mode === 'i2p';

/**
 * The VM's backstop: its own routing table, numbered from its host link's name. The number is also the
 * rule's priority, so it lies below the main table's 32766 (a rule after main would never be reached).
 */
export function backstopOf(prefix: string, vm: string): Backstop {
  const hostIf = derivedNames(prefix, vm).hostIf;
  const n = createHash('sha256').update(hostIf).digest().readUInt32BE(0) % 30_000;
  return { hostIf, table: 2_000 + n };
}

function dirOf(s: GatewaySettings, route: StoredResource<'Route'>): string {
  return path.join(s.stateDir, 'gateways', route.metadata.name);
}

export function torOf(s: GatewaySettings, route: StoredResource<'Route'>): TorGateway {
  return { ...(s.hostNetns ? { netns: s.hostNetns } : {}), dir: dirOf(s, route), gateway: route.spec.gateway ?? '', ...TOR_PORTS };
}

export function i2pOf(s: GatewaySettings, route: StoredResource<'Route'>): I2pGateway {
  return { ...(s.hostNetns ? { netns: s.hostNetns } : {}), dir: dirOf(s, route), gateway: route.spec.gateway ?? '', ...I2P_PORTS };
}

export async function observeGateway(s: GatewaySettings, route: StoredResource<'Route'>): Promise<GatewayHealth | undefined> {
  if (!route.spec.gateway) return undefined;
  if (route.spec.mode === 'tor') {
    const h = await torHealth(torOf(s, route));
    return { kind: 'tor', ...(h.pid ? { pid: h.pid } : {}), healthy: h.healthy, detail: `tor ${h.pid ? `pid ${h.pid}` : 'not running'}, TransPort ${h.transPort ? 'listens' : 'closed'}, DNSPort ${h.dnsPort ? 'listens' : 'closed'}` };
  }
  if (route.spec.mode === 'i2p') {
    const h = await i2pdHealth(i2pOf(s, route));
    return { kind: 'i2pd', ...(h.pid ? { pid: h.pid } : {}), healthy: h.healthy, detail: `i2pd ${h.pid ? `pid ${h.pid}` : 'not running'}, HTTP proxy ${h.httpProxy ? 'listens' : 'closed'}, SOCKS proxy ${h.socksProxy ? 'listens' : 'closed'}` };
  }
  return undefined;
}

/** Is the Route's gateway process alive (cheap: a pid file and /proc, no process spawned)? */
export async function gatewayAlive(s: GatewaySettings, route: StoredResource<'Route'>): Promise<boolean> {
  if (!route.spec.gateway) return true;
  if (route.spec.mode === 'tor') return (await torPid(torOf(s, route))) !== undefined;
  if (route.spec.mode === 'i2p') return (await i2pdPid(i2pOf(s, route))) !== undefined;
  return true;
}

/** How often the daemon checks that gateway processes are alive (a dead one is restarted at once). */
export const GATEWAY_WATCH_MS = 2_000;

export async function startGateway(s: GatewaySettings, route: StoredResource<'Route'>): Promise<void> {
  if (route.spec.mode === 'tor') await startTor(torOf(s, route));
  else if (route.spec.mode === 'i2p') await startI2pd(i2pOf(s, route));
}

export async function stopGateway(s: GatewaySettings, route: StoredResource<'Route'>): Promise<void> {
  if (!route.spec.gateway) return;
  if (route.spec.mode === 'tor') await stopTor(torOf(s, route));
  else if (route.spec.mode === 'i2p') await stopI2pd(i2pOf(s, route));
}

export { backstopComplete, ensureBackstop, observeBackstop, removeBackstop, type ObservedBackstop };

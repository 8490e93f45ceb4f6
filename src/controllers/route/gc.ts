// Route garbage collection: what qwamos made for a Route (marked with its ifalias, see plan.ts) whose
// Route is no longer in the world, e.g. after its record was lost. Objects without qwamos' mark under
// this prefix are never touched, whatever their name. Routes being deleted are left to their own pass.
// With the firewall configured also: gateway processes and their private dirs (<stateDir>/gateways/<route>)
// of Routes that are gone or no longer tor/i2p, routing backstops of host links no tor/i2p Route owns,
// and firewall chains of VMs no Route compiles to any more.
import { applyIpChanges, derivedNames, resolveUplink, type IpLine, type NetLayout } from '../../drivers/netns.ts';
import { replaceNftTable } from '../../drivers/nft.ts';
import type { World } from '../../engine/contract.ts';
import { NAT_FAMILY, compileNatTable, describeRule, natTableName } from './nat.ts';
import { observeRouteHost } from './observe.ts';
import { markedRoute } from './plan.ts';
import { readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { listBackstops, removeBackstop } from '../../drivers/policyroute.ts';
import { stopTorIn } from '../../drivers/tor.ts';
import { stopI2pdIn } from '../../drivers/i2pd.ts';
import { isDnsLabel } from '../../names.ts';
import type { RouteGateways } from './apply.ts';
import { gatewayMode } from './gateway.ts';

/** A marked object's Route is gone when the world has no Route of that name, or one for another VM. */
function orphaned(world: World, name: string | undefined, vm: string): boolean {
  if (name === undefined) return false;
  const route = world.get('Route', name);
  return !route || route.spec.vm !== vm;
}

/** Gateways of Routes that are gone, or whose mode no longer runs that gateway; their dirs too once unused. */
async function collectGateways(g: RouteGateways, world: World): Promise<string[]> {
  const root = path.join(g.settings.stateDir, 'gateways');
  const removed: string[] = [];
  for (const name of await readdir(root).catch(() => [] as string[])) {
    if (!isDnsLabel(name)) continue; // not a directory qwamos made
    const route = world.get('Route', name);
    if (route?.deletionRequestedAt) continue;
    const dir = path.join(root, name);
    const mode = route?.spec.mode;
    if (mode !== 'tor') await stopTorIn(dir);
    if (mode !== 'i2p') await stopI2pdIn(dir);
    if (!route || !gatewayMode(route.spec.mode)) {
      await rm(dir, { recursive: true, force: true });
      removed.push(`removed gateway dir ${dir} of Route/${name}${route ? ` (mode ${route.spec.mode})` : ''}`);
    }
  }
  return removed;
}

/** Backstops on qwamos host links that no tor/i2p Route (or Route being deleted) owns. */
async function collectBackstops(layout: NetLayout, world: World): Promise<string[]> {
  const owned = new Set(world.list('Route').filter((r) => gatewayMode(r.spec.mode) || r.deletionRequestedAt).map((r) => derivedNames(layout.prefix, r.spec.vm).hostIf));
  const removed: string[] = [];
  for (const b of await listBackstops(layout, derivedNames(layout.prefix, 'x').hostIf.slice(0, -1))) {
    if (owned.has(b.hostIf)) continue;
    await removeBackstop(layout, b);
    removed.push(`removed routing backstop of ${b.hostIf} (table ${b.table})`);
  }
  return removed;
}

/** Firewall chains of VMs the world no longer compiles: the world's firewall written again. */
async function collectFirewall(g: RouteGateways, world: World): Promise<string[]> {
  const seen = await g.firewall.observe(world);
  const desired = seen.backend.desiredView(await g.firewall.compile(world));
  const base = new Set(seen.backend.baseChainNames);
  const stale = [...seen.view.chains.keys()].filter((c) => !base.has(c) && !desired.chains.has(c));
  // No VM left: nothing of qwamos' may stay (the nft table, the iptables chains and jumps, DOCKER-USER lines).
  const tableLeft = desired.chains.size === 0 && ((seen.backend.name === 'nftables' && seen.view.present) || [...seen.view.chains.values()].some((l) => l.length > 0));
  if (!stale.length && !tableLeft) return [];
  await g.firewall.sync(world);
  return stale.length ? [`removed firewall chains ${stale.join(', ')}`] : ['removed the firewall table (no VM left)'];
}

export async function collectRouteGarbage(layout: NetLayout, world: World, configuredUplink?: string, gateways?: RouteGateways): Promise<string[]> {
  const extra = gateways ? [...(await collectFirewall(gateways, world)), ...(await collectBackstops(layout, world)), ...(await collectGateways(gateways, world))] : [];
  return [...(await collectNetGarbage(layout, world, configuredUplink)), ...extra];
}

async function collectNetGarbage(layout: NetLayout, world: World, configuredUplink?: string): Promise<string[]> {
  const host = await observeRouteHost(layout, 'all', configuredUplink);
  const removed: string[] = [];
  const hostDelete: IpLine[] = [];
  const netns: IpLine[] = [];
  for (const net of host.nets.values()) {
    const n = derivedNames(layout.prefix, net.vm);
    const bridgeOwner = markedRoute(layout.prefix, net.bridge?.alias);
    if (net.netnsExists && orphaned(world, bridgeOwner, net.vm)) {
      netns.push({ cmd: `netns del ${n.netns}`, tolerant: true });
      removed.push(`deleted netns ${n.netns} of Route/${bridgeOwner}`);
    }
    const hostOwner = markedRoute(layout.prefix, net.hostIf?.alias);
    if (net.hostIf && orphaned(world, hostOwner, net.vm)) {
      hostDelete.push({ cmd: `link del ${n.hostIf}`, tolerant: true });
      removed.push(`deleted link ${n.hostIf} of Route/${hostOwner}`);
    }
  }
  await applyIpChanges(layout.hostNetns, { hostDelete, netns });

  // NAT: rules of Routes the world does not have; the table itself once no direct Route is left.
  const table = host.nat.table;
  if (table) {
    const gone = table.rules.filter((r) => {
      const name = r.comment?.startsWith('Route/') ? r.comment.slice('Route/'.length) : undefined;
      return name !== undefined && !world.get('Route', name);
    });
    const anyDirect = world.all.some((r) => r.kind === 'Route' && r.spec.mode === 'direct');
    if (gone.length > 0 || !anyDirect) {
      const routes = world.list('Route');
      const uplink = routes.length ? (host.uplink ?? (await resolveUplink(layout.hostNetns, configuredUplink))) : undefined;
      const content = uplink ? compileNatTable(routes, uplink) : undefined;
      // Without an uplink a table that must still hold rules is left for the Routes' own passes.
      if (content || !anyDirect) {
        await replaceNftTable(layout.hostNetns, NAT_FAMILY, natTableName(layout.prefix), content, { ipv4Forwarding: !!content });
        for (const r of gone) removed.push(`removed nft rule ${describeRule(r)}`);
        if (!content) removed.push(`deleted nft table ${natTableName(layout.prefix)}`);
      }
    }
  }
  return removed;
}

// Route garbage collection: what qwamos made for a Route (marked with its ifalias, see plan.ts) whose
// Route is no longer in the world, e.g. after its record was lost. Objects without qwamos' mark under
// this prefix are never touched, whatever their name. Routes being deleted are left to their own pass.
import { applyIpChanges, derivedNames, resolveUplink, type IpLine, type NetLayout } from '../../drivers/netns.ts';
import { replaceNftTable } from '../../drivers/nft.ts';
import type { World } from '../../engine/contract.ts';
import { NAT_FAMILY, compileNatTable, describeRule, natTableName } from './nat.ts';
import { observeRouteHost } from './observe.ts';
import { markedRoute } from './plan.ts';

/** A marked object's Route is gone when the world has no Route of that name, or one for another VM. */
function orphaned(world: World, name: string | undefined, vm: string): boolean {
  if (name === undefined) return false;
  const route = world.get('Route', name);
  return !route || route.spec.vm !== vm;
}

export async function collectRouteGarbage(layout: NetLayout, world: World, configuredUplink?: string): Promise<string[]> {
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

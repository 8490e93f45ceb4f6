// Route apply: the actions of any number of Routes as a few batched `ip` runs (see applyIpChanges),
// then, when any Route's NAT differs, qwamos' nft table rewritten whole from the world in one
// transaction. So a pass spawns a handful of processes whatever the number of Routes.
import { applyIpChanges, resolveUplink, type IpLine, type NetLayout } from '../../drivers/netns.ts';
import { replaceNftTable } from '../../drivers/nft.ts';
import { OutcomeError, waiting, type World } from '../../engine/contract.ts';
import { NAT_FAMILY, compileNatTable, natTableName } from './nat.ts';
import { NO_UPLINK, type NetAction, type RouteAction } from './plan.ts';
import type { FirewallAction } from './firewall.ts';
import type { FirewallService } from '../firewall/service.ts';
import { backstopOf, ensureBackstop, removeBackstop, startGateway, stopGateway, type GatewaySettings } from './gateway.ts';
import type { StoredResource } from '../../store/store.ts';
import { parseKey } from '../../resources/keys.ts';

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

// VM-side lines in the order the kernel needs: lo, stray addresses and routes, foreign ports off, the
// bridge, its ports, links up and marked.
function vmRank(cmd: string): number {
  if (cmd.startsWith('link set lo ')) return 0;
  if (cmd.startsWith('addr del')) return 1;
  if (cmd.startsWith('route del')) return 2;
  if (cmd.endsWith(' nomaster')) return 3;
  if (cmd.startsWith('link add')) return 4;
  if (/ master /.test(cmd)) return 5;
  if (cmd.startsWith('addr')) return 6;
  if (cmd.startsWith('link set')) return 7;
  return 8;
}
const hostRank = (cmd: string): number => (cmd.startsWith('link add') ? 0 : cmd.startsWith('link set') ? 1 : cmd.startsWith('addr') ? 2 : 3);

function stableSort(lines: IpLine[], rank: (cmd: string) => number): IpLine[] {
  return lines
    .map((l, i) => ({ l, i, r: rank(l.cmd) }))
    .sort((a, b) => a.r - b.r || a.i - b.i)
    .map((x) => x.l);
}

/** Carries out net actions in batches; deletions tolerate objects that are already gone. */
export async function applyNetActions(layout: NetLayout, actions: readonly NetAction[]): Promise<void> {
  const hostDelete: IpLine[] = [];
  const netnsDelete = new Map<string, IpLine[]>();
  const netns: IpLine[] = [];
  const hostCreate: IpLine[] = [];
  const netnsCreate = new Map<string, IpLine[]>();
  const ipv6Off = new Set<string>();
  const waitGone: string[] = [];
  const need = (x: { netns?: string }): string => {
    if (!x.netns) throw new Error(`action without a netns: ${JSON.stringify(x)}`);
    return x.netns;
  };
  for (const act of actions) {
    switch (act.type) {
      case 'create-netns':
        netns.push({ cmd: `netns add ${act.netns}` });
        break;
      case 'delete-netns':
        netns.push({ cmd: `netns del ${act.netns}`, tolerant: true });
        if (act.hostIf) waitGone.push(act.hostIf);
        break;
      case 'disable-ipv6':
        ipv6Off.add(act.netns);
        break;
      case 'create-bridge':
        push(netnsCreate, act.netns, { cmd: `link add ${act.bridge} type bridge forward_delay 0` });
        break;
      case 'set-master':
        push(netnsCreate, act.netns, { cmd: `link set ${act.link} master ${act.bridge}` });
        break;
      case 'release-port':
        push(netnsCreate, act.netns, { cmd: `link set ${act.link} nomaster`, tolerant: true });
        break;
      case 'set-mark':
        if (act.side === 'host') hostCreate.push({ cmd: `link set ${act.link} alias ${act.mark}` });
        else push(netnsCreate, need(act), { cmd: `link set ${act.link} alias ${act.mark}` });
        break;
      case 'delete-vm-route': {
        const rt = act.route;
        const words = ['route del', rt.type, rt.dst, rt.dev ? `dev ${rt.dev}` : '', rt.metric !== undefined ? `metric ${rt.metric}` : '', 'table main'];
        push(netnsCreate, act.netns, { cmd: words.filter(Boolean).join(' '), tolerant: true });
        break;
      }
      case 'create-veth':
        hostCreate.push({ cmd: `link add ${act.hostIf} type veth peer name ${act.vmIf} netns ${act.netns}` });
        break;
      case 'delete-link':
        if (act.side === 'host') hostDelete.push({ cmd: `link del ${act.link}`, tolerant: true });
        else push(netnsDelete, need(act), { cmd: `link del ${act.link}`, tolerant: true });
        break;
      case 'link-up':
        if (act.side === 'host') hostCreate.push({ cmd: `link set ${act.link} up` });
        else push(netnsCreate, need(act), { cmd: `link set ${act.link} up` });
        break;
      case 'add-address':
        if (act.side === 'host') hostCreate.push({ cmd: `addr replace ${act.cidr} dev ${act.link}` });
        else push(netnsCreate, need(act), { cmd: `addr replace ${act.cidr} dev ${act.link}` });
        break;
      case 'delete-address':
        if (act.side === 'host') hostDelete.push({ cmd: `addr del ${act.cidr} dev ${act.link}`, tolerant: true });
        else push(netnsCreate, need(act), { cmd: `addr del ${act.cidr} dev ${act.link}`, tolerant: true });
        break;
      case 'add-host-route':
        hostCreate.push({ cmd: `route replace ${act.dst} dev ${act.link}` });
        break;
      case 'delete-host-route':
        hostDelete.push({ cmd: `route del ${act.dst} dev ${act.link}`, tolerant: true });
        break;
      default: {
        const never: never = act;
        throw new Error(`unknown net action ${JSON.stringify(never)}`);
      }
    }
  }
  await applyIpChanges(layout.hostNetns, {
    hostDelete,
    netnsDelete,
    netns,
    waitGone,
    hostCreate: stableSort(hostCreate, hostRank),
    netnsCreate: new Map([...netnsCreate].map(([ns, lines]) => [ns, stableSort(lines, vmRank)])),
    ipv6Off,
  });
}

/**
 * Makes qwamos' table exactly what the world's direct Routes compile to via the uplink (no direct
 * Route: no table), with forwarding on when there is any. Ends the pass Waiting without an uplink.
 */
export async function syncNat(layout: NetLayout, world: World, configuredUplink?: string): Promise<void> {
  const routes = world.list('Route');
  const anyDirect = routes.some((r) => r.spec.mode === 'direct' && r.spec.address);
  const uplink = anyDirect ? await resolveUplink(layout.hostNetns, configuredUplink) : undefined;
  if (anyDirect && !uplink) throw new OutcomeError(waiting('NoUplink', NO_UPLINK, 10_000));
  const content = uplink ? compileNatTable(routes, uplink) : undefined;
  await replaceNftTable(layout.hostNetns, NAT_FAMILY, natTableName(layout.prefix), content, { ipv4Forwarding: !!content });
}

/** The firewall and gateway side of a Route controller (absent: only direct and isolated Routes). */
export interface RouteGateways {
  firewall: FirewallService;
  settings: GatewaySettings;
}

const FIREWALL_ACTIONS = new Set(['sync-firewall', 'ensure-backstop', 'remove-firewall', 'remove-backstop', 'start-gateway', 'stop-gateway']);
const isFirewallAction = (a: RouteAction): a is FirewallAction => FIREWALL_ACTIONS.has(a.type);

/**
 * In this order: backstops and the firewall (closed before any host link comes up; the chains of
 * Routes being deleted in this batch are kept), the ip changes, NAT, then for deleted Routes their
 * chains, backstops and gateways (their host links are gone now), and last the gateways to start.
 */
export async function applyRouteActions(layout: NetLayout, actions: readonly RouteAction[], world: World, configuredUplink?: string, gateways?: RouteGateways): Promise<void> {
  const fwActions = actions.filter(isFirewallAction);
  if (fwActions.length && !gateways) throw new Error('firewall actions planned for a Route controller without a firewall');
  const routeOf = (a: FirewallAction): StoredResource<'Route'> => {
    const r = world.get('Route', parseKey(a.resource).name);
    if (!r) throw new Error(`${a.resource}: not in the world`);
    return r;
  };
  const of = (type: FirewallAction['type']) => fwActions.filter((a) => a.type === type).map(routeOf);
  const g = gateways!;
  for (const r of of('ensure-backstop')) await ensureBackstop(layout, backstopOf(layout.prefix, r.spec.vm));
  const removing = of('remove-firewall');
  if (of('sync-firewall').length) await g.firewall.sync(world, new Set(removing.map((r) => r.metadata.name)));

  const net = actions.filter((a): a is NetAction => a.type !== 'sync-nat' && !isFirewallAction(a));
  if (net.length > 0) await applyNetActions(layout, net);
  if (actions.some((a) => a.type === 'sync-nat')) await syncNat(layout, world, configuredUplink);

  if (removing.length) await g.firewall.sync(world);
  for (const r of of('remove-backstop')) await removeBackstop(layout, backstopOf(layout.prefix, r.spec.vm));
  await Promise.all(of('stop-gateway').map((r) => stopGateway(g.settings, r)));
  await Promise.all(of('start-gateway').map((r) => startGateway(g.settings, r)));
}

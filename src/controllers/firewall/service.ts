// The firewall as one shared service of the Route and FirewallPolicy controllers: the backend (chosen
// once from the configuration), the name resolver, and the two operations both need: observe (the
// backend's view plus every policy name resolved again) and sync (compile the world whole, write it).
import { access } from 'node:fs/promises';
import { CommandError } from '../../drivers/exec.ts';
import path from 'node:path';
import type { FirewallBackendChoice } from '../../config.ts';
import type { World } from '../../engine/contract.ts';
import type { NameResolution } from '../../firewall/compile.ts';
import { resolveNames, systemResolver, type NameResolver } from '../../firewall/resolve.ts';
import type { VmFirewall } from '../../firewall/ir.ts';
import { outboundAccepts } from '../../firewall/evaluate.ts';
import { deleteFlow, listFlows, type ConntrackFlow } from '../../drivers/conntrack.ts';
import { chooseBackend, type FirewallBackend, type FirewallView } from './backend.ts';
import { desiredFirewall, worldNames, type DesiredOptions } from './desired.ts';

export interface FirewallSettings {
  prefix: string;
  hostNetns?: string;
  backend: FirewallBackendChoice;
  /** QWAMOS_FIREWALL_USER_CHAIN: the user's chain direct VMs' accepted traffic goes through. */
  userChain?: string;
  resolver?: NameResolver;
}

export interface FirewallObservation {
  view: FirewallView;
  resolved: ReadonlyMap<string, NameResolution>;
  /** The backend in use (its pure shape is what plan needs). */
  backend: FirewallBackend;
  dnscryptAvailable: boolean;
}

async function onPath(binary: string): Promise<boolean> {
  for (const dir of (process.env.PATH ?? '').split(':').filter(Boolean)) {
    if (await access(path.join(dir, binary)).then(() => true, () => false)) return true;
  }
  return false;
}

/** A VM's outbound policy as far as established flows are concerned (changed: check its flows). */
const outboundKey = (c: VmFirewall): string => JSON.stringify([c.vmAddress, c.mode, c.failClosed ?? null, c.outbound]);

/** What the last flow check did (status and tests). */
export interface FlowCut {
  /** `vm: proto src:sport -> dst:dport` of each entry deleted. */
  cut: string[];
  /** Why flows could not be checked (e.g. the conntrack tool is missing); the rules still apply to new flows. */
  unavailable?: string;
}

const describeFlow = (vm: string, f: ConntrackFlow): string =>
  `${vm}: ${f.proto} ${f.src}${f.sport !== undefined ? `:${f.sport}` : ''} -> ${f.dst}${f.dport !== undefined ? `:${f.dport}` : ''}`;

export class FirewallService {
  private backend?: Promise<FirewallBackend>;
  private readonly resolver: NameResolver;
  /** Per VM, the outbound policy whose flows were last checked (absent: check at the next sync). */
  private readonly checkedOutbound = new Map<string, string>();
  lastFlowCut: FlowCut = { cut: [] };

  constructor(readonly settings: FirewallSettings) {
    this.resolver = settings.resolver ?? systemResolver;
  }

  get prefix(): string {
    return this.settings.prefix;
  }

  backendInUse(): Promise<FirewallBackend> {
    const { prefix, hostNetns, userChain } = this.settings;
    this.backend ??= chooseBackend(this.settings.backend, { prefix, ...(hostNetns ? { hostNetns } : {}), ...(userChain !== undefined ? { userChain } : {}) });
    return this.backend;
  }

  private async resolve(world: World): Promise<Map<string, NameResolution>> {
    const names = worldNames(world);
    return resolveNames(names.map((dstHost) => ({ action: 'accept' as const, dstHost })), this.resolver);
  }

  async observe(world: World): Promise<FirewallObservation> {
    const backend = await this.backendInUse();
    const [view, resolved, dnscryptAvailable] = await Promise.all([backend.observe(), this.resolve(world), onPath('dnscrypt-proxy')]);
    return { view, resolved, backend, dnscryptAvailable };
  }

  /** The world's firewall compiled now (names resolved now). */
  async compile(world: World, keep?: ReadonlySet<string>): Promise<VmFirewall[]> {
    const [resolved, dnscryptAvailable] = await Promise.all([this.resolve(world), onPath('dnscrypt-proxy')]);
    const opts: DesiredOptions = { prefix: this.settings.prefix, dnscryptAvailable, ...(keep ? { keep } : {}) };
    return desiredFirewall(world, resolved, opts);
  }

  /**
   * Compile the world whole (names resolved now) and make the host's firewall exactly that. Returns
   * what was written (direct VMs closed while a configured user chain is missing).
   */
  async sync(world: World, keep?: ReadonlySet<string>): Promise<VmFirewall[]> {
    const backend = await this.backendInUse();
    // Not awaited here: the backend reads the host's table while the world compiles.
    const written = await backend.sync(this.compile(world, keep));
    await this.cutDisallowedFlows(written);
    return written;
  }

  /**
   * Established flows are accepted before a VM's rules: when its outbound policy changed, delete the
   * conntrack entries from its address whose flow the new policy no longer accepts (their next packet
   * is then judged as new, and dropped). Only VMs whose outbound policy changed since the last check.
   */
  private async cutDisallowedFlows(compiled: readonly VmFirewall[]): Promise<void> {
    // Only VMs whose forward chain accepts established flows can keep one alive (direct Routes); the
    // others drop forwarded traffic both ways whatever conntrack says.
    const changed = compiled.filter((c) => c.outbound.allowEstablished && this.checkedOutbound.get(c.vm) !== outboundKey(c));
    for (const vm of [...this.checkedOutbound.keys()]) if (!compiled.some((c) => c.vm === vm)) this.checkedOutbound.delete(vm);
    if (changed.length === 0) return;
    const layout = this.settings.hostNetns ? { hostNetns: this.settings.hostNetns } : {};
    const cut: string[] = [];
    try {
      const flows = await listFlows(layout);
      for (const c of changed) {
        for (const f of flows.filter((x) => x.src === c.vmAddress)) {
          if (f.dst === c.gateway) continue; // to the host itself: its input chain, not the forward rules
          const flow = { src: f.src, dst: f.dst, proto: f.proto, ...(f.dport !== undefined ? { dport: f.dport } : {}), ...(f.icmpType !== undefined ? { icmpType: f.icmpType } : {}) };
          if (!outboundAccepts(c, flow) && (await deleteFlow(layout, f))) cut.push(describeFlow(c.vm, f));
        }
        this.checkedOutbound.set(c.vm, outboundKey(c));
      }
      this.lastFlowCut = { cut };
    } catch (err) {
      // The tool cannot start (not installed): new flows are still judged by the rules; say so.
      if (err instanceof CommandError && err.exitCode === undefined) {
        this.lastFlowCut = { cut, unavailable: `established flows not checked: ${err.message}` };
        return;
      }
      throw err;
    }
  }
}

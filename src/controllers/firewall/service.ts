// The firewall as one shared service of the Route and FirewallPolicy controllers: the backend (chosen
// once from the configuration), the name resolver, and the two operations both need: observe (the
// backend's view plus every policy name resolved again) and sync (compile the world whole, write it).
import { access } from 'node:fs/promises';
import path from 'node:path';
import type { FirewallBackendChoice } from '../../config.ts';
import type { World } from '../../engine/contract.ts';
import type { NameResolution } from '../../firewall/compile.ts';
import { resolveNames, systemResolver, type NameResolver } from '../../firewall/resolve.ts';
import type { VmFirewall } from '../../firewall/ir.ts';
import { chooseBackend, type FirewallBackend, type FirewallView } from './backend.ts';
import { desiredFirewall, worldNames, type DesiredOptions } from './desired.ts';

export interface FirewallSettings {
  prefix: string;
  hostNetns?: string;
  backend: FirewallBackendChoice;
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

export class FirewallService {
  private backend?: Promise<FirewallBackend>;
  private readonly resolver: NameResolver;

  constructor(readonly settings: FirewallSettings) {
    this.resolver = settings.resolver ?? systemResolver;
  }

  get prefix(): string {
    return this.settings.prefix;
  }

  backendInUse(): Promise<FirewallBackend> {
    this.backend ??= chooseBackend(this.settings.backend, { prefix: this.settings.prefix, ...(this.settings.hostNetns ? { hostNetns: this.settings.hostNetns } : {}) });
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

  /** Compile the world whole (names resolved now) and make the host's firewall exactly that. */
  async sync(world: World, keep?: ReadonlySet<string>): Promise<VmFirewall[]> {
    const backend = await this.backendInUse();
    const [resolved, dnscryptAvailable] = await Promise.all([this.resolve(world), onPath('dnscrypt-proxy')]);
    const opts: DesiredOptions = { prefix: this.settings.prefix, dnscryptAvailable, ...(keep ? { keep } : {}) };
    const compiled = desiredFirewall(world, resolved, opts);
    await backend.sync(compiled);
    return compiled;
  }
}

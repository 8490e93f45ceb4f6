// The composition root: the controllers of this host, one per kind, built from the configuration.
import type { Config } from '../config.ts';
import type { AnyController } from '../engine/contract.ts';
import { declarationController } from './declaration.ts';
import { RouteController } from './route/index.ts';
import { VmController } from './vm/index.ts';

export function createControllers(config: Config): AnyController[] {
  const layout = { prefix: config.prefix, ...(config.hostNetns ? { hostNetns: config.hostNetns } : {}) };
  return [
    new RouteController(layout, config.uplink),
    new VmController({
      layout,
      stateDir: config.stateDir,
      imageRoot: config.imageRoot,
      stopTimeoutMs: config.stopTimeoutMs,
      ...(config.tscKhz ? { tscKhz: config.tscKhz } : {}),
    }),
    declarationController('GpuTrustLevel'),
    declarationController('ClusterNode'),
    // Until the GitSource controller lands (it needs the reshaped engine and store): stored, not followed.
    declarationController('GitSource'),
  ];
}

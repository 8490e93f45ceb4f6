// The controllers of this host, one per kind.
import type { NetLayout } from '../drivers/netns.ts';
import type { StoredResource } from '../store/store.ts';
import type { Controller } from './contract.ts';
import { declarationController } from './declaration.ts';
import { RouteController } from './route.ts';
import { VmController } from './vm.ts';

export interface ControllerContext {
  layout: NetLayout;
  stateDir: string;
  imageRoot: string;
  /** Current desired resources of a kind (the engine's view of the store). */
  desired: (kind: string) => StoredResource[];
  env?: NodeJS.ProcessEnv;
}

export function createControllers(ctx: ControllerContext): Controller[] {
  const env = ctx.env ?? process.env;
  return [
    new RouteController(ctx.layout, () => ctx.desired('Route'), env),
    new VmController({ layout: ctx.layout, stateDir: ctx.stateDir, imageRoot: ctx.imageRoot, desired: ctx.desired, env }),
    declarationController('GpuTrustLevel'),
    declarationController('ClusterNode'),
  ];
}

// The controllers of this host, one per kind.
import type { NetLayout } from '../drivers/netns.ts';
import type { StoredResource } from '../store/store.ts';
import type { Controller } from './contract.ts';
import { declarationController } from './declaration.ts';
import { RouteController } from './route.ts';

export interface ControllerContext {
  layout: NetLayout;
  /** Current desired resources of a kind (the engine's view of the store). */
  desired: (kind: string) => StoredResource[];
  env?: NodeJS.ProcessEnv;
}

export function createControllers(ctx: ControllerContext): Controller[] {
  return [
    new RouteController(ctx.layout, () => ctx.desired('Route'), ctx.env),
    declarationController('GpuTrustLevel'),
    declarationController('ClusterNode'),
  ];
}

// Kinds that only declare something other controllers read (GPU trust levels, cluster nodes): nothing
// to do on the host, so they are Ready once stored and valid.
import type { Controller } from './contract.ts';

export function declarationController(kind: string): Controller {
  return {
    kind,
    observe: async (resources) => new Map(resources.map((r) => [`${kind}/${r.metadata.name}`, undefined])),
    plan: () => [],
    diff: () => [],
    apply: async () => {},
  };
}

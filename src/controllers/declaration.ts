// Kinds that only declare something other controllers read (GPU trust levels, cluster nodes): nothing
// to do on the host, so they are Ready once stored and valid.
import { inSync, type Controller } from '../engine/contract.ts';
import { keyOf } from '../resources/keys.ts';
import type { Kind } from '../resources/kinds.ts';

export function declarationController<K extends Kind>(kind: K): Controller<K, undefined> {
  return {
    kind,
    observe: async (resources) => new Map(resources.map((r) => [keyOf(r), undefined])),
    plan: () => inSync(),
    diff: () => [],
    apply: async () => {},
  };
}

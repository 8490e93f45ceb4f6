// The contract every controller (one per kind) follows: observe the host in one batch, plan purely,
// apply the plan, observe again. An empty plan means the resource is in sync.
import type { ConditionPatch, StoredResource } from '../store/store.ts';

/** One small, typed host change. `describe` is what `diff` and events print. */
export interface Action {
  /** Machine-readable verb, e.g. 'create-netns'. */
  type: string;
  /** The resource this action serves, e.g. 'Route/browser'. */
  resource: string;
  /** One human line, e.g. 'create netns qw-browser'. */
  describe: string;
}

/**
 * A plan step that cannot be carried out (e.g. a mode this host does not support). A plan holding
 * one is never applied: the resource fails with its message, and stalls when `terminal` is set.
 */
export interface BlockedAction extends Action {
  type: 'blocked';
  terminal: boolean;
}

export function blocked(resource: string, describe: string, terminal = true): BlockedAction {
  return { type: 'blocked', resource, describe, terminal };
}

/** A difference between what a resource declares and what the host has. */
export interface FieldDiff {
  field: string;
  desired: string;
  actual: string;
}

export interface Controller<Actual = unknown, A extends Action = Action> {
  kind: string;
  /**
   * One batched look at the host for these resources (not a process per resource), keyed by
   * 'Kind/name'. Resources being deleted are included, so their leftovers can be found.
   */
  observe(resources: StoredResource[]): Promise<Map<string, Actual>>;
  /** Pure: desired (undefined = delete it) and actual (undefined = absent) to ordered actions. */
  plan(resource: StoredResource, actual: Actual | undefined, deleting: boolean): A[];
  /** Field-level differences, for drift records. Pure. */
  diff(resource: StoredResource, actual: Actual | undefined): FieldDiff[];
  /** Carries out actions of any number of resources, batching host calls where it pays. */
  apply(actions: A[]): Promise<void>;
  /** Resources this one must wait for (e.g. a VM for its Route), as 'Kind/name'. */
  dependencies?(resource: StoredResource, all: StoredResource[]): string[];
  /** Kind-specific status from the last observation (e.g. a VM's pid and RestartRequired). Pure. */
  report?(resource: StoredResource, actual: Actual | undefined): StatusReport;
  /**
   * Event sources that see host changes at once (e.g. a VM's QMP socket closing when QEMU dies); the
   * daemon starts them and re-checks the keys they name.
   */
  watch?(notify: (keys: string[]) => void): { close(): void };
}

export interface StatusReport {
  conditions?: ConditionPatch[];
  fields?: Record<string, unknown>;
}

// The contract every controller (one per kind, under src/controllers/<kind>/) follows, and the typed
// outcomes a reconcile pass ends with. The engine owns both; controllers implement them.
//
//   observe(resources, world)   one batched look at the host: host facts only, "unknown" said explicitly
//   plan(resource, actual, world)  pure: the actions to take now, and how the pass ends if not Ready
//   apply(actions, world)       carries out actions of any number of resources, batching host calls
//
// `world` is a snapshot of the desired resources the engine hands in at the start of a pass, so plan
// never reads live state. A resource being deleted carries `deletionRequestedAt`; its plan removes it.
import { keyOf } from '../resources/keys.ts';
import type { Kind } from '../resources/kinds.ts';
import type { ObjectKey } from '../resources/keys.ts';
import type { ConditionPatch, StoredResource } from '../store/store.ts';

/** One small, typed host change. `describe` is what `diff` and events print. */
export interface Action {
  /** Machine-readable verb, e.g. 'create-netns'. */
  type: string;
  /** The resource this action serves. */
  resource: ObjectKey;
  /** One human line, e.g. 'create netns qw-browser'. */
  describe: string;
}

/** A difference between what a resource declares and what the host has. */
export interface FieldDiff {
  field: string;
  desired: string;
  actual: string;
}

// ------------------------------------------------------------------------------------------ outcomes

/** The host equals the declaration. */
export interface Ready {
  type: 'Ready';
}

/** Something must happen first (a Route not ready, a crash-loop delay): look again after `afterMs`. */
export interface Waiting {
  type: 'Waiting';
  /** Condition reason, e.g. 'RouteNotReady', 'CrashLoop', 'NoUplink', 'KernelMissing'. */
  reason: string;
  message: string;
  afterMs: number;
}

/** Retrying cannot help (unsupported on this host, a GPU level it cannot give): until the spec changes. */
export interface Stalled {
  type: 'Stalled';
  /** Condition reason, e.g. 'GpuUnavailable', 'ModeUnsupported', 'SocketPathTooLong'. */
  reason: string;
  message: string;
}

/** The pass failed in a way a retry may fix: retried with exponential backoff. */
export interface Failed {
  type: 'Failed';
  reason: string;
  message: string;
}

export type Outcome = Ready | Waiting | Stalled | Failed;
/** The outcomes a plan can hold a pass at (Ready and Failed are decided by the engine). */
export type Hold = Waiting | Stalled;

export const ready = (): Ready => ({ type: 'Ready' });
export const waiting = (reason: string, message: string, afterMs: number): Waiting => ({ type: 'Waiting', reason, message, afterMs });
export const stalled = (reason: string, message: string): Stalled => ({ type: 'Stalled', reason, message });
export const failed = (reason: string, message: string): Failed => ({ type: 'Failed', reason, message });

/**
 * What to do now. The actions are applied (also when `hold` is set: a crash is recorded even while the
 * restart waits); then, with `hold`, the pass ends with it; without, the host is observed again and the
 * pass is Ready when the plan comes back empty. An empty plan without hold means in sync.
 */
export interface Plan<A extends Action = Action> {
  actions: A[];
  hold?: Hold;
}

export const inSync = <A extends Action>(): Plan<A> => ({ actions: [] });

/**
 * Thrown by observe or apply when the step knows why it failed: the engine ends the pass with this
 * outcome (Stalled or Failed) and its reason. Anything else thrown is Failed('ReconcileFailed').
 */
export class OutcomeError extends Error {
  override name = 'OutcomeError';
  constructor(readonly outcome: Stalled | Failed | Waiting) {
    super(outcome.message);
  }
}

// ------------------------------------------------------------------------------------------ the world

/** A snapshot of the desired resources (the store as the engine last read it), for one pass. */
export interface World {
  /** Every resource, including ones being deleted (they carry deletionRequestedAt). */
  readonly all: readonly StoredResource[];
  /** Resources of a kind, not being deleted. */
  list<K extends Kind>(kind: K): StoredResource<K>[];
  /** A resource of a kind by name (also while being deleted), or undefined. */
  get<K extends Kind>(kind: K, name: string): StoredResource<K> | undefined;
  /** Milliseconds since the epoch when the snapshot was taken: the "now" a pure plan may use. */
  readonly now: number;
}

export function makeWorld(resources: readonly StoredResource[], now = Date.now()): World {
  // Indexed once per snapshot: plans ask `list`/`get` per resource, so a scan each time is O(N²) a pass.
  const byKey = new Map<string, StoredResource>(resources.map((r) => [keyOf(r), r]));
  const byKind = new Map<Kind, StoredResource[]>();
  for (const r of resources) {
    if (r.deletionRequestedAt) continue;
    const list = byKind.get(r.kind) ?? [];
    list.push(r);
    byKind.set(r.kind, list);
  }
  return {
    all: resources,
    now,
    list: <K extends Kind>(kind: K) => [...((byKind.get(kind) ?? []) as StoredResource<K>[])],
    get: <K extends Kind>(kind: K, name: string) => byKey.get(`${kind}/${name}`) as StoredResource<K> | undefined,
  };
}

// ------------------------------------------------------------------------------------------ controller

export interface StatusReport {
  conditions?: ConditionPatch[];
  fields?: Record<string, unknown>;
}

export interface Controller<K extends Kind = Kind, Actual = unknown, A extends Action = Action> {
  readonly kind: K;
  /**
   * One batched look at the host for these resources (not a process per resource), keyed by object
   * key. Resources being deleted are included, so their leftovers can be found. Host facts only.
   */
  observe(resources: StoredResource<K>[], world: World): Promise<Map<ObjectKey, Actual>>;
  /** Pure: desired, actual (undefined = absent) and the world to what to do now. */
  plan(resource: StoredResource<K>, actual: Actual | undefined, world: World): Plan<A>;
  /** Field-level differences, for drift records. Pure. */
  diff(resource: StoredResource<K>, actual: Actual | undefined, world: World): FieldDiff[];
  /** Carries out actions of any number of resources, batching host calls where it pays. */
  apply(actions: A[], world: World): Promise<void>;
  /** Resources this one must wait for (e.g. a VM for its Route). */
  dependencies?(resource: StoredResource<K>, world: World): ObjectKey[];
  /** Kind-specific status from the last observation (a VM's pid, RestartRequired). Pure. */
  report?(resource: StoredResource<K>, actual: Actual | undefined, world: World): StatusReport;
  /**
   * Event sources that see host changes at once (a VM's QMP socket closing when QEMU dies); the
   * daemon starts them and re-checks the keys they name. `world` gives the current desired state.
   */
  watch?(notify: (keys: ObjectKey[]) => void, world: () => World): { close(): void };
  /**
   * Removes host objects this controller created (and marked as its own) that no resource in `world`
   * declares any more, e.g. after a record was lost. Returns one line per object removed.
   */
  collectGarbage?(world: World): Promise<string[]>;
}

/** Any controller, as the engine holds them (each is called only with resources of its own kind). */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyController = Controller<any, any, any>;

// One XState machine per resource: the whole life of a resource as the engine reconciles it. Every call
// to a controller or the store is an invoked actor, so a throw is an onError transition, never an actor
// that dies; the engine only feeds the machine RECONCILE (from its work queue) and UPDATE (a new record).
//
//   rest states: pending | ready | drifted | waiting (after delay) | backoff (after delay) | stalled
//                | waitingForDependencies | suspended            --RECONCILE--> starting
//   starting ─(tombstone)─► deleting ─► … ─► recording ─► deleted (final) | pending (re-applied meanwhile)
//            ─(suspended)─► recording ─► suspended
//            ─► checkingDependencies ─(blocked)─► recording ─► waitingForDependencies
//                 └► observing ─► planning ─► deciding ─(in sync / hold)────────────────► recording
//                                              ├─(was in sync)─► diffing ─(warn)─► recording ─► drifted
//                                              └─► applying ─(hold)─► recording
//                                                    └─► verifying ─► verifyPlanning ─► recording
//   recording writes the outcome (status, events, drift) and routes to the rest state of the outcome.
// A waiting or backoff state re-enqueues its key when its `after` delay fires: the work queue still
// de-duplicates and bounds concurrency. Tags: 'pass' while a pass runs, 'host' while it does host work.
import { assign, fromPromise, setup } from 'xstate';
import { OutcomeError, type Action, type FieldDiff, type Hold, type Plan } from './contract.ts';
import type { ObjectKey } from '../resources/keys.ts';
import type { StoredResource } from '../store/store.ts';
import type { Phase } from './phase.ts';

/** How a pass ended: the phase it leaves the resource in, the condition reason, and the retry delay. */
export interface PassEnd {
  phase: Exclude<Phase, 'Deleting'>;
  reason: string;
  message: string;
  /** Waiting: the delay the controller asked for; Failed: the backoff chosen. */
  afterMs?: number;
}

/** One change of the machine's rest state, as `describe` shows it. */
export interface Transition {
  at: string;
  from: string;
  to: string;
  reason: string;
}

/** Transitions kept per resource. */
export const TRANSITIONS_KEPT = 20;

/** What the engine writes at the end of a pass. */
export interface PassRecord {
  key: ObjectKey;
  /** The record this pass acted on (its generation, its tombstone). */
  target: StoredResource;
  end: PassEnd;
  /** The end differs from the previous one (state or reason): worth an event. */
  endChanged: boolean;
  applied: Action[];
  drifted: boolean;
  diffs: FieldDiff[];
  actual: unknown;
  driftMayBeOpen: boolean;
  failures: number;
  machine: MachineStatus;
}

/** Written to status.fields.machine. */
export interface MachineStatus {
  state: string;
  /** appliedAt of the record the last pass acted on: tells a waiting CLI the pass saw its write. */
  appliedAt: string;
  transitions: Transition[];
}

export interface RecordResult {
  /** Deleted: false when the record no longer carried the tombstone (re-applied meanwhile). */
  removed?: boolean;
  /** Open drift records were closed. */
  driftClosed?: boolean;
}

/**
 * Every call the machine makes: to the controller (batched by the engine) and to the store. One object
 * shared by all machines (each call names its resource), so an actor costs no closures of its own.
 */
export interface ResourceSteps {
  /** Dependencies not ready (or, for a record with a tombstone, dependants not deleted yet). */
  blockers(target: StoredResource): ObjectKey[];
  observe(target: StoredResource): Promise<unknown>;
  plan(target: StoredResource, actual: unknown): Plan;
  diff(target: StoredResource, actual: unknown): FieldDiff[];
  apply(target: StoredResource, actions: Action[]): Promise<void>;
  record(pass: PassRecord): Promise<RecordResult>;
  /** A store write failed (lock timeout, full disk): reported, never a reconcile failure. */
  writeFailed(key: ObjectKey, err: unknown): void;
  /** Puts the key on the work queue again (a delay ran out). */
  requeue(key: ObjectKey): void;
  /** Exponential backoff with jitter after `failures` failures. */
  backoff(failures: number): number;
}

export interface ResourceContext {
  key: ObjectKey;
  steps: ResourceSteps;
  /** The record as last read from the store. */
  resource: StoredResource;
  /** The record the current (or last) pass acts on. */
  target: StoredResource;
  /** Generation of the last pass that found the host in sync (Ready or Drifted): later differences are drift. */
  syncedGeneration: number;
  /** The phase the last pass recorded, and for which generation (dependants read these). */
  phase: Phase;
  observedGeneration: number;
  actual: unknown;
  plan: Plan;
  applied: Action[];
  drifted: boolean;
  diffs: FieldDiff[];
  end?: PassEnd;
  endChanged: boolean;
  failures: number;
  retryAfterMs: number;
  blockers: ObjectKey[];
  startedAt: number;
  /** Passes started: tells the engine whether a RECONCILE started one. */
  passes: number;
  /** The rest state the machine was last in (for transitions). */
  rest: string;
  transitions: Transition[];
  driftMayBeOpen: boolean;
}

export type ResourceEvent = { type: 'RECONCILE' } | { type: 'UPDATE'; resource: StoredResource };

export interface ResourceInput {
  key: ObjectKey;
  steps: ResourceSteps;
  resource: StoredResource;
  /** From the stored status, so a restart keeps what was known. */
  phase: Phase;
  observedGeneration: number;
  transitions: Transition[];
}

/** The rest state each outcome leads to. */
const REST_OF: Record<PassEnd['phase'], string> = {
  Pending: 'waitingForDependencies',
  Ready: 'ready',
  Waiting: 'waiting',
  Stalled: 'stalled',
  Failed: 'backoff',
  Drifted: 'drifted',
  Suspended: 'suspended',
  Deleted: 'deleted',
};

const firstLine = (err: unknown) => (err instanceof Error ? err.message : String(err)).split('\n')[0]!;

/** The step that knows why sets the reason: an OutcomeError's own, else ReconcileFailed. */
export function endOfError(err: unknown): PassEnd {
  if (err instanceof OutcomeError) return endOf(err.outcome);
  return { phase: 'Failed', reason: 'ReconcileFailed', message: firstLine(err) };
}

function endOf(o: Hold | OutcomeError['outcome']): PassEnd {
  return o.type === 'Waiting' ? { phase: 'Waiting', reason: o.reason, message: o.message, afterMs: o.afterMs } : { phase: o.type, reason: o.reason, message: o.message };
}

const READY: PassEnd = { phase: 'Ready', reason: 'ReconciliationSucceeded', message: '' };

/** The context changes that end a pass with `end` (before it is recorded). */
function finish(context: ResourceContext, end: PassEnd): Partial<ResourceContext> {
  const to = REST_OF[end.phase];
  const failures = end.phase === 'Failed' ? context.failures + 1 : end.phase === 'Ready' ? 0 : context.failures;
  if (end.phase === 'Failed') end = { ...end, afterMs: context.steps.backoff(context.failures) };
  const last = context.transitions.at(-1);
  const endChanged = to !== context.rest || last?.reason !== end.reason;
  const transitions = endChanged
    ? [...context.transitions, { at: new Date().toISOString(), from: context.rest, to, reason: end.reason }].slice(-TRANSITIONS_KEPT)
    : context.transitions;
  return {
    end,
    endChanged,
    failures,
    retryAfterMs: end.afterMs ?? 0,
    transitions,
    rest: to,
    phase: end.phase,
    observedGeneration: context.target.generation,
    syncedGeneration: end.phase === 'Ready' || end.phase === 'Drifted' ? context.target.generation : context.syncedGeneration,
  };
}

const isDeleting = (r: StoredResource) => Boolean(r.deletionRequestedAt);

export const resourceMachine = setup({
  types: {
    context: {} as ResourceContext,
    events: {} as ResourceEvent,
    input: {} as ResourceInput,
  },
  actors: {
    blockers: fromPromise<ObjectKey[], { steps: ResourceSteps; target: StoredResource }>(async ({ input }) => input.steps.blockers(input.target)),
    observe: fromPromise<unknown, { steps: ResourceSteps; target: StoredResource }>(({ input }) => input.steps.observe(input.target)),
    plan: fromPromise<Plan, { steps: ResourceSteps; target: StoredResource; actual: unknown }>(async ({ input }) => input.steps.plan(input.target, input.actual)),
    diff: fromPromise<FieldDiff[], { steps: ResourceSteps; target: StoredResource; actual: unknown }>(async ({ input }) => input.steps.diff(input.target, input.actual)),
    apply: fromPromise<void, { steps: ResourceSteps; target: StoredResource; actions: Action[] }>(({ input }) => input.steps.apply(input.target, input.actions)),
    record: fromPromise<RecordResult, { steps: ResourceSteps; pass: PassRecord }>(({ input }) => input.steps.record(input.pass)),
  },
  delays: {
    retryDelay: ({ context }) => context.retryAfterMs,
  },
  guards: {
    tombstoned: ({ context }) => isDeleting(context.target),
    suspendedAtStart: ({ context }) => Boolean(context.target.suspended),
    /** A suspend (or a delete) that arrived while the pass observed: apply nothing more. */
    suspendedNow: ({ context }) => Boolean(context.resource.suspended) && !isDeleting(context.target),
    holdsOnly: ({ context }) => context.plan.actions.length === 0 && context.plan.hold !== undefined,
    nothingToDo: ({ context }) => context.plan.actions.length === 0,
    holds: ({ context }) => context.plan.hold !== undefined,
    wasInSync: ({ context }) => context.syncedGeneration === context.target.generation,
    warnOnly: ({ context }) => 'driftPolicy' in context.target.spec && context.target.spec.driftPolicy === 'warn',
    deletedEnd: ({ context }) => context.end?.phase === 'Deleted',
  },
  actions: {
    startPass: assign(({ context }) => ({
      target: context.resource,
      startedAt: Date.now(),
      actual: undefined,
      plan: { actions: [] },
      applied: [],
      drifted: false,
      diffs: [],
      blockers: [],
      passes: context.passes + 1,
    })),
    requeue: ({ context }) => context.steps.requeue(context.key),
    writeFailed: ({ context, event }) => context.steps.writeFailed(context.key, 'error' in event ? event.error : event),
    endReady: assign(({ context }) => finish(context, READY)),
    endHold: assign(({ context }) => finish(context, endOf(context.plan.hold!))),
    endSuspended: assign(({ context }) => finish(context, { phase: 'Suspended', reason: 'Suspended', message: 'suspended: not reconciled until resumed' })),
    endDrifted: assign(({ context }) =>
      finish(context, {
        phase: 'Drifted',
        reason: 'DriftDetected',
        message: `host differs (${context.diffs.map((d) => d.field).join(', ') || 'unknown fields'}); driftPolicy warn: not healed`,
      }),
    ),
    endNotConverged: assign(({ context }) =>
      finish(context, { phase: 'Failed', reason: 'NotConverged', message: `host did not converge: still to do: ${context.plan.actions.map((a) => a.describe).join('; ')}` }),
    ),
    endDeleted: assign(({ context }) => finish(context, { phase: 'Deleted', reason: 'Deleted', message: 'deleted' })),
    endError: assign(({ context, event }) => finish(context, endOfError('error' in event ? event.error : event))),
    keepApplied: assign(({ context }) => ({ applied: [...context.applied, ...context.plan.actions] })),
  },
}).createMachine({
  id: 'resource',
  context: ({ input }) => ({
    key: input.key,
    steps: input.steps,
    resource: input.resource,
    target: input.resource,
    syncedGeneration: (input.phase === 'Ready' || input.phase === 'Drifted') && input.observedGeneration === input.resource.generation ? input.resource.generation : 0,
    phase: input.phase,
    observedGeneration: input.observedGeneration,
    actual: undefined,
    plan: { actions: [] },
    applied: [],
    drifted: false,
    diffs: [],
    endChanged: false,
    failures: 0,
    retryAfterMs: 0,
    blockers: [],
    startedAt: 0,
    passes: 0,
    rest: 'pending',
    transitions: input.transitions.slice(-TRANSITIONS_KEPT),
    // Records from before a restart may be open: the first pass in sync closes them.
    driftMayBeOpen: true,
  }),
  initial: 'pending',
  // The record as stored now. A pass acts on the record it started with (`target`); the next pass,
  // which the engine queues for every change, acts on this one: a tombstone gone means no deletion.
  on: { UPDATE: { actions: assign({ resource: ({ event }) => event.resource }) } },
  states: {
    pending: { on: { RECONCILE: 'starting' } },
    starting: {
      tags: ['pass'],
      entry: 'startPass',
      always: [
        { guard: 'tombstoned', target: 'deleting' },
        { guard: 'suspendedAtStart', target: 'recording', actions: 'endSuspended' },
        { target: 'checkingDependencies' },
      ],
    },
    checkingDependencies: {
      tags: ['pass', 'host'],
      invoke: {
        src: 'blockers',
        input: ({ context }) => ({ steps: context.steps, target: context.target }),
        onDone: [
          { guard: ({ event }) => event.output.length === 0, target: 'observing' },
          {
            target: 'recording',
            actions: assign(({ context, event }) => ({
              blockers: event.output,
              ...finish(context, { phase: 'Pending', reason: 'DependencyNotReady', message: `waiting for ${event.output.join(', ')} to be ready` }),
            })),
          },
        ],
        onError: { target: 'recording', actions: 'endError' },
      },
    },
    observing: {
      tags: ['pass', 'host'],
      invoke: {
        src: 'observe',
        input: ({ context }) => ({ steps: context.steps, target: context.target }),
        onDone: { target: 'planning', actions: assign({ actual: ({ event }) => event.output }) },
        onError: { target: 'recording', actions: 'endError' },
      },
    },
    planning: {
      tags: ['pass', 'host'],
      invoke: {
        src: 'plan',
        input: ({ context }) => ({ steps: context.steps, target: context.target, actual: context.actual }),
        onDone: { target: 'deciding', actions: assign({ plan: ({ event }) => event.output }) },
        onError: { target: 'recording', actions: 'endError' },
      },
    },
    deciding: {
      tags: ['pass', 'host'],
      always: [
        { guard: 'suspendedNow', target: 'recording', actions: 'endSuspended' },
        { guard: 'holdsOnly', target: 'recording', actions: 'endHold' },
        { guard: 'nothingToDo', target: 'recording', actions: 'endReady' },
        { guard: 'wasInSync', target: 'diffing' },
        { target: 'applying' },
      ],
    },
    diffing: {
      tags: ['pass', 'host'],
      invoke: {
        src: 'diff',
        input: ({ context }) => ({ steps: context.steps, target: context.target, actual: context.actual }),
        onDone: { target: 'healOrWarn', actions: assign({ diffs: ({ event }) => event.output, drifted: true, driftMayBeOpen: true }) },
        // Drift without its field list is still drift: heal (or warn) it.
        onError: { target: 'healOrWarn', actions: ['writeFailed', assign({ drifted: true })] },
      },
    },
    healOrWarn: {
      tags: ['pass', 'host'],
      always: [{ guard: 'warnOnly', target: 'recording', actions: 'endDrifted' }, { target: 'applying' }],
    },
    applying: {
      tags: ['pass', 'host'],
      invoke: {
        src: 'apply',
        input: ({ context }) => ({ steps: context.steps, target: context.target, actions: context.plan.actions }),
        // Actions applied beside a hold (a crash recorded while the restart waits) end with the hold.
        onDone: [
          { guard: 'holds', target: 'recording', actions: ['keepApplied', 'endHold'] },
          { target: 'verifying', actions: 'keepApplied' },
        ],
        onError: { target: 'recording', actions: 'endError' },
      },
    },
    verifying: {
      tags: ['pass', 'host'],
      invoke: {
        src: 'observe',
        input: ({ context }) => ({ steps: context.steps, target: context.target }),
        onDone: { target: 'verifyPlanning', actions: assign({ actual: ({ event }) => event.output }) },
        onError: { target: 'recording', actions: 'endError' },
      },
    },
    verifyPlanning: {
      tags: ['pass', 'host'],
      invoke: {
        src: 'plan',
        input: ({ context }) => ({ steps: context.steps, target: context.target, actual: context.actual }),
        onDone: [
          { guard: ({ event }) => event.output.hold !== undefined, target: 'recording', actions: [assign({ plan: ({ event }) => event.output }), 'endHold'] },
          { guard: ({ event }) => event.output.actions.length === 0, target: 'recording', actions: 'endReady' },
          { target: 'recording', actions: [assign({ plan: ({ event }) => event.output }), 'endNotConverged'] },
        ],
        onError: { target: 'recording', actions: 'endError' },
      },
    },
    deleting: {
      tags: ['pass', 'host'],
      initial: 'checkingDependants',
      states: {
        checkingDependants: {
          invoke: {
            src: 'blockers',
            input: ({ context }) => ({ steps: context.steps, target: context.target }),
            onDone: [
              { guard: ({ event }) => event.output.length === 0, target: 'observing' },
              {
                target: '#resource.recording',
                actions: assign(({ context, event }) => ({
                  blockers: event.output,
                  ...finish(context, { phase: 'Pending', reason: 'DependencyNotReady', message: `waiting for ${event.output.join(', ')} to be deleted first` }),
                })),
              },
            ],
            onError: { target: '#resource.recording', actions: 'endError' },
          },
        },
        observing: {
          invoke: {
            src: 'observe',
            input: ({ context }) => ({ steps: context.steps, target: context.target }),
            onDone: { target: 'planning', actions: assign({ actual: ({ event }) => event.output }) },
            onError: { target: '#resource.recording', actions: 'endError' },
          },
        },
        planning: {
          invoke: {
            src: 'plan',
            input: ({ context }) => ({ steps: context.steps, target: context.target, actual: context.actual }),
            onDone: { target: 'deciding', actions: assign({ plan: ({ event }) => event.output }) },
            onError: { target: '#resource.recording', actions: 'endError' },
          },
        },
        deciding: {
          always: [
            { guard: 'holdsOnly', target: '#resource.recording', actions: 'endHold' },
            { guard: 'nothingToDo', target: '#resource.recording', actions: 'endDeleted' },
            { target: 'applying' },
          ],
        },
        applying: {
          invoke: {
            src: 'apply',
            input: ({ context }) => ({ steps: context.steps, target: context.target, actions: context.plan.actions }),
            onDone: [
              { guard: 'holds', target: '#resource.recording', actions: ['keepApplied', 'endHold'] },
              { target: 'verifying', actions: 'keepApplied' },
            ],
            onError: { target: '#resource.recording', actions: 'endError' },
          },
        },
        verifying: {
          invoke: {
            src: 'observe',
            input: ({ context }) => ({ steps: context.steps, target: context.target }),
            onDone: { target: 'verifyPlanning', actions: assign({ actual: ({ event }) => event.output }) },
            onError: { target: '#resource.recording', actions: 'endError' },
          },
        },
        verifyPlanning: {
          invoke: {
            src: 'plan',
            input: ({ context }) => ({ steps: context.steps, target: context.target, actual: context.actual }),
            onDone: [
              { guard: ({ event }) => event.output.hold !== undefined, target: '#resource.recording', actions: [assign({ plan: ({ event }) => event.output }), 'endHold'] },
              { guard: ({ event }) => event.output.actions.length === 0, target: '#resource.recording', actions: 'endDeleted' },
              { target: '#resource.recording', actions: [assign({ plan: ({ event }) => event.output }), 'endNotConverged'] },
            ],
            onError: { target: '#resource.recording', actions: 'endError' },
          },
        },
      },
    },
    recording: {
      tags: ['pass'],
      invoke: {
        src: 'record',
        input: ({ context }) => ({
          steps: context.steps,
          pass: {
            key: context.key,
            target: context.target,
            end: context.end!,
            endChanged: context.endChanged,
            applied: context.applied,
            drifted: context.drifted,
            diffs: context.diffs,
            actual: context.actual,
            driftMayBeOpen: context.driftMayBeOpen,
            failures: context.failures,
            machine: { state: context.rest, appliedAt: context.target.appliedAt, transitions: context.transitions },
          },
        }),
        onDone: [
          // The record was applied again while it was being deleted: it stays, and is reconciled anew.
          { guard: ({ event }) => event.output.removed === false, target: 'pending', actions: [assign({ rest: 'pending', phase: 'Pending' }), 'requeue'] },
          { guard: 'deletedEnd', target: 'deleted' },
          { target: 'routing', actions: assign({ driftMayBeOpen: ({ context, event }) => context.driftMayBeOpen && !event.output.driftClosed }) },
        ],
        // A failed write is reported, never the resource's failure; a deletion not written is retried.
        onError: [
          {
            guard: 'deletedEnd',
            target: 'backoff',
            actions: ['writeFailed', assign(({ context }) => ({ rest: 'backoff', phase: 'Failed' as const, retryAfterMs: context.steps.backoff(context.failures), failures: context.failures + 1 }))],
          },
          { target: 'routing', actions: 'writeFailed' },
        ],
      },
    },
    routing: {
      tags: ['pass'],
      always: [
        { guard: ({ context }) => context.end?.phase === 'Ready', target: 'ready' },
        { guard: ({ context }) => context.end?.phase === 'Drifted', target: 'drifted' },
        { guard: ({ context }) => context.end?.phase === 'Waiting', target: 'waiting' },
        { guard: ({ context }) => context.end?.phase === 'Failed', target: 'backoff' },
        { guard: ({ context }) => context.end?.phase === 'Stalled', target: 'stalled' },
        { guard: ({ context }) => context.end?.phase === 'Pending', target: 'waitingForDependencies' },
        { target: 'suspended' },
      ],
    },
    ready: { on: { RECONCILE: 'starting' } },
    drifted: { on: { RECONCILE: 'starting' } },
    waiting: { after: { retryDelay: { actions: 'requeue' } }, on: { RECONCILE: 'starting' } },
    backoff: { after: { retryDelay: { actions: 'requeue' } }, on: { RECONCILE: 'starting' } },
    stalled: { on: { RECONCILE: 'starting' } },
    waitingForDependencies: { on: { RECONCILE: 'starting' } },
    suspended: { on: { RECONCILE: 'starting' } },
    deleted: { type: 'final' },
  },
});

export type ResourceActor = import('xstate').Actor<typeof resourceMachine>;

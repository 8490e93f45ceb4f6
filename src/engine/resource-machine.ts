// One XState machine per resource: the life of a resource as the engine reconciles it.
//
//   pending ─RECONCILE─► observing ─► planning ─(empty plan)──────────────► ready
//                                       │  └─(drift, driftPolicy warn)────► drifted
//                                       └─► applying ─► verifying ─(in sync)► ready
//   any step failing ─► failed ─► backoff (retried by the queue) | stalled (retrying cannot fix it)
//   SUSPEND ─► suspended ─RESUME─► pending (the queue starts the next pass);
//   DELETE: the same path with nothing desired, ending in deleted.
import { assign, fromPromise, setup } from 'xstate';
import type { Action } from './contract.ts';

/** What the machine needs from the engine for one resource. */
export interface ReconcileSteps {
  /** The host as it is now, for this resource (batched with other resources by the engine). */
  observe(): Promise<unknown>;
  /** Pure: the actions that would make the host equal to the declaration (or remove it, when deleting). */
  plan(actual: unknown, deleting: boolean): Action[];
  apply(actions: Action[]): Promise<void>;
  /** Called when the host differs from a resource that was in sync at this generation. */
  onDrift(actual: unknown, plan: Action[], healing: boolean): void;
}

export interface ResourceContext {
  key: string;
  steps: ReconcileSteps;
  generation: number;
  /** Generation of the last pass that ended in sync. */
  syncedGeneration: number;
  driftPolicy: 'heal' | 'warn';
  deleting: boolean;
  actual: unknown;
  plan: Action[];
  /** Actions applied in the current pass (for events and apply's output). */
  applied: Action[];
  error?: { message: string; terminal: boolean };
  /** Set when this pass found drift on a resource that was in sync. */
  drifted: boolean;
}

export type ResourceEvent =
  | { type: 'RECONCILE' }
  | { type: 'SPEC'; generation: number; driftPolicy: 'heal' | 'warn' }
  | { type: 'SUSPEND' }
  | { type: 'RESUME' }
  | { type: 'DELETE' };

export interface ResourceInput {
  key: string;
  steps: ReconcileSteps;
  generation: number;
  /** Generation last known to be in sync (from the stored status), 0 if none. */
  syncedGeneration: number;
  driftPolicy: 'heal' | 'warn';
  suspended: boolean;
}

/** An error retrying cannot fix: the resource stalls until its spec changes or it is reconciled by hand. */
export class TerminalError extends Error {
  override name = 'TerminalError';
}

const errorOf = (err: unknown) => ({
  message: err instanceof Error ? err.message.split('\n')[0]! : String(err),
  terminal: err instanceof TerminalError,
});

export const resourceMachine = setup({
  types: {
    context: {} as ResourceContext,
    events: {} as ResourceEvent,
    input: {} as ResourceInput,
  },
  actors: {
    observe: fromPromise<unknown, { steps: ReconcileSteps }>(({ input }) => input.steps.observe()),
    apply: fromPromise<void, { steps: ReconcileSteps; actions: Action[] }>(({ input }) => input.steps.apply(input.actions)),
  },
  guards: {
    inSync: ({ context }) => context.plan.length === 0,
    isBlocked: ({ context }) => context.plan.some((a) => a.type === 'blocked'),
    isDrift: ({ context }) => !context.deleting && context.syncedGeneration === context.generation,
    warnOnly: ({ context }) => context.driftPolicy === 'warn',
    terminal: ({ context }) => context.error?.terminal === true,
    deleting: ({ context }) => context.deleting,
  },
  actions: {
    computePlan: assign({ plan: ({ context }) => context.steps.plan(context.actual, context.deleting) }),
    takeBlockedError: assign({
      error: ({ context }) => {
        const b = context.plan.filter((a) => a.type === 'blocked') as (Action & { terminal?: boolean })[];
        return { message: b.map((a) => a.describe).join('; '), terminal: b.some((a) => a.terminal) };
      },
    }),
    startPass: assign({ applied: () => [], drifted: () => false, error: () => undefined }),
    markSynced: assign({ syncedGeneration: ({ context }) => context.generation, error: () => undefined }),
    reportDrift: assign({
      drifted: ({ context }) => {
        context.steps.onDrift(context.actual, context.plan, context.driftPolicy === 'heal');
        return true;
      },
    }),
    takeSpec: assign({
      generation: ({ event }) => (event.type === 'SPEC' ? event.generation : 0),
      driftPolicy: ({ event, context }) => (event.type === 'SPEC' ? event.driftPolicy : context.driftPolicy),
    }),
  },
}).createMachine({
  id: 'resource',
  context: ({ input }) => ({
    key: input.key,
    steps: input.steps,
    generation: input.generation,
    syncedGeneration: input.syncedGeneration,
    driftPolicy: input.driftPolicy,
    deleting: false,
    actual: undefined,
    plan: [],
    applied: [],
    drifted: false,
  }),
  initial: 'pending',
  on: {
    SPEC: { actions: 'takeSpec' },
    DELETE: { target: '.observing', actions: [assign({ deleting: true }), 'startPass'] },
  },
  states: {
    pending: {
      on: {
        RECONCILE: { target: 'observing', actions: 'startPass' },
        SUSPEND: 'suspended',
      },
    },
    observing: {
      invoke: {
        src: 'observe',
        input: ({ context }) => ({ steps: context.steps }),
        onDone: { target: 'planning', actions: assign({ actual: ({ event }) => event.output }) },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => errorOf(event.error) }) },
      },
    },
    planning: {
      entry: 'computePlan',
      always: [
        { guard: 'inSync', target: 'settled' },
        { guard: 'isBlocked', target: 'failed', actions: 'takeBlockedError' },
        { guard: 'isDrift', actions: 'reportDrift', target: 'checkDriftPolicy' },
        { target: 'applying' },
      ],
    },
    checkDriftPolicy: {
      always: [{ guard: 'warnOnly', target: 'drifted' }, { target: 'applying' }],
    },
    applying: {
      invoke: {
        src: 'apply',
        input: ({ context }) => ({ steps: context.steps, actions: context.plan }),
        onDone: { target: 'verifying', actions: assign({ applied: ({ context }) => [...context.applied, ...context.plan] }) },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => errorOf(event.error) }) },
      },
    },
    verifying: {
      invoke: {
        src: 'observe',
        input: ({ context }) => ({ steps: context.steps }),
        onDone: {
          target: 'checkVerified',
          actions: [assign({ actual: ({ event }) => event.output }), 'computePlan'],
        },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => errorOf(event.error) }) },
      },
    },
    checkVerified: {
      always: [
        { guard: 'inSync', target: 'settled' },
        {
          target: 'failed',
          actions: assign({
            error: ({ context }) => ({ message: `host did not converge: still to do: ${context.plan.map((a) => a.describe).join('; ')}`, terminal: false }),
          }),
        },
      ],
    },
    settled: {
      always: [{ guard: 'deleting', target: 'deleted' }, { target: 'ready', actions: 'markSynced' }],
    },
    ready: {
      on: { RECONCILE: { target: 'observing', actions: 'startPass' }, SUSPEND: 'suspended' },
    },
    drifted: {
      on: { RECONCILE: { target: 'observing', actions: 'startPass' }, SUSPEND: 'suspended' },
    },
    failed: {
      always: [{ guard: 'terminal', target: 'stalled' }, { target: 'backoff' }],
    },
    backoff: {
      on: { RECONCILE: { target: 'observing', actions: 'startPass' }, SUSPEND: 'suspended' },
    },
    stalled: {
      on: {
        RECONCILE: { target: 'observing', actions: 'startPass' },
        SPEC: { target: 'pending', actions: 'takeSpec' },
        SUSPEND: 'suspended',
      },
    },
    suspended: {
      // RESUME used to start a pass right here, outside the work queue: past the concurrency limit, and
      // when it ended before the queued RECONCILE arrived its outcome (DriftHealed event, healed drift
      // records, status) was never written, as the engine records only passes it started. Like a spec
      // change out of stalled, resuming only makes the resource ready for the queue's next pass.
      on: { RESUME: 'pending', RECONCILE: {} },
    },
    deleted: { type: 'final' },
  },
});

/** States in which a reconcile pass has ended. */
export const SETTLED_STATES = ['ready', 'drifted', 'backoff', 'stalled', 'suspended', 'deleted', 'pending'] as const;
export type SettledState = (typeof SETTLED_STATES)[number];

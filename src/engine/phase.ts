// The phase of a resource: what its last reconcile pass ended with. Written to status.phase by the
// engine and read by the CLI (get, describe, reconcile-now), so both speak of the same few words.
export type Phase =
  | 'Pending' // not reconciled yet, or waiting for its dependencies
  | 'Ready' // the host equals the declaration
  | 'Waiting' // something must happen first; looked at again after a delay the controller chose
  | 'Stalled' // retrying cannot help until the spec changes
  | 'Failed' // retried with exponential backoff
  | 'Drifted' // the host differs and driftPolicy is warn
  | 'Suspended' // not reconciled until resumed
  | 'Deleting' // being removed from the host
  | 'Deleted'; // gone from the host and the store (a pass result only: no status is left to hold it)

export const PHASES: readonly Phase[] = ['Pending', 'Ready', 'Waiting', 'Stalled', 'Failed', 'Drifted', 'Suspended', 'Deleting', 'Deleted'];

/** Phases that another pass would not change by itself: what `--wait` waits for. */
export const CONVERGED_PHASES: ReadonlySet<Phase> = new Set<Phase>(['Ready', 'Drifted', 'Stalled', 'Suspended', 'Deleted']);

export function isPhase(value: unknown): value is Phase {
  return typeof value === 'string' && (PHASES as readonly string[]).includes(value);
}

// The contract every controller (one per kind) follows: observe the host in one batch, plan purely,
// apply the plan, observe again. An empty plan means the resource is in sync.

/** One small, typed host change. `describe` is what `diff` and events print. */
export interface Action {
  /** Machine-readable verb, e.g. 'create-netns'. */
  type: string;
  /** The resource this action serves, e.g. 'Route/browser'. */
  resource: string;
  /** One human line, e.g. 'create netns qw-browser'. */
  describe: string;
}

/** A difference between what a resource declares and what the host has. */
export interface FieldDiff {
  field: string;
  desired: string;
  actual: string;
}

export interface Controller<Desired, Actual, A extends Action = Action> {
  kind: string;
  /** One batched look at the host for all resources of this kind (not a process per resource). */
  observe(desired: Desired[]): Promise<Map<string, Actual>>;
  /** Pure: desired (undefined = delete) and actual (undefined = absent) to ordered actions. */
  plan(desired: Desired | undefined, actual: Actual | undefined): A[];
  /** Field-level differences, for drift records. Pure. */
  diff(desired: Desired, actual: Actual | undefined): FieldDiff[];
  /** Carries out actions, batching host calls where it pays. */
  apply(actions: A[]): Promise<void>;
}

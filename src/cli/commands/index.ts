// Every CLI command, in the order `qwamos --help` lists them. Each command file is loaded only when that
// command runs, so `qwamos get` never loads QEMU, ML-DSA or XState code; the summaries serve `--help`.
import type { CliCommand } from '../command.ts';

export interface CommandEntry {
  /** The command word, as typed. */
  word: string;
  /** One line for `qwamos --help`. */
  summary: string;
  load(): Promise<CliCommand>;
}

export const commands: CommandEntry[] = [
  { word: 'apply', summary: 'apply signed manifests and reconcile the host to them', load: async () => (await import('./apply.ts')).applyCommand },
  { word: 'diff', summary: 'show what apply would change in the store and on the host', load: async () => (await import('./diff.ts')).diffCommand },
  { word: 'delete', summary: 'delete resources (KIND/NAME or -f FILE|DIR) from the host, then from the store', load: async () => (await import('./delete.ts')).deleteCommand },
  { word: 'get', summary: 'list resources and their status', load: async () => (await import('./get.ts')).getCommand },
  { word: 'describe', summary: "show one resource: spec, status, conditions, machine state, events, drift", load: async () => (await import('./describe.ts')).describeCommand },
  { word: 'drift', summary: 'list drift: where the host differed from the declared state', load: async () => (await import('./drift.ts')).driftCommand },
  { word: 'reconcile', summary: 'reconcile now: observe the host and heal what differs', load: async () => (await import('./reconcile.ts')).reconcileCommand },
  { word: 'notify', summary: 'ask the running controller to fetch a git source now', load: async () => (await import('./notify.ts')).notifyCommand },
  { word: 'suspend', summary: 'stop reconciling resources; the host stays as it is', load: async () => (await import('./suspend.ts')).suspendCommand },
  { word: 'resume', summary: 'reconcile suspended resources again', load: async () => (await import('./suspend.ts')).resumeCommand },
  { word: 'validate', summary: 'check manifests: signatures, YAML, schema and cross-references', load: async () => (await import('./validate.ts')).validateCommand },
  { word: 'keygen', summary: 'generate a manifest signing key pair (ML-DSA)', load: async () => (await import('./keygen.ts')).keygenCommand },
  { word: 'sign', summary: 'sign files (or a directory index) with an ML-DSA secret key', load: async () => (await import('./sign.ts')).signCommand },
  { word: 'verify', summary: 'verify the signatures of files against the trusted public keys', load: async () => (await import('./verify.ts')).verifyCommand },
  { word: 'controller', summary: 'run the controller daemon', load: async () => (await import('./controller.ts')).controllerCommand },
  { word: 'drain', summary: 'move the VMs off a cluster node and place nothing new there (--undo to allow it again)', load: async () => (await import('./drain.ts')).drainCommand },
  { word: 'fencer', summary: "run beside a cluster node's controller: kill its VMs once it may no longer hold them", load: async () => (await import('./fencer.ts')).fencerCommand },
];

// The one place host drivers start processes. A small typed wrapper around execa: optional network
// namespace (`ip netns exec NS ...`), optional stdin, stdout back as a string, failures as an Error with a
// one-line message (the command and the first line of its stderr). Every spawn is counted so a bench can
// report how many processes a pass cost.
import { execa, ExecaError } from 'execa';

export interface RunOptions {
  /** Run the command inside this named network namespace (`ip netns exec NS cmd...`). */
  netns?: string;
  /** Written to the command's stdin. */
  input?: string;
  /** Give up after this many milliseconds (default 30 s). */
  timeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

let spawned = 0;

/** Processes started by this module since load (benches and tests count a step's cost by difference). */
export function processesSpawned(): number {
  return spawned;
}

/** Raised when a command fails; `message` is one line, `stderr` and `exitCode` are kept for callers. */
export class CommandError extends Error {
  override name = 'CommandError';
  constructor(
    message: string,
    readonly command: string[],
    readonly exitCode: number | undefined,
    readonly stderr: string,
    readonly stdout: string,
  ) {
    super(message);
  }
}

function fullArgv(argv: readonly string[], netns: string | undefined): string[] {
  if (argv.length === 0) throw new Error('run: empty command');
  return netns ? ['ip', 'netns', 'exec', netns, ...argv] : [...argv];
}

/** The first non-blank line of a command's output, trimmed. */
export function firstLine(text: string): string {
  return (
    text
      .split('\n')
      .map((l) => l.trim())
      .find((l) => l.length > 0) ?? ''
  );
}

/** Run a command, return everything; never throws for a non-zero exit (only when it cannot start). */
export async function runResult(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const full = fullArgv(argv, opts.netns);
  spawned++;
  try {
    const r = await execa(full[0]!, full.slice(1), {
      input: opts.input ?? '',
      reject: false,
      timeout: opts.timeoutMs ?? 30_000,
      stripFinalNewline: false,
      env: { LC_ALL: 'C' },
      extendEnv: true,
    });
    if (r.failed && r.exitCode === undefined) {
      // Did not start, or was killed (timeout, signal).
      const why = r.timedOut ? 'timed out' : r.signal ? `killed by ${r.signal}` : firstLine(r.shortMessage ?? r.message ?? 'failed');
      throw new CommandError(`${shortCommand(full)}: ${why}`, full, undefined, String(r.stderr ?? ''), String(r.stdout ?? ''));
    }
    return { stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), exitCode: r.exitCode ?? 0 };
  } catch (err) {
    if (err instanceof CommandError) throw err;
    const msg = err instanceof ExecaError ? err.shortMessage : err instanceof Error ? err.message : String(err);
    throw new CommandError(`${full.join(' ')}: ${firstLine(msg)}`, full, undefined, '', '');
  }
}

/** Run a command and return its stdout; a non-zero exit throws a CommandError with a one-line message. */
export async function run(argv: readonly string[], opts: RunOptions = {}): Promise<string> {
  const r = await runResult(argv, opts);
  if (r.exitCode !== 0) {
    const full = fullArgv(argv, opts.netns);
    const why = firstLine(r.stderr) || `exit code ${r.exitCode}`;
    throw new CommandError(`${shortCommand(full)}: ${why}`, full, r.exitCode, r.stderr, r.stdout);
  }
  return r.stdout;
}

/** The command for messages: long scripts (sh -c) are cut so the message stays one short line. */
function shortCommand(full: string[]): string {
  const text = full.map((a) => (/[\s"']/.test(a) ? JSON.stringify(a) : a)).join(' ');
  const one = text.replace(/\n/g, '\\n');
  return one.length > 160 ? `${one.slice(0, 157)}...` : one;
}

// The one place host drivers start processes. A small typed wrapper around node's spawn: optional network
// namespace (`ip netns exec NS ...`), optional stdin, stdout back as a string, failures as an Error with a
// one-line message (the command and the first line of its stderr). Every spawn is counted so a bench can
// report how many processes a pass cost. (Not execa: it costs ~15 MB of resident memory in the daemon
// and copies the whole environment on every call, which showed in profiles of a thousand resources.)
import { spawn } from 'node:child_process';

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

/** The environment of every command: ours, with the C locale so output parses the same everywhere. */
let commandEnv: NodeJS.ProcessEnv | undefined;

/** After a timeout's SIGTERM, SIGKILL if the command is still there this much later. */
const FORCE_KILL_MS = 5_000;

/** Run a command, return everything; never throws for a non-zero exit (only when it cannot start). */
export async function runResult(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const full = fullArgv(argv, opts.netns);
  spawned++;
  commandEnv ??= { ...process.env, LC_ALL: 'C' };
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise<RunResult>((resolve, reject) => {
    let child;
    try {
      child = spawn(full[0]!, full.slice(1), { env: commandEnv, stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (err) {
      reject(new CommandError(`${full.join(' ')}: ${firstLine(err instanceof Error ? err.message : String(err))}`, full, undefined, '', ''));
      return;
    }
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    let forceKill: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      forceKill = setTimeout(() => child.kill('SIGKILL'), FORCE_KILL_MS);
      forceKill.unref();
    }, timeoutMs);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    // A command that exits without reading its input closes the pipe: not an error of ours.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
    let failedToStart: Error | undefined;
    child.on('error', (e) => (failedToStart = e));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(forceKill);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (failedToStart) {
        reject(new CommandError(`${shortCommand(full)}: ${firstLine(failedToStart.message)}`, full, undefined, stderr, stdout));
      } else if (code === null) {
        // Killed (timeout, signal).
        const why = timedOut ? `timed out after ${timeoutMs} ms` : `killed by ${signal ?? 'a signal'}`;
        reject(new CommandError(`${shortCommand(full)}: ${why}`, full, undefined, stderr, stdout));
      } else {
        resolve({ stdout, stderr, exitCode: code });
      }
    });
  });
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

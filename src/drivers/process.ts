// Supervised background processes for gateways (tor, i2pd): started inside a named netns, detached, with
// a pid file so a restarted controller finds them again, identified by PID plus its command line (a
// recycled PID is not taken for ours), stopped by PID only. Health is left to the caller (sockets).
import { processAlive } from '../proc.ts';
import { spawn } from 'node:child_process';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from './exec.ts';

export interface ProcessSpec {
  /** Run inside this netns (`ip netns exec NS`, which execs: the PID is the program's own); undefined = this one. */
  netns?: string;
  argv: string[];
  pidFile: string;
  /** stdout and stderr are appended here. */
  logFile: string;
  /** A string the process' command line must contain to be recognised as ours (e.g. its config path). */
  marker: string;
}

export interface Listener {
  proto: 'tcp' | 'udp';
  address: string;
  port: number;
}

// A killed gateway its parent has not reaped yet is dead: restart it, never wait on it.
const alive = (pid: number): boolean => processAlive(pid);

async function cmdline(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').join(' ');
}

/** The PID in the pid file when that process is alive and is ours (its command line has the marker). */
export async function runningPid(spec: Pick<ProcessSpec, 'pidFile' | 'marker'>): Promise<number | undefined> {
  const pid = Number((await readFile(spec.pidFile, 'utf8').catch(() => '')).trim());
  if (!Number.isInteger(pid) || pid <= 0 || !alive(pid)) return undefined;
  return (await cmdline(pid)).includes(spec.marker) ? pid : undefined;
}

/** Start the process unless ours is already running; returns its PID. */
export async function ensureStarted(spec: ProcessSpec): Promise<number> {
  const existing = await runningPid(spec);
  if (existing) return existing;
  const log = await open(spec.logFile, 'a', 0o600);
  try {
    const argv = spec.netns ? ['ip', 'netns', 'exec', spec.netns, ...spec.argv] : spec.argv;
    const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['ignore', log.fd, log.fd] });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('spawn', () => resolve(child.pid!));
    });
    child.unref();
    await writeFile(spec.pidFile, `${pid}\n`, { mode: 0o600 });
    return pid;
  } finally {
    await log.close();
  }
}

/** Stop ours by PID: SIGTERM, then SIGKILL after `graceMs`. Idempotent. */
export async function stopProcess(spec: Pick<ProcessSpec, 'pidFile' | 'marker'>, graceMs = 5_000): Promise<void> {
  const pid = await runningPid(spec);
  if (pid) {
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + graceMs;
    while (alive(pid) && Date.now() < deadline) await sleep(25);
    if (alive(pid)) process.kill(pid, 'SIGKILL');
    while (alive(pid)) await sleep(10);
  }
  await rm(spec.pidFile, { force: true });
}

/** Listening TCP and bound UDP sockets inside a netns (`ss -ltunH`). */
export async function listeners(netns: string | undefined): Promise<Listener[]> {
  const out = await run(['ss', '-ltunH'], netns ? { netns } : {});
  const result: Listener[] = [];
  for (const line of out.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length < 5) continue;
    const local = cols[4]!;
    const i = local.lastIndexOf(':');
    const address = local.slice(0, i).replace(/^\[|\]$/g, '').replace(/%.*$/, '');
    result.push({ proto: cols[0] === 'udp' ? 'udp' : 'tcp', address, port: Number(local.slice(i + 1)) });
  }
  return result;
}

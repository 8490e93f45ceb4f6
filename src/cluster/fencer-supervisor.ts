// The controller keeps one `qwamos fencer` running for its state dir. The fencer is a separate process in
// its own session (detached): a daemon killed with -9, or frozen, must leave it alive, since fencing such
// a daemon's VMs is its whole job. The fencer records itself in <state>/cluster/fencer.pid (a lock file
// taken with O_EXCL: pid, process start time), so one started by hand is found and adopted, and a second
// one started for the same state dir exits at once. The supervisor checks every second and starts a new
// fencer when none lives.
//
// The fencer is never stopped by the controller: VMs outlive a stopped daemon, and only the fencer kills
// them once the lease they run under passes its deadline. It exits by itself once the lease file is gone
// and no VM process of the state dir remains (see `qwamos fencer`).
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { oneLine } from '../errors.ts';
import { processAlive } from '../proc.ts';
import { ensureDir } from '../store/atomic.ts';
import { liveHolder, type LockHolder } from '../store/lock.ts';

export function fencerPidPath(stateDir: string): string {
  return path.join(stateDir, 'cluster', 'fencer.pid');
}

export function fencerLogPath(stateDir: string): string {
  return path.join(stateDir, 'cluster', 'fencer.log');
}

/** The live fencer of a state dir: the holder of its fencer.pid whose command line is a qwamos fencer. */
export async function liveFencer(stateDir: string): Promise<LockHolder | undefined> {
  const holder = await liveHolder(fencerPidPath(stateDir));
  return holder && isFencerCommandLine(holder.pid) ? holder : undefined;
}

/** Whether /proc says pid runs `… fencer` (a reused pid of another program is not our fencer). */
function isFencerCommandLine(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes('fencer');
  } catch {
    return false;
  }
}

export interface FencerSupervisorOptions {
  stateDir: string;
  /** How to run `qwamos fencer`: program and arguments. */
  command: readonly string[];
  log: (line: string) => void;
  checkMs?: number;
  /** How long a fencer just started may take to record itself before it counts as failed (ms). */
  startGraceMs?: number;
}

export interface FencerSupervisor {
  /** The fencer's pid once one is known. */
  readonly pid: number | undefined;
  /** Resolves to whether a live fencer recorded itself within `timeoutMs`. */
  ready(timeoutMs: number): Promise<boolean>;
  /** Stops supervising; the fencer keeps running. */
  stop(): Promise<void>;
}

export async function superviseFencer(opts: FencerSupervisorOptions): Promise<FencerSupervisor> {
  const checkMs = opts.checkMs ?? 1000;
  const startGraceMs = opts.startGraceMs ?? 20_000;
  await ensureDir(path.dirname(fencerPidPath(opts.stateDir)));
  let known: number | undefined;
  let starting: { child: ChildProcess; at: number } | undefined;
  let running = true;
  let timer: NodeJS.Timeout | undefined;
  let tick: Promise<void> = Promise.resolve();

  const check = async () => {
    const live = await liveFencer(opts.stateDir);
    if (live) {
      if (live.pid !== known) opts.log(starting?.child.pid === live.pid ? `fencer started (pid ${live.pid}), log in ${fencerLogPath(opts.stateDir)}` : `fencer (pid ${live.pid}) already runs for this state dir: adopted`);
      known = live.pid;
      starting = undefined;
      return;
    }
    // One we started is still coming up (tsx, a loaded host): wait for it to record itself.
    if (starting && processAlive(starting.child.pid ?? -1) && Date.now() - starting.at < startGraceMs) return;
    if (starting) opts.log(`fencer (pid ${starting.child.pid}) did not come up${processAlive(starting.child.pid ?? -1) ? ' in time; killing it' : ''}: starting another`);
    else if (known !== undefined) opts.log(`fencer (pid ${known}) is gone: starting a new one`);
    if (starting && processAlive(starting.child.pid ?? -1)) starting.child.kill('SIGKILL');
    known = undefined;
    starting = { child: startFencer(opts), at: Date.now() };
  };

  const loop = () => {
    if (!running) return;
    tick = check().catch((err) => opts.log(`fencer supervision: ${oneLine(err)}`));
    void tick.then(() => {
      if (running) timer = setTimeout(loop, checkMs);
    });
  };
  loop();
  await tick;
  return {
    get pid() {
      return known ?? starting?.child.pid;
    },
    async ready(timeoutMs: number) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        if (await liveFencer(opts.stateDir)) return true;
        if (Date.now() >= until) return false;
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async stop() {
      running = false;
      clearTimeout(timer);
      await tick;
    },
  };
}

function startFencer(opts: FencerSupervisorOptions): ChildProcess {
  const logFd = openSync(fencerLogPath(opts.stateDir), 'a', 0o600);
  try {
    const [program, ...args] = opts.command;
    const child = spawn(program!, args, {
      // Its own session and process group: signals to the daemon's group (a terminal's ^C, kill -- -PGID)
      // do not reach it, and nothing waits for it.
      detached: true,
      // The environment is inherited: the same QWAMOS_STATE_DIR the daemon runs on.
      stdio: ['ignore', logFd, logFd],
    });
    child.on('error', (err) => opts.log(`cannot start the fencer: ${oneLine(err)}`));
    child.unref();
    return child;
  } finally {
    closeSync(logFd);
  }
}

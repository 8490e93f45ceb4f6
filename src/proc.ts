// What /proc says about a process: one reading of /proc/PID/stat for the store's locks and the drivers'
// supervised processes alike, so both treat a zombie as the dead process it is.
import { readFileSync } from 'node:fs';

/** Fields 3.. of /proc/PID/stat (state first), or undefined where /proc is unavailable. */
export function procStat(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parens: fields after it start after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Start time of pid from /proc/PID/stat (field 22), or undefined where /proc is unavailable. */
export function processStartTime(pid: number): string | undefined {
  return procStat(pid)?.[19];
}

/**
 * Whether pid is running and (if start is given and knowable) is still the same process. A zombie (state
 * Z, or X while being reaped) has exited, though kill(pid, 0) still finds it until its parent reaps it,
 * which may take long (PID 1 here does not reap promptly).
 */
export function processAlive(pid: number, start?: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false; // ESRCH: no such process
  }
  const fields = procStat(pid);
  if (fields && (fields[0] === 'Z' || fields[0] === 'X')) return false;
  if (start === undefined) return true;
  const now = fields?.[19];
  return now === undefined || now === start;
}

// Ending what a test or bench started and left running: QEMUs, by the PIDs in their pidfiles under a
// state directory (never by name).
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

export async function killQemusIn(stateDir: string): Promise<void> {
  for (const vm of await readdir(path.join(stateDir, 'vms')).catch(() => [] as string[])) {
    const pid = Number(await readFile(path.join(stateDir, 'vms', vm, 'qemu.pid'), 'utf8').catch(() => '0'));
    if (pid > 0) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

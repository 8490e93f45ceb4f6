// Ending what a test or bench started and left running: QEMUs, by the PIDs in their pidfiles (QEMU's run
// directory of each VM of a state directory; never by name), and their run directories.
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { vmPaths } from '../../src/controllers/vm/context.ts';

export async function killQemusIn(stateDir: string): Promise<void> {
  for (const vm of await readdir(path.join(stateDir, 'vms')).catch(() => [] as string[])) {
    const { runDir } = vmPaths({ stateDir }, vm);
    const pid = Number(await readFile(path.join(runDir, 'qemu.pid'), 'utf8').catch(() => '0'));
    if (pid > 0) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await rm(runDir, { recursive: true, force: true });
  }
}

// qwamos suspend|resume KIND/NAME...: stop or restart reconciling resources (the host is left as it is).
import type { Command } from '../commander.ts';
import { openStore } from '../../runtime.ts';
import type { CliCommand } from '../command.ts';
import { EXIT } from '../exit.ts';
import { reconcileNow } from '../reconcile-now.ts';
import { parseRefs } from '../refs.ts';

function suspension(suspend: boolean): CliCommand {
  return {
    name: `${suspend ? 'suspend' : 'resume'} <refs...>`,
    define: (cmd: Command) =>
      cmd.description(suspend ? 'stop reconciling resources; what is on the host stays as it is' : 'reconcile suspended resources again'),
    async run(refs: string[]) {
      const keys = parseRefs(refs);
      const store = await openStore();
      for (const key of keys) {
        const [kind, name] = key.split('/') as [string, string];
        await store.setSuspended(kind, name, suspend);
        process.stdout.write(`${key} ${suspend ? 'suspended' : 'resumed'}\n`);
      }
      // Resuming reconciles at once (by the daemon if one runs, else here).
      if (!suspend) await reconcileNow(store, keys, { wait: false, timeoutMs: 60_000 });
      return EXIT.ok;
    },
  };
}

export const suspendCommand = suspension(true);
export const resumeCommand = suspension(false);

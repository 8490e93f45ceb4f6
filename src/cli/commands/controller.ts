// qwamos controller: the daemon. Runs until SIGTERM or SIGINT.
import type { Command } from 'commander';
import { runDaemon } from '../../daemon.ts';
import type { CliCommand } from '../command.ts';
import { parseDuration } from '../duration.ts';
import { EXIT } from '../exit.ts';

export const controllerCommand: CliCommand = {
  name: 'controller',
  define: (cmd: Command) =>
    cmd
      .description('run the controller daemon: reconcile continuously, follow the store and the host, report drift')
      .option('--resync <duration>', 'periodic full resync interval', process.env.QWAMOS_RESYNC || '60s'),

  async run(flags: { resync: string }) {
    const resyncMs = parseDuration(flags.resync);
    const stopSignal = new Promise<void>((resolve) => {
      process.once('SIGTERM', () => resolve());
      process.once('SIGINT', () => resolve());
    });
    await runDaemon({
      resyncMs,
      stopSignal,
      log: (line) => process.stdout.write(`${new Date().toISOString()} ${line}\n`),
    });
    return EXIT.ok;
  },
};

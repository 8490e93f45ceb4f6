// Entry point of the qwamos CLI: one command a file in ./commands, each registering itself here.
import { Command, CommanderError } from './commander.ts';
import { UsageError, oneLine } from '../errors.ts';
import { debugEnabled } from '../config.ts';
import { commands } from './commands/index.ts';

export { EXIT } from './exit.ts';
import { EXIT } from './exit.ts';

const LONG_RUNNING = new Set(['controller', 'fencer']);

/** Runs the CLI with the given arguments and resolves to the process exit code. */
export async function main(argv: string[]): Promise<number> {
  let exitCode: number = EXIT.ok;
  const program = new Command('qwamos')
    .description('Declarative, reconciling controller for an isolation host (signed YAML manifests).')
    .version('0.1.0')
    .showHelpAfterError('(run qwamos --help for usage)')
    .exitOverride()
    .configureOutput({ outputError: (text, write) => write(text) });

  // Only the command being run is loaded and defined in full; the others are listed for --help.
  const word = argv[0] === 'help' ? argv[1] : argv.find((a) => !a.startsWith('-'));
  // Stacks that name the TypeScript sources where one may be read: a daemon's log, or QWAMOS_DEBUG.
  if (debugEnabled() || (word !== undefined && LONG_RUNNING.has(word))) process.setSourceMapsEnabled(true);
  for (const entry of commands) {
    if (entry.word !== word) {
      program.command(entry.word).description(entry.summary);
      continue;
    }
    const command = await entry.load();
    const sub = command.define(program.command(command.name));
    sub.exitOverride();
    sub.action(async (...args: unknown[]) => {
      exitCode = await command.run(...args);
    });
  }

  try {
    await program.parseAsync(argv, { from: 'user' });
    return exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') {
        return EXIT.ok;
      }
      return EXIT.usage;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`error: ${oneLine(err)}\n`);
      return EXIT.usage;
    }
    process.stderr.write(`error: ${oneLine(err)}\n`);
    if (debugEnabled()) process.stderr.write(`${(err as Error)?.stack ?? ''}\n`);
    return EXIT.failed;
  }
}

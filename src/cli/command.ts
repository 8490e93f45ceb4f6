// The shape every CLI command file exports.
import { Option, type Command } from './commander.ts';

export interface CliCommand {
  /** Name with its positional arguments, as commander takes it, e.g. 'sign [files...]'. */
  name: string;
  /** Adds description and options to the commander sub-command. */
  define(cmd: Command): Command;
  /** Runs the command with commander's action arguments; resolves to the exit code. */
  run(...args: any[]): Promise<number>;
}

/** Collects a repeatable option such as `-f a -f b`. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** `-o json` for commands that print a report: other values are usage errors. */
export function jsonOutputOption(): Option {
  return new Option('-o, --output <format>', 'json for machine-readable results').choices(['json']);
}

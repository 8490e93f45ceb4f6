// commander loaded through require: its ESM entry is a wrapper over the CommonJS build that Node lexes
// on every start (~10 ms of the CLI's start-up).
import { createRequire } from 'node:module';
import type * as Commander from 'commander';

const commander = createRequire(import.meta.url)('commander') as typeof Commander;
export const Command = commander.Command;
export type Command = Commander.Command;
export const CommanderError = commander.CommanderError;
export type CommanderError = Commander.CommanderError;
export const Option = commander.Option;
export type Option = Commander.Option;

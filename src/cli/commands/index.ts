// Every CLI command, in the order `qwamos --help` lists them.
import type { CliCommand } from '../command.ts';
import { validateCommand } from './validate.ts';
import { keygenCommand } from './keygen.ts';
import { signCommand } from './sign.ts';
import { verifyCommand } from './verify.ts';
import { applyCommand } from './apply.ts';

export const commands: CliCommand[] = [applyCommand, validateCommand, keygenCommand, signCommand, verifyCommand];

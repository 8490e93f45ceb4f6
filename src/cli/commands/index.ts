// Every CLI command, in the order `qwamos --help` lists them.
import type { CliCommand } from '../command.ts';
import { validateCommand } from './validate.ts';
import { keygenCommand } from './keygen.ts';
import { signCommand } from './sign.ts';
import { verifyCommand } from './verify.ts';
import { applyCommand } from './apply.ts';
import { getCommand } from './get.ts';
import { describeCommand } from './describe.ts';
import { driftCommand } from './drift.ts';
import { controllerCommand } from './controller.ts';
import { diffCommand } from './diff.ts';
import { deleteCommand } from './delete.ts';
import { reconcileCommand } from './reconcile.ts';
import { resumeCommand, suspendCommand } from './suspend.ts';

export const commands: CliCommand[] = [applyCommand, diffCommand, deleteCommand, getCommand, describeCommand, driftCommand, reconcileCommand, suspendCommand, resumeCommand, validateCommand, keygenCommand, signCommand, verifyCommand, controllerCommand];

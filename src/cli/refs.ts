// Resource references on the command line: KIND/NAME or KIND NAME, kinds by name or kubectl-style alias.
import { UsageError } from '../errors.ts';
import { parseKind } from './format.ts';

/** 'vm/browser' or ['vm', 'browser'] -> 'VirtualMachine/browser'. */
export function parseRefs(args: string[]): string[] {
  if (args.length === 2 && !args[0]!.includes('/') && !args[1]!.includes('/')) return [`${parseKind(args[0]!)}/${args[1]}`];
  return args.map((arg) => {
    const [kind, name, extra] = arg.split('/');
    if (!kind || !name || extra !== undefined) throw new UsageError(`expected KIND/NAME, got ${JSON.stringify(arg)}`);
    return `${parseKind(kind)}/${name}`;
  });
}

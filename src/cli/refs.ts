// Resource references on the command line: KIND/NAME or KIND NAME, kinds by name or kubectl-style alias.
import { UsageError } from '../errors.ts';
import { KINDS, KIND_ALIASES, type Kind } from '../resources/kinds.ts';

export function parseKind(text: string): Kind {
  const kind = KIND_ALIASES[text.toLowerCase()] ?? KINDS.find((k) => k.toLowerCase() === text.toLowerCase());
  if (!kind) throw new UsageError(`unknown kind ${JSON.stringify(text)} (known: ${KINDS.join(', ')})`);
  return kind;
}

/** 'vm/browser' or ['vm', 'browser'] -> 'VirtualMachine/browser'. */
export function parseRefs(args: string[]): string[] {
  if (args.length === 2 && !args[0]!.includes('/') && !args[1]!.includes('/')) return [`${parseKind(args[0]!)}/${args[1]}`];
  return args.map((arg) => {
    const [kind, name, extra] = arg.split('/');
    if (!kind || !name || extra !== undefined) throw new UsageError(`expected KIND/NAME, got ${JSON.stringify(arg)}`);
    return `${parseKind(kind)}/${name}`;
  });
}

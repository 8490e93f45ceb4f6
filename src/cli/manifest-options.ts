// Options shared by every command that reads manifests, and the step they all begin with.
import type { Command } from './commander.ts';
import { hostPrefix, imageRoot, trustDir } from '../config.ts';
import { UsageError } from '../errors.ts';
import { formatDiagnostic, sortDiagnostics, type Diagnostic } from '../resources/diagnostics.ts';
import { readManifests, type ManifestSet } from '../resources/manifests.ts';
import type { LoadedResource } from '../resources/types.ts';
import { collect } from './command.ts';

export interface ManifestFlags {
  filename?: string[];
  recursive?: boolean;
  allowUnsigned?: boolean;
  trust?: string;
}

export function manifestOptions(cmd: Command, required = true): Command {
  return cmd
    .option('-f, --filename <path>', `manifest file or directory (repeatable)${required ? '' : ''}`, collect, [])
    .option('-R, --recursive', 'read directories given with -f recursively')
    .option('--allow-unsigned', 'accept unsigned manifests or ones signed by untrusted keys, with a warning')
    .option('--trust <dir>', 'trust store of public keys (default: $QWAMOS_STATE_DIR/trust)');
}

export async function loadManifests(flags: ManifestFlags, known: LoadedResource[] = []): Promise<ManifestSet> {
  let prefix: string;
  try {
    prefix = hostPrefix();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  return readManifests(flags.filename ?? [], {
    trustDir: flags.trust ?? trustDir(),
    allowUnsigned: Boolean(flags.allowUnsigned),
    recursive: Boolean(flags.recursive),
    imageRoot: imageRoot(),
    prefix,
    known,
  });
}

export function printDiagnostics(diagnostics: Diagnostic[]): void {
  for (const d of sortDiagnostics(diagnostics)) process.stderr.write(`${formatDiagnostic(d)}\n`);
}

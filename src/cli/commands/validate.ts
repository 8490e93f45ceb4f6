// qwamos validate -f FILE|DIR ...: verify signatures and validate, reporting every problem in one pass.
import type { Command } from '../commander.ts';
import { EXIT } from '../exit.ts';
import { printable } from '../../errors.ts';
import { jsonOutputOption, type CliCommand } from '../command.ts';
import { hasErrors } from '../../resources/manifests.ts';
import { loadManifests, manifestOptions, printDiagnostics, type ManifestFlags } from '../manifest-options.ts';
import { sortDiagnostics } from '../../resources/diagnostics.ts';

interface Flags extends ManifestFlags {
  output?: string;
}

export const validateCommand: CliCommand = {
  name: 'validate',
  define: (cmd: Command) =>
    manifestOptions(cmd.description('check manifests: signatures, YAML, schema and cross-references; exit 0 valid, 1 invalid, 2 usage error'))
      .addOption(jsonOutputOption()),

  async run(flags: Flags) {
    const set = await loadManifests(flags);
    const ok = !hasErrors(set.diagnostics);
    if (flags.output === 'json') {
      const report = {
        valid: ok,
        files: set.files,
        resources: set.resources.map((r) => ({ resource: r.key, file: r.file })),
        indexes: set.indexes.map((i) => ({ dir: i.dir, serial: i.serial })),
        diagnostics: sortDiagnostics(set.diagnostics),
      };
      process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    } else {
      printDiagnostics(set.diagnostics);
      if (ok) {
        process.stdout.write(`${set.resources.length} resources in ${set.files.length} files are valid\n`);
        for (const index of set.indexes) process.stdout.write(`${printable(index.dir)}: signed index serial ${index.serial} matches the directory\n`);
      }
    }
    return ok ? EXIT.ok : EXIT.failed;
  },
};

// qwamos delete -f FILE|DIR | KIND/NAME...: remove resources from the host, then from the store.
import type { Command } from '../commander.ts';
import { UsageError, printable } from '../../errors.ts';
import { hasErrors } from '../../resources/manifests.ts';
import { openStore } from '../../runtime.ts';
import type { CliCommand } from '../command.ts';
import { parseDuration } from '../duration.ts';
import { EXIT } from '../exit.ts';
import { loadManifests, manifestOptions, printDiagnostics, type ManifestFlags } from '../manifest-options.ts';
import { reconcileNow } from '../reconcile-now.ts';
import { parseRefs } from '../refs.ts';

interface Flags extends ManifestFlags {
  wait?: boolean;
  timeout: string;
}

export const deleteCommand: CliCommand = {
  name: 'delete [refs...]',
  define: (cmd: Command) =>
    manifestOptions(cmd.description('delete resources (KIND/NAME or -f FILE|DIR): what they created on the host, then their records'))
      .option('--wait', 'wait until the host is clean, retrying failures, up to --timeout')
      .option('--timeout <duration>', 'how long to reconcile or wait', '120s'),

  async run(refs: string[], flags: Flags) {
    const timeoutMs = parseDuration(flags.timeout);
    let keys: string[];
    if (flags.filename?.length) {
      if (refs.length) throw new UsageError('give either -f or KIND/NAME, not both');
      const set = await loadManifests(flags);
      printDiagnostics(set.diagnostics);
      if (hasErrors(set.diagnostics)) return EXIT.failed;
      keys = set.resources.map((r) => r.key);
    } else {
      if (!refs.length) throw new UsageError('nothing to delete: give KIND/NAME or -f FILE|DIR');
      keys = parseRefs(refs);
    }

    const store = await openStore();
    const found: string[] = [];
    let missing = false;
    let removed = 0;
    const marks = await store.markManyForDeletion(
      keys.map((key) => {
        const [kind, name] = key.split('/') as [string, string];
        return { kind, name };
      }),
    );
    for (const [i, key] of keys.entries()) {
      const marked = marks[i];
      if (marked === 'marked') found.push(key);
      else if (marked === 'removed') {
        // Its record could not be read, so no controller ever acted on it: nothing to reconcile.
        removed++;
        process.stdout.write(`${printable(key)} deleted (its record could not be read; removed from the store)\n`);
      } else {
        missing = true;
        process.stderr.write(`error: ${printable(key)} not found\n`);
      }
    }
    if (found.length === 0) return removed > 0 && !missing ? EXIT.ok : EXIT.failed;

    const report = await reconcileNow(store, found, { wait: Boolean(flags.wait), timeoutMs });
    let failed = missing || report.timedOut;
    for (const o of report.outcomes.values()) {
      if (o.phase === 'Deleted') process.stdout.write(`${o.key} deleted\n`);
      else if (report.daemonPid && !flags.wait) process.stdout.write(`${o.key} deleting (controller pid ${report.daemonPid})\n`);
      else {
        failed = true;
        process.stderr.write(`error: ${o.key}: not deleted yet (${o.phase}): ${printable(o.message)}\n`);
      }
    }
    return failed ? EXIT.failed : EXIT.ok;
  },
};

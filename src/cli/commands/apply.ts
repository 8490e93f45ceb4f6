// qwamos apply -f FILE|DIR: verify, validate, store, then reconcile the host (in this process, or by
// handing the work to a running controller). Prints one line per resource, kubectl-style.
import path from 'node:path';
import type { Command } from 'commander';
import { UsageError, printable } from '../../errors.ts';
import { hasErrors } from '../../resources/manifests.ts';
import { openStore } from '../../runtime.ts';
import { applyResultOf, cameFrom, storedAsLoaded } from '../applied.ts';
import { jsonOutputOption, type CliCommand } from '../command.ts';
import { parseDuration } from '../duration.ts';
import { EXIT } from '../exit.ts';
import { loadManifests, manifestOptions, printDiagnostics, type ManifestFlags } from '../manifest-options.ts';
import { reconcileNow } from '../reconcile-now.ts';

interface Flags extends ManifestFlags {
  dryRun?: boolean;
  prune?: boolean;
  wait?: boolean;
  timeout: string;
  output?: string;
}

export const applyCommand: CliCommand = {
  name: 'apply',
  define: (cmd: Command) =>
    manifestOptions(cmd.description('apply signed manifests and reconcile the host to them'))
      .option('--dry-run', 'show what would change; change nothing')
      .option('--prune', 'delete resources applied earlier from these files or directories that are no longer in them')
      .option('--wait', 'wait until every resource is ready (or stalled), retrying failures, up to --timeout')
      .option('--timeout <duration>', 'how long to reconcile or wait', '120s')
      .addOption(jsonOutputOption()),

  async run(flags: Flags) {
    const timeoutMs = parseDuration(flags.timeout);
    const store = await openStore();
    const stored = await store.listResources();
    const set = await loadManifests(flags, storedAsLoaded(stored));
    printDiagnostics(set.diagnostics);
    if (hasErrors(set.diagnostics)) {
      process.stderr.write('error: nothing was applied\n');
      return EXIT.failed;
    }

    const roots = (flags.filename ?? []).map((p) => path.resolve(p));
    const applying = new Set(set.resources.map((r) => r.key));
    const prune = flags.prune ? stored.filter((r) => !r.deletionRequestedAt && cameFrom(r, roots) && !applying.has(`${r.kind}/${r.metadata.name}`)) : [];
    if (flags.prune && set.resources.length === 0) {
      throw new UsageError('refusing to prune: the given paths hold no resources (that would delete everything applied from them)');
    }

    const lines: { key: string; result: string }[] = [];
    if (flags.dryRun) {
      const byKey = new Map(stored.map((r) => [`${r.kind}/${r.metadata.name}`, r]));
      for (const r of set.resources) lines.push({ key: r.key, result: applyResultOf(byKey.get(r.key), r.resource) });
      for (const r of prune) lines.push({ key: `${r.kind}/${r.metadata.name}`, result: 'deleted' });
      print(lines, flags.output, ' (dry run)');
      return EXIT.ok;
    }

    await store.withLock(async () => {
      for (const r of set.resources) {
        const { result } = await store.putResource(r.resource as never, { path: path.resolve(r.file), digest: r.digest });
        lines.push({ key: r.key, result });
      }
      for (const r of prune) {
        await store.markForDeletion(r.kind, r.metadata.name);
        lines.push({ key: `${r.kind}/${r.metadata.name}`, result: 'deleted' });
      }
    });
    print(lines, flags.output, '');

    const progress = process.stderr.isTTY
      ? (r: { key: string; state: string }) => process.stderr.write(`  ${r.key}: ${r.state}\n`)
      : undefined;
    const report = await reconcileNow(
      store,
      lines.map((l) => l.key),
      { wait: Boolean(flags.wait), timeoutMs, ...(progress ? { onSettled: progress } : {}) },
    );
    if (report.daemonPid && !flags.wait) {
      process.stderr.write(`handed to the qwamos controller (pid ${report.daemonPid}); follow with: qwamos get\n`);
      return EXIT.ok;
    }
    let failed = report.timedOut;
    for (const o of report.outcomes.values()) {
      if (o.state === 'backoff' || o.state === 'stalled') {
        failed = true;
        process.stderr.write(`error: ${o.key}: ${printable(o.message)}\n`);
      } else if (o.state === 'waiting' || o.state === 'pending') {
        if (flags.wait) failed = true;
        process.stderr.write(`${o.key}: ${o.state}: ${printable(o.message)}\n`);
      } else if (o.state === 'drifted') {
        process.stderr.write(`warning: ${o.key}: ${printable(o.message)}\n`);
      }
    }
    if (report.timedOut) process.stderr.write(`error: timed out after ${flags.timeout}\n`);
    return failed ? EXIT.failed : EXIT.ok;
  },
};

function print(lines: { key: string; result: string }[], output: string | undefined, suffix: string): void {
  if (output === 'json') {
    process.stdout.write(`${JSON.stringify(lines.map((l) => ({ resource: l.key, result: l.result, dryRun: suffix !== '' })), null, 2)}\n`);
    return;
  }
  for (const l of lines) process.stdout.write(`${l.key} ${l.result}${suffix}\n`);
}

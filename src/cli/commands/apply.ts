// qwamos apply -f FILE|DIR: verify, validate, store, then reconcile the host (in this process, or by
// handing the work to a running controller). Prints one line per resource, kubectl-style.
import { keyOf } from '../../resources/keys.ts';
import path from 'node:path';
import type { Command } from '../commander.ts';
import { UsageError, printable } from '../../errors.ts';
import { crossCheck } from '../../resources/crossref.ts';
import type { Diagnostic } from '../../resources/diagnostics.ts';
import { hasErrors, withinReach, type ManifestSet } from '../../resources/manifests.ts';
import { gitSourceOf } from '../../git/owner.ts';
import { recordDirIndex } from '../../resources/dir-index.ts';
import { openStore } from '../../runtime.ts';
import type { StoredResource } from '../../store/store.ts';
import { applyResultOf, storedAsLoaded } from '../applied.ts';
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

    const applying = new Set(set.resources.map((r) => r.key));
    // Only what this invocation could have read (-R or not, dot-files, extensions) may be pruned.
    const prunable = (list: StoredResource[]) =>
      list.filter((r) => !r.deletionRequestedAt && withinReach(r.source.path, set.roots, Boolean(flags.recursive)) && !applying.has(keyOf(r)));
    const prune = flags.prune ? prunable(stored) : [];
    if (flags.prune && set.resources.length === 0) {
      throw new UsageError('refusing to prune: the given paths hold no resources (that would delete everything applied from them)');
    }
    if (flags.prune && set.skipped.length > 0) {
      // What a skipped entry declares would look deleted and be pruned.
      process.stderr.write(`error: refusing to prune: ${set.skipped.length} entr${set.skipped.length === 1 ? 'y was' : 'ies were'} skipped (${printable(set.skipped[0]!.path)}: ${set.skipped[0]!.reason}); nothing was applied\n`);
      return EXIT.failed;
    }

    // A git source owns these: they are stored, and the source applies its revision over them again (git wins).
    const storedByKey = new Map(stored.map((r) => [keyOf(r), r]));
    for (const r of set.resources) {
      const before = storedByKey.get(r.key);
      const owner = gitSourceOf(before?.source.path ?? '');
      if (owner && applyResultOf(before, r.resource) !== 'unchanged') process.stderr.write(`warning: ${r.key} is applied by gitsource/${owner}: a conflict; the source applies its revision over it again at its next pass (git wins)\n`);
    }

    const lines: { key: string; result: string }[] = [];
    if (flags.dryRun) {
      for (const r of set.resources) lines.push({ key: r.key, result: applyResultOf(storedByKey.get(r.key), r.resource) });
      for (const r of prune) lines.push({ key: keyOf(r), result: 'deleted' });
      print(lines, flags.output, ' (dry run)');
      return EXIT.ok;
    }

    // The cross-resource checks run again under the store's write lock, against the store as it is then:
    // another apply may have stored a rival (a second Route for the same VM) since we read it.
    let conflicts: Diagnostic[] = [];
    const { applied, pruned } = await store.applyResources(
      set.resources.map((r) => ({
        manifest: r.resource,
        source: { path: path.resolve(r.file), digest: r.digest, ...signerOf(set, r.file) },
      })),
      {
        check: (current) => {
          conflicts = crossConflicts(set, current);
          if (conflicts.length) throw new ApplyConflict();
        },
        ...(flags.prune ? { prune: (current: StoredResource[]) => prunable(current).map((r) => ({ kind: r.kind, name: r.metadata.name })) } : {}),
      },
    ).catch((err) => {
      if (!(err instanceof ApplyConflict)) throw err;
      return undefined;
    }) ?? { applied: undefined, pruned: [] };
    if (!applied) {
      printDiagnostics(conflicts);
      process.stderr.write('error: nothing was applied (the store changed while applying; see above)\n');
      return EXIT.failed;
    }
    // The directories' index serials: a later apply of an older signed index of the same directory is refused.
    for (const index of set.indexes) await recordDirIndex(store.dir, index);
    for (const a of applied) lines.push({ key: `${a.kind}/${a.name}`, result: a.result });
    for (const p of pruned) lines.push({ key: `${p.kind}/${p.name}`, result: 'deleted' });
    print(lines, flags.output, '');

    const progress = process.stderr.isTTY
      ? (r: { key: string; phase: string }) => process.stderr.write(`  ${r.key}: ${r.phase}\n`)
      : undefined;
    const report = await reconcileNow(
      store,
      lines.map((l) => l.key),
      {
        wait: Boolean(flags.wait),
        timeoutMs,
        // --wait must see a status written for this apply, not one left from before it.
        since: new Map(applied.map((a) => [`${a.kind}/${a.name}`, { generation: a.generation, ...(a.result === 'created' ? { createdAt: a.appliedAt } : {}) }])),
        ...(progress ? { onSettled: progress } : {}),
      },
    );
    if (report.daemonPid && !flags.wait) {
      process.stderr.write(`handed to the qwamos controller (pid ${report.daemonPid}); follow with: qwamos get\n`);
      return EXIT.ok;
    }
    let failed = report.timedOut;
    for (const o of report.outcomes.values()) {
      if (o.phase === 'Failed' || o.phase === 'Stalled') {
        failed = true;
        process.stderr.write(`error: ${o.key}: ${printable(o.message)}\n`);
      } else if (o.phase === 'Waiting' || o.phase === 'Pending' || o.phase === 'Deleting') {
        if (flags.wait) failed = true;
        process.stderr.write(`${o.key}: ${o.phase}: ${printable(o.message)}\n`);
      } else if (o.phase === 'Drifted') {
        process.stderr.write(`warning: ${o.key}: ${printable(o.message)}\n`);
      }
    }
    if (report.timedOut) process.stderr.write(`error: timed out after ${flags.timeout}\n`);
    return failed ? EXIT.failed : EXIT.ok;
  },
};

/** Thrown inside the store's lock to abandon an apply that would conflict with what is stored now. */
class ApplyConflict extends Error {}

/** Errors of the cross-resource checks of the set against what the store holds now. */
function crossConflicts(set: ManifestSet, current: StoredResource[]): Diagnostic[] {
  return crossCheck(set.resources, storedAsLoaded(current))
    .filter((issue) => issue.severity !== 'warning')
    .map((issue) => ({ file: issue.at.file, ...(issue.at.positions?.locate(issue.pointer) ?? { line: 1, col: 1 }), resource: issue.at.key, message: issue.message }));
}

/** The signer of a file as stored in a resource's source. */
function signerOf(set: ManifestSet, file: string): { signer?: { keyId: string; alg: string; name: string } } {
  const signer = set.signers.get(file);
  return signer ? { signer: { keyId: signer.keyId, alg: signer.alg, name: signer.name } } : {};
}

function print(lines: { key: string; result: string }[], output: string | undefined, suffix: string): void {
  if (output === 'json') {
    process.stdout.write(`${JSON.stringify(lines.map((l) => ({ resource: l.key, result: l.result, dryRun: suffix !== '' })), null, 2)}\n`);
    return;
  }
  for (const l of lines) process.stdout.write(`${l.key} ${l.result}${suffix}\n`);
}

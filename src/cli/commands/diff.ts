// qwamos diff -f FILE|DIR: what applying would change — in the store and on the host (including drift).
// Exit 0: no difference; 1: differences; 2: error.
import type { Command } from '../commander.ts';
import { createControllers } from '../../controllers/index.ts';
import { printable } from '../../errors.ts';
import { hasErrors } from '../../resources/manifests.ts';
import type { LoadedResource } from '../../resources/types.ts';
import { loadConfig } from '../../config.ts';
import { makeWorld } from '../../engine/contract.ts';
import { keyOf } from '../../resources/keys.ts';
import { openStore } from '../../runtime.ts';
import type { StoredResource } from '../../store/store.ts';
import { applyResultOf, storedAsLoaded } from '../applied.ts';
import { jsonOutputOption, type CliCommand } from '../command.ts';
import { EXIT } from '../exit.ts';
import { loadManifests, manifestOptions, printDiagnostics, type ManifestFlags } from '../manifest-options.ts';

interface Flags extends ManifestFlags {
  output?: string;
}

interface ResourceDiff {
  resource: string;
  store: 'created' | 'configured' | 'unchanged';
  fields: { field: string; applied: unknown; manifest: unknown }[];
  host: string[];
}

export const diffCommand: CliCommand = {
  name: 'diff',
  define: (cmd: Command) =>
    manifestOptions(cmd.description('show what apply would change in the store and on the host; exit 0 none, 1 differences, 2 error')).addOption(jsonOutputOption()),

  async run(flags: Flags) {
    const store = await openStore();
    const stored = await store.listResources();
    const set = await loadManifests(flags, storedAsLoaded(stored));
    printDiagnostics(set.diagnostics);
    if (hasErrors(set.diagnostics)) return EXIT.usage;

    const byKey = new Map(stored.map((r) => [keyOf(r), r]));
    const desired = set.resources.map((r) => asStored(r, byKey.get(r.key)));
    const merged = new Map(byKey);
    for (const r of desired) merged.set(keyOf(r), r);
    const controllers = createControllers(loadConfig(), undefined, { planOnly: true });
    const world = makeWorld([...merged.values()]);

    const diffs: ResourceDiff[] = set.resources.map((r) => ({
      resource: r.key,
      store: applyResultOf(byKey.get(r.key), r.resource),
      fields: fieldChanges(byKey.get(r.key)?.spec ?? {}, r.resource.spec, 'spec'),
      host: [],
    }));
    const diffByKey = new Map(diffs.map((d) => [d.resource, d]));
    for (const controller of controllers) {
      const mine = desired.filter((r) => r.kind === controller.kind);
      if (mine.length === 0) continue;
      const actual = await controller.observe(mine, world);
      for (const r of mine) {
        const key = keyOf(r);
        const d = diffByKey.get(key)!;
        const plan = controller.plan(r, actual.get(key), world);
        d.host = [...plan.actions.map((a: { describe: string }) => a.describe), ...(plan.hold ? [`(${plan.hold.reason}) ${plan.hold.message}`] : [])];
      }
    }

    const changed = diffs.filter((d) => d.store !== 'unchanged' || d.host.length > 0);
    if (flags.output === 'json') {
      process.stdout.write(`${JSON.stringify(diffs, null, 2)}\n`);
    } else {
      for (const d of changed) {
        process.stdout.write(`${d.resource} (${d.store === 'unchanged' ? 'host differs' : d.store})\n`);
        for (const f of d.fields) process.stdout.write(`  ~ ${f.field}: ${show(f.applied)} -> ${show(f.manifest)}\n`);
        for (const h of d.host) process.stdout.write(`  + ${printable(h)}\n`);
      }
    }
    return changed.length > 0 ? EXIT.failed : EXIT.ok;
  },
};

function asStored(r: LoadedResource, old: StoredResource | undefined): StoredResource {
  return {
    ...r.resource,
    source: { path: r.file, digest: r.digest },
    generation: old?.generation ?? 0,
    appliedAt: old?.appliedAt ?? '',
  };
}

/** Leaf-level changes between two JSON values, as dotted paths. */
function fieldChanges(a: unknown, b: unknown, at: string): { field: string; applied: unknown; manifest: unknown }[] {
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (isObj(a) && isObj(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return keys.flatMap((k) => fieldChanges(a[k], b[k], `${at}.${k}`));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [{ field: at, applied: a, manifest: b }];
}

function show(v: unknown): string {
  return v === undefined ? '(none)' : printable(JSON.stringify(v));
}

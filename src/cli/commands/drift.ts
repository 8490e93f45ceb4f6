// qwamos drift [-o json] [--watch] [--all]: the differences the controllers found between the host and
// the declared state. Open records by default, --all adds healed ones; --watch then prints one line per
// new or changed record until SIGINT/SIGTERM. A report: exit 0, or 2 on usage errors.
import { Option } from '../commander.ts';
import { oneLine, printable } from '../../errors.ts';
import type { DriftRecord, Store } from '../../store/store.ts';
import type { CliCommand } from '../command.ts';
import { EXIT } from '../exit.ts';
import { formatAge, isoSeconds, orNone, renderTable, toJson, truncate } from '../format.ts';
import { openStoreForRead } from '../state-read.ts';

interface Flags {
  output: 'text' | 'json';
  watch?: boolean;
  all?: boolean;
}

/** How often --watch reads the store again. */
export const WATCH_INTERVAL_MS = 1000;
/** Longest desired/actual value shown in a table cell (-o json has them whole). */
const VALUE_WIDTH = 60;

/** The drift table: RESOURCE FIELD DESIRED ACTUAL POLICY STATE DETECTED HEALED COUNT (ages). */
export function driftTable(records: DriftRecord[], now: number = Date.now()): string {
  const value = (v: string) => truncate(orNone(v), VALUE_WIDTH);
  return renderTable(
    ['RESOURCE', 'FIELD', 'DESIRED', 'ACTUAL', 'POLICY', 'STATE', 'DETECTED', 'HEALED', 'COUNT'],
    records.map((d) => [
      d.resource,
      d.field,
      value(d.desired),
      value(d.actual),
      d.policy,
      d.state,
      formatAge(d.detectedAt, now),
      d.healedAt ? formatAge(d.healedAt, now) : '-',
      String(d.count),
    ]),
  );
}

/** One --watch line, e.g. `2026-11-25T17:40:01Z  Route/dev  netns  desired qw-dev  actual (none)  open`. */
export function driftLine(d: DriftRecord, time: string | undefined, state: DriftRecord['state']): string {
  const count = state === 'open' && d.count > 1 ? `  count ${d.count}` : '';
  const policy = d.policy === 'warn' ? '  (warn only)' : '';
  return `${printable(
    `${isoSeconds(time)}  ${d.resource}  ${d.field}  desired ${orNone(d.desired)}  actual ${orNone(d.actual)}  ${state}${count}${policy}`,
  )}\n`;
}

const keyOf = (d: DriftRecord) => `${d.resource}#${d.id}`;
const signature = (d: DriftRecord) =>
  JSON.stringify([d.state, d.count, d.desired, d.actual, d.policy, d.lastSeenAt, d.healedAt ?? null]);

/** What to print for a record seen now, given how it looked before (undefined: new). */
function changeLines(prev: DriftRecord | undefined, d: DriftRecord): string[] {
  if (!prev) {
    if (d.state === 'open') return [driftLine(d, d.detectedAt, 'open')];
    // Opened and healed between two looks: tell both halves.
    return [driftLine(d, d.detectedAt, 'open'), driftLine(d, d.healedAt, 'healed')];
  }
  if (d.state === 'healed') return prev.state === 'healed' ? [] : [driftLine(d, d.healedAt, 'healed')];
  return [driftLine(d, d.lastSeenAt, 'open')];
}

export const driftCommand: CliCommand = {
  name: 'drift',
  define: (cmd) =>
    cmd
      .description('list drift: where the host differed from the declared state (open records; --all adds healed ones)')
      .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
      .option('-w, --watch', 'after the list, print a line for each new or changed record until interrupted')
      .option('--all', 'include healed records'),

  async run(opts: Flags) {
    const json = opts.output === 'json';
    const store = await openStoreForRead();
    const records = store ? await store.listDrift() : [];
    const shown = opts.all ? records : records.filter((d) => d.state === 'open');

    if (json && opts.watch) {
      for (const d of shown) process.stdout.write(toJson(d, { compact: true }));
    } else if (json) {
      process.stdout.write(toJson(shown));
    } else if (shown.length) {
      process.stdout.write(driftTable(shown));
    } else {
      process.stderr.write(opts.all ? 'No drift recorded.\n' : 'No open drift.\n');
    }
    if (!opts.watch) return EXIT.ok;

    await watch(store, records, json);
    return EXIT.ok;
  },
};

/** Polls the store and prints changes until SIGINT, SIGTERM or a closed stdout. */
async function watch(initialStore: Store | undefined, initial: DriftRecord[], json: boolean): Promise<void> {
  let store = initialStore;
  const seen = new Map(initial.map((d) => [keyOf(d), { record: d, sig: signature(d) }]));
  let warned = false;

  await new Promise<void>((resolve) => {
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    const stop = () => {
      if (stopped) return;
      stopped = true;
      if (timer) clearTimeout(timer);
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      process.stdout.off('error', stop); // EPIPE: whoever read our output has gone
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    process.stdout.on('error', stop);

    const tick = async () => {
      try {
        store ??= await openStoreForRead();
        const records = store ? await store.listDrift() : [];
        let out = '';
        for (const d of records) {
          const key = keyOf(d);
          const sig = signature(d);
          const prev = seen.get(key);
          if (prev && prev.sig === sig) continue;
          seen.set(key, { record: d, sig });
          out += json ? toJson(d, { compact: true }) : changeLines(prev?.record, d).join('');
        }
        // Records that are gone (their resource was deleted, or old healed ones were trimmed) are forgotten.
        const present = new Set(records.map(keyOf));
        for (const key of seen.keys()) if (!present.has(key)) seen.delete(key);
        if (out && !stopped) process.stdout.write(out);
        warned = false;
      } catch (err) {
        if (!warned) process.stderr.write(`warning: reading drift records: ${oneLine(err)}\n`);
        warned = true;
      }
      if (!stopped) timer = setTimeout(() => void tick(), WATCH_INTERVAL_MS);
    };
    timer = setTimeout(() => void tick(), WATCH_INTERVAL_MS);
  });
}

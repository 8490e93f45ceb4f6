// qwamos describe KIND/NAME (or KIND NAME, or KIND for every resource of it): a human report of one
// resource: metadata, source, generations, spec, conditions, drift and recent events.
// Exit 0, 1 when the resource does not exist, 2 on usage errors.
import { keyOf } from '../../resources/keys.ts';
import { readFile } from 'node:fs/promises';
import { printable, UserError, oneLine } from '../../errors.ts';
import type { DriftRecord, ResourceStatus, Store, StoredResource } from '../../store/store.ts';
import type { CliCommand } from '../command.ts';
import { EXIT } from '../exit.ts';
import { createdAt, formatAge, indentYaml, isoSeconds, orNone, parseKind, parseKinds, renderTable, statusOf, truncate } from '../format.ts';
import { openStoreForRead } from '../state-read.ts';
import { findResource, listEntries, splitRef } from './get.ts';

/** What a describe section gets to work with. */
export interface DescribeContext {
  store: Store;
  status: ResourceStatus | undefined;
}

/**
 * A section added to describe's report after Drift and before Events (e.g. a VirtualMachine's serial
 * console log). Returns the section's lines without newlines, heading included, or [] to add nothing
 * (for kinds it does not concern). Lines are escaped with printable() before printing.
 */
export type DescribeSection = (r: StoredResource, ctx: DescribeContext) => Promise<string[]>;

/** A VirtualMachine's serial console: the last lines QEMU wrote to serial.log in the state directory. */
const serialConsole: DescribeSection = async (r, { status }) => {
  const file = status?.fields.serialLog;
  if (r.kind !== 'VirtualMachine' || typeof file !== 'string') return [];
  const text = await readFile(file, 'utf8').catch(() => undefined);
  if (text === undefined) return ['Serial console:', '  (no output yet)'];
  const lines = text.replace(/\r/g, '').split('\n').filter((l) => l.trim()).slice(-SERIAL_LINES);
  return [`Serial console (last ${lines.length} lines of ${file}):`, ...lines.map((l) => `  ${l}`)];
};
const SERIAL_LINES = 20;

/** Extra sections, in order; other modules may push theirs here. */
export const extraSections: DescribeSection[] = [serialConsole];

/** Events shown per resource. */
const EVENTS_SHOWN = 20;
/** Healed drift records shown per resource. */
const HEALED_SHOWN = 5;
/** Longest desired/actual value shown in a drift table cell. */
const VALUE_WIDTH = 60;

const LABEL_WIDTH = 22;

/** 'Label:' padded to the value column, then the value (escaped). */
function field(label: string, value: string, indent = ''): string {
  const head = `${indent}${label}:`;
  return `${head.padEnd(LABEL_WIDTH)}${printable(value)}\n`;
}

/** key=value lines for labels and annotations, aligned under the first. */
function mapField(label: string, map: Record<string, string | undefined> | undefined): string {
  const entries = Object.entries(map ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (entries.length === 0) return field(label, '<none>');
  return entries.map(([k, v], i) => (i === 0 ? field(label, `${k}=${v}`) : `${' '.repeat(LABEL_WIDTH)}${printable(`${k}=${v}`)}\n`)).join('');
}

function section(title: string, body: string): string {
  return body ? `${title}:\n${body}` : `${title}:\n  <none>\n`;
}

export async function describeResource(store: Store, r: StoredResource, status: ResourceStatus | undefined): Promise<string> {
  const now = Date.now();
  const ref = keyOf(r);
  let out = '';
  out += field('Name', r.metadata.name);
  out += field('Kind', r.kind);
  out += field('API Version', r.apiVersion);
  out += mapField('Labels', r.metadata.labels);
  out += mapField('Annotations', r.metadata.annotations);
  out += 'Source:\n';
  out += field('Path', r.source.path, '  ');
  out += field('Digest', r.source.digest ? `sha256:${r.source.digest.slice(0, 12)}` : '<none>', '  ');
  if (r.source.commit) out += field('Commit', r.source.commit.slice(0, 12), '  ');
  const signer = r.source.signer;
  out += field('Signed By', signer ? `${signer.name ? `${signer.name} ` : ''}${signer.keyId} (${signer.alg})` : '<unsigned>', '  ');
  out += field('Created', `${isoSeconds(createdAt(r))} (${formatAge(createdAt(r), now)} ago)`);
  if (r.appliedAt !== createdAt(r)) out += field('Applied', `${isoSeconds(r.appliedAt)} (${formatAge(r.appliedAt, now)} ago)`);
  out += field('Generation', String(r.generation));
  out += field('Observed Generation', status ? String(status.observedGeneration) : '<none>');
  out += field('Phase', statusOf(r, status));
  out += field('Suspended', r.suspended ? 'true' : 'false');
  if (r.deletionRequestedAt) out += field('Deletion Requested', `${isoSeconds(r.deletionRequestedAt)} (${formatAge(r.deletionRequestedAt, now)} ago)`);

  out += `Spec:\n${Object.keys(r.spec).length ? indentYaml(r.spec) : '  {}\n'}`;
  const { machine, ...fields } = status?.fields ?? {};
  if (Object.keys(fields).length) out += `Status:\n${indentYaml(fields)}`;
  out += machineSection(machine, now);

  const conditions = status?.conditions ?? [];
  out += section(
    'Conditions',
    conditions.length
      ? renderTable(
          ['TYPE', 'STATUS', 'REASON', 'AGE', 'MESSAGE'],
          conditions.map((c) => [c.type, c.status, c.reason, formatAge(c.lastTransitionTime, now), c.message]),
          { indent: '  ' },
        )
      : '',
  );

  out += section('Drift', driftTables(await store.listDrift({ resource: ref }), now));

  for (const extra of extraSections) {
    try {
      const lines = await extra(r, { store, status });
      out += lines.map((line) => `${printable(line)}\n`).join('');
    } catch (err) {
      process.stderr.write(`warning: ${printable(ref)}: a describe section failed: ${oneLine(err)}\n`);
    }
  }

  const events = await store.listEvents({ resource: ref, limit: EVENTS_SHOWN });
  out += section(
    'Events',
    events.length
      ? renderTable(
          ['AGE', 'TYPE', 'REASON', 'MESSAGE'],
          events.map((e) => [formatAge(e.time, now), e.type, e.reason, e.message]),
          { indent: '  ' },
        )
      : '',
  );
  return out;
}

/** The resource machine's state and its last transitions, as the engine wrote them (status.fields.machine). */
function machineSection(machine: unknown, now: number): string {
  if (typeof machine !== 'object' || machine === null) return '';
  const m = machine as { state?: unknown; transitions?: unknown };
  const transitions = (Array.isArray(m.transitions) ? m.transitions : []).filter(
    (t): t is Record<'at' | 'from' | 'to' | 'reason', string> => typeof t === 'object' && t !== null && ['at', 'from', 'to', 'reason'].every((k) => typeof t[k] === 'string'),
  );
  let out = field('Machine State', typeof m.state === 'string' ? m.state : '<unknown>');
  out += section(
    'Transitions',
    transitions.length
      ? renderTable(
          ['AT', 'AGE', 'FROM', 'TO', 'REASON'],
          transitions.map((t) => [isoSeconds(t.at), formatAge(t.at, now), t.from, t.to, t.reason]),
          { indent: '  ' },
        )
      : '',
  );
  return out;
}

function driftTables(records: DriftRecord[], now: number): string {
  const open = records.filter((d) => d.state === 'open');
  const healed = records
    .filter((d) => d.state === 'healed')
    .sort((a, b) => (a.healedAt ?? '').localeCompare(b.healedAt ?? ''))
    .slice(-HEALED_SHOWN);
  if (!open.length && !healed.length) return '';
  const value = (v: string) => truncate(orNone(v), VALUE_WIDTH);
  let out = '';
  out += open.length
    ? renderTable(
        ['FIELD', 'DESIRED', 'ACTUAL', 'POLICY', 'DETECTED', 'COUNT'],
        open.map((d) => [d.field, value(d.desired), value(d.actual), d.policy, formatAge(d.detectedAt, now), String(d.count)]),
        { indent: '  ' },
      )
    : '  no open drift\n';
  if (healed.length) {
    out += `  Recently healed:\n`;
    out += renderTable(
      ['FIELD', 'DESIRED', 'ACTUAL', 'DETECTED', 'HEALED', 'COUNT'],
      healed.map((d) => [d.field, value(d.desired), value(d.actual), formatAge(d.detectedAt, now), formatAge(d.healedAt, now), String(d.count)]),
      { indent: '    ' },
    );
  }
  return out;
}

export const describeCommand: CliCommand = {
  name: 'describe <resource> [name]',
  define: (cmd) =>
    cmd.description(
      'show one resource in detail: metadata, source, spec, conditions, drift and recent events (KIND/NAME or KIND NAME; KIND alone describes all of that kind)',
    ),

  async run(first: string, second: string | undefined) {
    const ref = splitRef(first, second);
    const store = await openStoreForRead();
    if (ref.name !== undefined) {
      const kind = parseKind(ref.kind!);
      const entry = store && (await findResource(store, kind, ref.name));
      if (!store || !entry) throw new UserError(`${kind} "${ref.name}" not found`);
      process.stdout.write(await describeResource(store, entry.resource, entry.status));
      return EXIT.ok;
    }
    const entries = await listEntries(store, parseKinds(ref.kind));
    if (!store || entries.length === 0) {
      process.stderr.write('No resources found.\n');
      return EXIT.ok;
    }
    const reports: string[] = [];
    for (const e of entries) reports.push(await describeResource(store, e.resource, e.status));
    process.stdout.write(reports.join('\n'));
    return EXIT.ok;
  },
};

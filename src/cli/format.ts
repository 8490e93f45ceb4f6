// Small output helpers shared by the commands that print state: tables, ages, kinds, JSON and YAML.
// Everything that reaches the terminal from stored data goes through printable() here or in the caller.
import { createRequire } from 'node:module';
import type * as JsYaml from 'js-yaml';
import { UsageError, printable } from '../errors.ts';
import { isPhase, type Phase } from '../engine/phase.ts';
import { KINDS, KIND_ALIASES, type Kind } from '../resources/kinds.ts';
import type { Condition, ResourceStatus, StoredResource } from '../store/store.ts';

// ---- tables -------------------------------------------------------------------------------------

/**
 * Renders rows under an upper-case header in aligned columns, kubectl-style (three spaces apart, no
 * trailing blanks). Cells are escaped with printable(), so callers pass raw stored values.
 * Returns the text with a final newline.
 */
export function renderTable(header: string[], rows: string[][], opts: { indent?: string } = {}): string {
  const indent = opts.indent ?? '';
  const cells = [header, ...rows].map((row) => row.map((c) => printable(String(c))));
  const widths = header.map((_, i) => Math.max(...cells.map((row) => width(row[i] ?? ''))));
  return cells
    .map((row) => indent + row.map((c, i) => (i === row.length - 1 ? c : c + ' '.repeat((widths[i] ?? 0) - width(c) + 3))).join('').trimEnd())
    .map((line) => `${line}\n`)
    .join('');
}

/** Display width in code points (escaped text is ASCII; names and values rarely hold wide characters). */
function width(text: string): number {
  return [...text].length;
}

/** Cuts text to at most max code points, ending in '…' when cut. */
export function truncate(text: string, max: number): string {
  const chars = [...text];
  return chars.length <= max ? text : `${chars.slice(0, Math.max(0, max - 1)).join('')}…`;
}

/** An empty value as a table shows it. */
export function orNone(text: string | undefined): string {
  return text === undefined || text === '' ? '(none)' : text;
}

// ---- time ---------------------------------------------------------------------------------------

/** kubectl's short age: 5s, 3m, 2h, 4d, 1y; '<unknown>' for a missing or bad time; 0s for clock skew. */
export function formatAge(time: string | undefined, now: number = Date.now()): string {
  const t = time ? Date.parse(time) : NaN;
  if (Number.isNaN(t)) return '<unknown>';
  const s = Math.max(0, Math.floor((now - t) / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h`;
  const d = Math.floor(h / 24);
  if (d < 365) return `${d}d`;
  return `${Math.floor(d / 365)}y`;
}

/** An ISO time to the second, e.g. 2026-11-25T17:40:01Z (as given when it does not parse). */
export function isoSeconds(time: string | undefined): string {
  const t = time ? Date.parse(time) : NaN;
  if (Number.isNaN(t)) return time ?? '';
  return new Date(t).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

// ---- kinds --------------------------------------------------------------------------------------

/** A kind by name, alias or plural, any case ('vm', 'Routes', 'fws'); undefined if unknown. */
export function resolveKind(input: string): Kind | undefined {
  const key = input.trim().toLowerCase();
  const exact = KINDS.find((k) => k.toLowerCase() === key);
  if (exact) return exact;
  if (Object.hasOwn(KIND_ALIASES, key)) return KIND_ALIASES[key];
  if (key.endsWith('s') && Object.hasOwn(KIND_ALIASES, key.slice(0, -1))) return KIND_ALIASES[key.slice(0, -1)];
  return undefined;
}

/** 'VirtualMachine (vm), Route (rt), ...': the known kinds with their shortest alias. */
export function knownKinds(): string {
  return KINDS.map((k) => {
    const short = Object.keys(KIND_ALIASES)
      .filter((a) => KIND_ALIASES[a] === k && a !== k.toLowerCase())
      .sort((a, b) => a.length - b.length)[0];
    return short ? `${k} (${short})` : k;
  }).join(', ');
}

/**
 * Kinds named on the command line: one kind, a comma-separated list, or 'all' (also the default).
 * Throws a UsageError naming the known kinds for anything else.
 */
export function parseKinds(input: string | undefined): Kind[] {
  if (input === undefined || input.trim().toLowerCase() === 'all') return [...KINDS];
  const kinds: Kind[] = [];
  for (const part of input.split(',')) {
    if (part.trim().toLowerCase() === 'all') return [...KINDS];
    const kind = resolveKind(part);
    if (!kind) throw new UsageError(`unknown resource kind ${JSON.stringify(part)}; known kinds: ${knownKinds()}, all`);
    if (!kinds.includes(kind)) kinds.push(kind);
  }
  return kinds;
}

/** Exactly one kind (for a KIND NAME pair). */
export function parseKind(input: string): Kind {
  const kinds = parseKinds(input);
  if (kinds.length !== 1) throw new UsageError(`${JSON.stringify(input)} names more than one kind; give one kind with a NAME`);
  return kinds[0]!;
}

// ---- resource summaries -------------------------------------------------------------------------

export function condition(status: ResourceStatus | undefined, type: Condition['type']): Condition | undefined {
  return status?.conditions.find((c) => c.type === type);
}

/** READY column: the Ready condition's status, Unknown when there is none yet. */
export function readyOf(status: ResourceStatus | undefined): string {
  return condition(status, 'Ready')?.status ?? 'Unknown';
}

/** STATUS column: Deleting, Suspended, else the phase (Pending before the controller wrote any status). */
export function statusOf(r: StoredResource, status: ResourceStatus | undefined): Phase {
  const phase: Phase = r.deletionRequestedAt ? 'Deleting' : r.suspended ? 'Suspended' : isPhase(status?.phase) ? status.phase : 'Pending';
  return phase;
}

/** The message worth showing: the Stalled one while stalled, else Ready's. */
export function messageOf(status: ResourceStatus | undefined): string {
  const stalled = condition(status, 'Stalled');
  if (stalled?.status === 'True') return stalled.message;
  return condition(status, 'Ready')?.message ?? '';
}

/**
 * When the resource was first applied. The store keeps only the time of the current generation
 * (appliedAt); a `createdAt`, if the store ever records one, is preferred.
 */
export function createdAt(r: StoredResource): string {
  const created = (r as StoredResource & { createdAt?: unknown }).createdAt;
  return typeof created === 'string' ? created : r.appliedAt;
}

// ---- machine-readable output --------------------------------------------------------------------

// js-yaml is required on first use: a table (`get`'s default) never loads it (~15 ms of start-up).
let yamlModule: typeof JsYaml | undefined;
const jsYaml = (): typeof JsYaml => (yamlModule ??= createRequire(import.meta.url)('js-yaml') as typeof JsYaml);

// Characters JSON.stringify and js-yaml leave raw that a terminal acts on: C1 controls, line and
// paragraph separators, bidi overrides and isolates.
const RAW_UNSAFE = /[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const YAML_UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
const escapeUnicode = (c: string) => `\\u${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`;

/** Pretty JSON with a final newline, every terminal-active character escaped (still valid JSON). */
export function toJson(value: unknown, opts: { compact?: boolean } = {}): string {
  return `${JSON.stringify(value, null, opts.compact ? undefined : 2).replace(RAW_UNSAFE, escapeUnicode)}\n`;
}

/**
 * YAML (js-yaml's dump) with every terminal-active character escaped: strings holding one are
 * double-quoted, where a \uXXXX escape means the same character, so the output loads back unchanged.
 */
export function toYaml(value: unknown): string {
  const { SCALAR_STYLE, dump, visit } = jsYaml();
  const text = dump(value, {
    lineWidth: -1,
    noRefs: true,
    transform: (docs) =>
      visit(docs, (node) => {
        if (node.kind === 'scalar' && YAML_UNSAFE.test(node.value)) node.style = SCALAR_STYLE.DOUBLE_QUOTED;
      }),
  });
  // Inside double quotes js-yaml escapes C0/C1 itself; what remains raw (bidi) can only be in a
  // double-quoted scalar, where \uXXXX is the same character.
  return text.replace(RAW_UNSAFE, escapeUnicode);
}

/** YAML indented by prefix on every line, for reports such as describe's Spec. */
export function indentYaml(value: unknown, prefix = '  '): string {
  return toYaml(value)
    .replace(/\n$/, '')
    .split('\n')
    .map((line) => (line === '' ? '\n' : `${prefix}${line}\n`))
    .join('');
}

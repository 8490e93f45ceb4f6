// Reads YAML into documents while remembering where every key and value came from, so each error can
// point at the offending field. Built on js-yaml's event stream (parseEvents + constructFromEvents).
import { parseEvents, constructFromEvents, getScalarValue, EVENT_ID, SCALAR_STYLE, type Event } from 'js-yaml';
import { MAX_DOCUMENTS_PER_FILE, MAX_YAML_DEPTH } from '../config.ts';

export interface Position {
  line: number; // 1-based
  col: number; // 1-based
}

/** Positions of keys and values by JSON pointer (the form ajv's instancePath uses). */
export class PositionMap {
  readonly keys = new Map<string, number>();
  readonly values = new Map<string, number>();
  constructor(private readonly lines: LineIndex) {}

  /** Records where a key is; an empty node (offset -1) has no place in the text to record. */
  setKey(pointer: string, offset: number): void {
    if (offset >= 0) this.keys.set(pointer, offset);
  }

  /** Records where a value is; an empty value is then found at its key instead. */
  setValue(pointer: string, offset: number): void {
    if (offset >= 0) this.values.set(pointer, offset);
  }

  /** Where a field is: its key if it has one, else its value, else the nearest enclosing field. */
  locate(pointer: string): Position {
    for (let p = pointer; ; p = p.slice(0, Math.max(0, p.lastIndexOf('/')))) {
      const offset = this.keys.get(p) ?? this.values.get(p);
      if (offset !== undefined) return this.lines.position(offset);
      if (p === '') return { line: 1, col: 1 };
    }
  }

  /** Where a field's value is (falls back like locate). */
  locateValue(pointer: string): Position {
    const offset = this.values.get(pointer);
    return offset === undefined ? this.locate(pointer) : this.lines.position(offset);
  }
}

export interface YamlDocument {
  index: number; // 1-based position of the document in its file
  value: unknown;
  positions: PositionMap;
  start: Position;
}

export interface YamlError {
  message: string;
  position: Position;
  /** Document the error belongs to, when known. */
  index?: number;
}

export interface ParsedYaml {
  documents: YamlDocument[];
  errors: YamlError[];
}

export function pointerEscape(key: string): string {
  return key.replace(/~/g, '~0').replace(/\//g, '~1');
}

class LineIndex {
  private readonly starts: number[] = [0];
  constructor(text: string) {
    // YAML breaks lines at LF, CRLF and a lone CR; counting only LF would put a CR-only file on line 1.
    for (const m of text.matchAll(/\r\n?|\n/g)) this.starts.push(m.index + m[0].length);
  }
  /** Offset where a 1-based line starts, if the text has that line. */
  start(line: number): number | undefined {
    return this.starts[line - 1];
  }

  position(offset: number): Position {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return { line: lo + 1, col: offset - this.starts[lo]! + 1 };
  }
}

interface Frame {
  kind: 'mapping' | 'sequence' | 'document';
  path: string;
  expectingKey: boolean;
  pendingKey: string;
  nextIndex: number;
}

/**
 * Parses every document of a YAML text. Syntax errors end the file (YAML cannot resync); a document
 * that fails to construct (duplicate key, alias) is reported and the others are still returned.
 * Aliases are refused outright: manifests do not need them and they are the way to YAML bombs.
 */
export function parseYaml(text: string, filename: string): ParsedYaml {
  const lines = new LineIndex(text);
  let events: Event[];
  try {
    events = parseEvents(text, { filename, maxDepth: MAX_YAML_DEPTH });
  } catch (err) {
    return { documents: [], errors: [yamlError(err, lines, text)] };
  }

  const documents: YamlDocument[] = [];
  const errors: YamlError[] = [];
  let stack: Frame[] = [];
  let doc = newDocument(0, lines);

  for (let i = 0; i < events.length; i++) {
    const ev = events[i]!;
    if (ev.type === EVENT_ID.DOCUMENT) {
      doc = newDocument(i, lines);
      stack = [{ kind: 'document', path: '', expectingKey: false, pendingKey: '', nextIndex: 0 }];
      continue;
    }
    if (ev.type === EVENT_ID.POP) {
      const frame = stack.pop();
      if (frame?.kind !== 'document') continue;
      const index = documents.length + errors.filter((e) => e.index !== undefined).length + 1;
      const start = lines.position(Math.max(0, doc.firstOffset));
      if (index > MAX_DOCUMENTS_PER_FILE) {
        errors.push({ message: `more than ${MAX_DOCUMENTS_PER_FILE} documents in one file`, position: start, index });
        break;
      }
      const built = construct(events.slice(doc.eventStart, i + 1), doc, { text, filename, lines });
      if ('error' in built) errors.push({ ...built.error, index });
      else documents.push({ index, value: built.value, positions: doc.positions, start });
      continue;
    }

    const offset = eventOffset(ev);
    if (doc.firstOffset < 0) doc.firstOffset = offset;
    const parent = stack[stack.length - 1]!;
    let path: string;
    if (parent.kind === 'mapping' && parent.expectingKey) {
      const key = ev.type === EVENT_ID.SCALAR ? getScalarValue(text, ev) : '?';
      if (ev.type === EVENT_ID.SCALAR) doc.keyAt.set(ev.valueStart, { key, offset });
      // js-yaml reports complex keys without a position; report them here, at the key.
      if (ev.type === EVENT_ID.MAPPING || ev.type === EVENT_ID.SEQUENCE) {
        doc.problem ??= { message: 'YAML: complex keys (a list or mapping as a key) are not allowed in manifests', position: lines.position(offset) };
      }
      path = `${parent.path}/${pointerEscape(key)}`;
      doc.positions.setKey(path, offset);
      parent.pendingKey = key;
      parent.expectingKey = false;
    } else {
      if (parent.kind === 'mapping') {
        path = `${parent.path}/${pointerEscape(parent.pendingKey)}`;
        parent.expectingKey = true;
      } else if (parent.kind === 'sequence') {
        path = `${parent.path}/${parent.nextIndex++}`;
      } else {
        path = '';
      }
      doc.positions.setValue(path, offset);
    }
    if (ev.type === EVENT_ID.MAPPING || ev.type === EVENT_ID.SEQUENCE) {
      stack.push({
        kind: ev.type === EVENT_ID.MAPPING ? 'mapping' : 'sequence',
        path,
        expectingKey: true,
        pendingKey: '',
        nextIndex: 0,
      });
    }
  }
  return { documents, errors };
}

/** What the walk collects about the document it is in. */
interface DocumentState {
  eventStart: number;
  positions: PositionMap;
  /** Offset of the document's first node, -1 until one is seen. */
  firstOffset: number;
  /** Scalar keys (and where they start, quote included) by the offset js-yaml reports them at. */
  keyAt: Map<number, { key: string; offset: number }>;
  /** A problem found during the walk that construction would report badly or not at all. */
  problem?: YamlError;
}

function newDocument(eventStart: number, lines: LineIndex): DocumentState {
  return { eventStart, positions: new PositionMap(lines), firstOffset: -1, keyAt: new Map() };
}

/** Builds one document's value; its errors get messages that say what to fix. */
function construct(
  events: Event[],
  doc: DocumentState,
  src: { text: string; filename: string; lines: LineIndex },
): { value: unknown } | { error: YamlError } {
  if (doc.problem) return { error: doc.problem };
  try {
    const [value] = constructFromEvents(events, { source: src.text, filename: src.filename, maxAliases: 0 });
    return { value };
  } catch (err) {
    const e = yamlError(err, src.lines, src.text);
    const dup = /duplicated mapping key/.test(e.message) ? doc.keyAt.get((err as YamlException).mark?.position ?? -1) : undefined;
    if (dup) return { error: { message: `${e.message} ${quote(dup.key)}`, position: src.lines.position(dup.offset) } };
    return { error: e };
  }
}

/** A key from the input, quoted and cut short for a message. */
function quote(value: string, max = 60): string {
  const text = JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max - 4)}..."` : text;
}

/** Where an event's node starts in the text, or -1 when it has no text (an empty value). */
function eventOffset(ev: Event): number {
  switch (ev.type) {
    case EVENT_ID.SCALAR: {
      if (ev.anchorStart >= 0) return ev.anchorStart - 1;
      if (ev.tagStart >= 0) return ev.tagStart;
      // A quoted scalar's value starts after its quote; point at the quote, where the user sees it begin.
      const quoted = ev.style === SCALAR_STYLE.SINGLE_QUOTED || ev.style === SCALAR_STYLE.DOUBLE_QUOTED;
      return quoted && ev.valueStart > 0 ? ev.valueStart - 1 : ev.valueStart;
    }
    case EVENT_ID.MAPPING:
    case EVENT_ID.SEQUENCE:
      return ev.anchorStart >= 0 ? ev.anchorStart - 1 : ev.start;
    case EVENT_ID.ALIAS:
      return Math.max(0, ev.anchorStart - 1);
    default:
      return 0;
  }
}

interface YamlException {
  reason?: string;
  message?: string;
  mark?: { line: number; column: number; position?: number };
}

/** A js-yaml error as one line at the place the user has to change, which is not always its mark. */
function yamlError(err: unknown, lines: LineIndex, text: string): YamlError {
  const e = err as YamlException;
  const reason = e.reason || (e.message ?? String(err)).split('\n')[0]!.replace(/\s*\(\d+:\d+\)$/, '');
  // Positions from our own line index, which agrees with the rest on CR-only line ends. An error at
  // the very end of the text (an unclosed bracket) is shown on the last line that has content.
  const mark = e.mark?.position ?? 0;
  const offset = mark >= text.length && /(^|[\r\n])\s*$/.test(text) ? (previousContentLine(text, lines, mark) ?? mark) : mark;
  if (/maxAliases/.test(reason)) {
    const star = text[offset - 1] === '*' ? offset - 1 : offset; // the mark is just after the '*'
    return { message: 'YAML aliases (*name) are not allowed in manifests', position: lines.position(star) };
  }
  if (/multiline key may not be an implicit key/.test(reason)) {
    // 'cpus 2' then 'memory: 1Gi' reads as one key spanning two lines; the line to fix is the first.
    const above = previousContentLine(text, lines, offset);
    return { message: `YAML: ${reason} (is a ':' missing?)`, position: lines.position(above ?? offset) };
  }
  if (/deficient indentation/.test(reason)) {
    // Only a quoted string or a [ ] / { } collection continues onto a less indented line: one was left
    // open on a line above, most likely the one just above.
    const above = previousContentLine(text, lines, offset);
    return { message: `YAML: ${reason} (a quote or bracket left open?)`, position: lines.position(above ?? offset) };
  }
  return { message: `YAML: ${reason}`, position: lines.position(offset) };
}

/** Offset of the first character of the nearest line above `offset` that holds more than a comment. */
function previousContentLine(text: string, lines: LineIndex, offset: number): number | undefined {
  for (let n = lines.position(offset).line - 1; n >= 1; n--) {
    const start = lines.start(n)!;
    const content = text.slice(start, lines.start(n + 1) ?? text.length);
    const first = content.search(/\S/);
    if (first >= 0 && content[first] !== '#') return start + first;
  }
  return undefined;
}

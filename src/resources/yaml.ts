// Reads YAML into documents while remembering where every key and value came from, so each error can
// point at the offending field. Built on js-yaml's event stream (parseEvents + constructFromEvents).
import { parseEvents, constructFromEvents, getScalarValue, EVENT_ID, type Event } from 'js-yaml';
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
    for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) this.starts.push(i + 1);
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
    return { documents: [], errors: [yamlError(err, lines)] };
  }

  const documents: YamlDocument[] = [];
  const errors: YamlError[] = [];
  let stack: Frame[] = [];
  let docStart = 0;
  let positions = new PositionMap(lines);
  let firstOffset = -1;

  for (let i = 0; i < events.length; i++) {
    const ev = events[i]!;
    if (ev.type === EVENT_ID.DOCUMENT) {
      docStart = i;
      positions = new PositionMap(lines);
      firstOffset = -1;
      stack = [{ kind: 'document', path: '', expectingKey: false, pendingKey: '', nextIndex: 0 }];
      continue;
    }
    if (ev.type === EVENT_ID.POP) {
      const frame = stack.pop();
      if (frame?.kind !== 'document') continue;
      const index = documents.length + errors.filter((e) => e.index !== undefined).length + 1;
      if (index > MAX_DOCUMENTS_PER_FILE) {
        errors.push({ message: `more than ${MAX_DOCUMENTS_PER_FILE} documents in one file`, position: lines.position(Math.max(0, firstOffset)), index });
        break;
      }
      const start = lines.position(Math.max(0, firstOffset));
      try {
        const [value] = constructFromEvents(events.slice(docStart, i + 1), { source: text, filename, maxAliases: 0 });
        documents.push({ index, value, positions, start });
      } catch (err) {
        const e = yamlError(err, lines);
        if (/maxAliases/.test(e.message)) e.message = 'YAML aliases (*name) are not allowed in manifests';
        errors.push({ ...e, index });
      }
      continue;
    }

    const offset = eventOffset(ev);
    if (firstOffset < 0) firstOffset = offset;
    const parent = stack[stack.length - 1]!;
    let path: string;
    if (parent.kind === 'mapping' && parent.expectingKey) {
      const key = ev.type === EVENT_ID.SCALAR ? getScalarValue(text, ev) : '?';
      path = `${parent.path}/${pointerEscape(key)}`;
      positions.keys.set(path, offset);
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
      positions.values.set(path, offset);
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

function eventOffset(ev: Event): number {
  switch (ev.type) {
    case EVENT_ID.SCALAR:
      return ev.anchorStart >= 0 ? ev.anchorStart - 1 : ev.tagStart >= 0 ? ev.tagStart : ev.valueStart;
    case EVENT_ID.MAPPING:
    case EVENT_ID.SEQUENCE:
      return ev.anchorStart >= 0 ? ev.anchorStart - 1 : ev.start;
    case EVENT_ID.ALIAS:
      return Math.max(0, ev.anchorStart - 1);
    default:
      return 0;
  }
}

function yamlError(err: unknown, lines: LineIndex): YamlError {
  const e = err as { reason?: string; message?: string; mark?: { line: number; column: number; position?: number } };
  const message = e.reason || (e.message ?? String(err)).split('\n')[0]!.replace(/\s*\(\d+:\d+\)$/, '');
  const position = e.mark ? { line: e.mark.line + 1, col: e.mark.column + 1 } : lines.position(0);
  return { message: `YAML: ${message}`, position };
}

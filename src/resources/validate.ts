// The validation pipeline for a set of manifest files: bytes -> YAML documents -> kind and schema ->
// per-resource checks -> cross-resource checks. Every problem becomes one Diagnostic; nothing throws.
import { createHash } from 'node:crypto';
import { MAX_MANIFEST_BYTES } from '../config.ts';
import { checkResource, type CheckContext } from './checks.ts';
import { crossCheck } from './crossref.ts';
import type { Diagnostic } from './diagnostics.ts';
import { API_VERSION, KINDS, KIND_ALIASES, isKind } from './kinds.ts';
import { checkSchema, closest, show } from './schema.ts';
import { keyOf } from './keys.ts';
import type { LoadedResource } from './types.ts';
import { parseYaml, type YamlDocument } from './yaml.ts';

export interface SourceFile {
  file: string;
  bytes: Uint8Array;
}

export interface ValidateContext extends CheckContext {
  /** Resources already in force that references may resolve to (e.g. the store's). */
  known?: LoadedResource[];
}

export interface ValidationResult {
  resources: LoadedResource[];
  diagnostics: Diagnostic[];
}

export function validateSources(files: SourceFile[], ctx: ValidateContext): ValidationResult {
  const diagnostics: Diagnostic[] = [];
  const resources: LoadedResource[] = [];
  const invalid = new Set<string>();
  for (const source of files) {
    const result = validateFile(source, ctx);
    diagnostics.push(...result.diagnostics);
    resources.push(...result.resources);
    for (const key of result.invalid) invalid.add(key);
  }
  for (const issue of crossCheck(resources, ctx.known, invalid)) {
    const pos = issue.at.positions?.locate(issue.pointer) ?? { line: 1, col: 1 };
    diagnostics.push({ file: issue.at.file, ...pos, resource: issue.at.key, message: issue.message, ...(issue.severity ? { severity: issue.severity } : {}) });
  }
  return { resources, diagnostics };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

interface FileResult extends ValidationResult {
  /** Keys of resources the file declares that are invalid (and already reported). */
  invalid: string[];
}

function validateFile(source: SourceFile, ctx: CheckContext): FileResult {
  const { file, bytes } = source;
  const fileError = (message: string, line = 1, col = 1): FileResult => ({
    resources: [],
    diagnostics: [{ file, line, col, resource: 'file', message }],
    invalid: [],
  });
  if (bytes.length > MAX_MANIFEST_BYTES) return fileError(`file is ${bytes.length} bytes, over the ${MAX_MANIFEST_BYTES}-byte limit for a manifest`);
  const nul = bytes.indexOf(0);
  if (nul >= 0) {
    const at = bytePosition(bytes, nul);
    return fileError('binary data (NUL byte), not a YAML manifest', at.line, at.col);
  }
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    const bad = firstInvalidUtf8(bytes);
    const at = bytePosition(bytes, bad);
    return fileError(`not valid UTF-8 (byte 0x${bytes[bad]?.toString(16).padStart(2, '0')}): manifests are UTF-8 text`, at.line, at.col);
  }
  text = text.replace(/^\uFEFF/, '');

  const digest = createHash('sha256').update(bytes).digest('hex');
  const parsed = parseYaml(text, file);
  const diagnostics: Diagnostic[] = parsed.errors.map((e) => ({
    file,
    ...e.position,
    resource: e.index ? `document ${e.index}` : 'file',
    message: e.message,
  }));
  const resources: LoadedResource[] = [];
  const invalid: string[] = [];
  const present = parsed.documents.filter((d) => d.value !== null && d.value !== undefined);
  if (present.length === 0 && parsed.errors.length === 0) return fileError('no resources in file (empty, or only comments)');

  for (const doc of present) {
    const result = validateDocument(file, digest, doc, ctx);
    diagnostics.push(...result.diagnostics);
    if (result.resource) resources.push(result.resource);
    else if (declaredKey(doc.value)) invalid.push(declaredKey(doc.value)!);
  }
  return { resources, diagnostics, invalid };
}

/** 'Kind/name' of a document that names a known kind and a name, valid or not. */
function declaredKey(value: unknown): string | undefined {
  const obj = value as { kind?: unknown; metadata?: { name?: unknown } } | null;
  if (typeof obj !== 'object' || obj === null || !isKind(obj.kind)) return undefined;
  const name = typeof obj.metadata === 'object' && obj.metadata !== null ? obj.metadata.name : undefined;
  return typeof name === 'string' ? `${obj.kind}/${name}` : undefined;
}

/** Offset of the byte where UTF-8 decoding first fails; `stream` tolerates a cut-off last character. */
function firstInvalidUtf8(bytes: Uint8Array): number {
  // Binary search for the shortest prefix that cannot be the start of valid UTF-8.
  let lo = 0;
  let hi = bytes.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    try {
      new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(0, mid + 1), { stream: true });
      lo = mid + 1;
    } catch {
      hi = mid;
    }
  }
  // The decoder fails at the byte that breaks a sequence; the sequence began at its lead byte.
  const bad = Math.min(lo, bytes.length - 1);
  for (let back = 1; back <= 3 && bad - back >= 0; back++) {
    const b = bytes[bad - back]!;
    if (b >= 0xc0) return bad - back;
    if (b < 0x80) break;
  }
  return bad;
}

/** Line and column (in bytes) of an offset in text that cannot be decoded; LF, CRLF and CR end lines. */
function bytePosition(bytes: Uint8Array, offset: number): { line: number; col: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < offset; i++) {
    const b = bytes[i];
    if (b === 0x0a || (b === 0x0d && bytes[i + 1] !== 0x0a)) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, col: offset - lineStart + 1 };
}

function validateDocument(
  file: string,
  digest: string,
  doc: YamlDocument,
  ctx: CheckContext,
): { resource?: LoadedResource; diagnostics: Diagnostic[] } {
  const value = doc.value;
  const at = (pointer: string, atValue = false) => (atValue ? doc.positions.locateValue(pointer) : doc.positions.locate(pointer));
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const got = Array.isArray(value) ? 'a list' : `${typeof value} ${JSON.stringify(value)?.slice(0, 40)}`;
    return { diagnostics: [{ file, ...doc.start, resource: `document ${doc.index}`, message: `a resource must be a mapping with apiVersion, kind, metadata and spec (got ${got})` }] };
  }
  const obj = value as Record<string, unknown>;
  const label = resourceLabel(obj, doc.index);
  const problem = (pointer: string, message: string, atValue = false): Diagnostic => ({ file, ...at(pointer, atValue), resource: label, message });

  if (obj.apiVersion !== API_VERSION) {
    const message =
      obj.apiVersion === undefined
        ? `missing required field "apiVersion" (qwamos reads ${API_VERSION})`
        : `unknown apiVersion (got ${show(obj.apiVersion)}); qwamos reads ${API_VERSION}`;
    return { diagnostics: [problem('/apiVersion', message, true)] };
  }
  if (!isKind(obj.kind)) {
    return { diagnostics: [problem('/kind', kindMessage(obj.kind), true)] };
  }
  const { resource, issues } = checkSchema(obj.kind, obj);
  if (!resource) {
    return { diagnostics: issues.map((i) => problem(i.pointer, i.message, i.atValue)) };
  }
  const semantic = checkResource(resource, ctx);
  const diagnostics = semantic.map((i) => ({ ...problem(i.pointer, i.message), ...(i.severity ? { severity: i.severity } : {}) }));
  if (semantic.some((i) => i.severity !== 'warning')) return { diagnostics };
  return { resource: { resource, key: keyOf(resource), file, digest, positions: doc.positions }, diagnostics };
}

/** Says what is wrong with a kind, suggesting the kind that was probably meant. */
function kindMessage(kind: unknown): string {
  if (kind === undefined) return `missing required field "kind" (one of ${KINDS.join(', ')})`;
  const guess = typeof kind === 'string' ? nearestKind(kind) : undefined;
  return `unknown kind (got ${show(kind)}); ${guess ? `did you mean ${guess}?` : `known kinds: ${KINDS.join(', ')}`}`;
}

/** A CLI short name (vm, fw) or a near-miss spelling (Rout, virtualmachine) of a known kind. */
function nearestKind(word: string): string | undefined {
  if (word.length > 64) return undefined;
  const lower = word.toLowerCase();
  // hasOwn: a kind of "constructor" must not find Object.prototype's.
  return (Object.hasOwn(KIND_ALIASES, lower) ? KIND_ALIASES[lower] : undefined) ?? closest(word, KINDS);
}

/** 'Kind/name' as far as the document says, for messages about a document that may be malformed. */
function resourceLabel(obj: Record<string, unknown>, index: number): string {
  const kind = typeof obj.kind === 'string' && obj.kind.length <= 64 ? obj.kind : undefined;
  const meta = obj.metadata as Record<string, unknown> | undefined;
  const rawName = typeof meta === 'object' && meta !== null ? meta.name : undefined;
  const name =
    typeof rawName === 'string' && rawName.length <= 80
      ? /^[a-z0-9-]+$/.test(rawName)
        ? rawName
        : JSON.stringify(rawName)
      : undefined;
  if (kind && name) return `${kind}/${name}`;
  if (kind) return `${kind} (document ${index}, no name)`;
  if (name) return `document ${index} (${name})`;
  return `document ${index}`;
}

// JSON Schema validation of one document with ajv, its errors turned into plain sentences that name
// the field (spec.cpus) and what it must be.
import type { ErrorObject } from 'ajv/dist/2020.js';
import type { Kind } from './kinds.ts';
import type { AnyResource } from './types.ts';
import * as generated from './validators.generated.ts';
import { pointerEscape } from './yaml.ts';

export interface SchemaIssue {
  /** JSON pointer of the field the issue is about. */
  pointer: string;
  /** Point at the field's value rather than its key (e.g. a wrong enum value). */
  atValue: boolean;
  message: string;
}

/** A validator ajv compiled at build time (validatorgen.ts): true or false, and its errors. */
interface Validator {
  (doc: unknown): boolean;
  errors?: ErrorObject[] | null;
}

const validators: Record<Kind, Validator> = generated;

// ajv's check is the proof that a document has its kind's type.
function conforms(validate: Validator, doc: unknown): doc is AnyResource {
  return validate(doc);
}

/** Validates (and fills in defaults of) one document of a known kind. */
export function checkSchema(kind: Kind, doc: unknown): { resource: AnyResource; issues: [] } | { resource?: undefined; issues: SchemaIssue[] } {
  const validate = validators[kind];
  if (conforms(validate, doc)) return { resource: doc, issues: [] };
  return { issues: translate(validate.errors ?? []) };
}

/** '/spec/disks/0/name' -> 'spec.disks[0].name' */
export function fieldName(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((part) => part.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((acc, part) => (/^\d+$/.test(part) ? `${acc}[${part}]` : acc ? `${acc}.${part}` : part), '');
}

/** A value from the input as JSON, cut short for a message. */
export function show(value: unknown): string {
  const text = JSON.stringify(value);
  if (text === undefined) return String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function typeOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  return `${typeof value} ${show(value)}`;
}

function translate(errors: ErrorObject[]): SchemaIssue[] {
  const issues: SchemaIssue[] = [];
  const seen = new Set<string>();
  const push = (issue: SchemaIssue) => {
    const key = `${issue.pointer}|${issue.message}`;
    if (!seen.has(key)) {
      seen.add(key);
      issues.push(issue);
    }
  };
  for (const e of errors) {
    const field = fieldName(e.instancePath);
    const where = field ? `${field}: ` : '';
    const hint = (e.parentSchema as { description?: string } | undefined)?.description;
    switch (e.keyword) {
      case 'required': {
        const missing = (e.params as { missingProperty: string }).missingProperty;
        push({ pointer: e.instancePath, atValue: false, message: `missing required field "${field ? `${field}.` : ''}${missing}"` });
        break;
      }
      case 'additionalProperties': {
        const extra = (e.params as { additionalProperty: string }).additionalProperty;
        const known = Object.keys((e.parentSchema as { properties?: object }).properties ?? {});
        const guess = closest(extra, known);
        push({
          pointer: `${e.instancePath}/${pointerEscape(extra)}`,
          atValue: false,
          message: `unknown field ${show(`${field ? `${field}.` : ''}${extra}`)}${guess ? ` (did you mean "${guess}"?)` : ''}`,
        });
        break;
      }
      case 'propertyNames': {
        const name = (e.params as { propertyName: string }).propertyName;
        const inner = errors.find((x) => x !== e && x.instancePath === e.instancePath && x.keyword === 'pattern');
        const what = (inner?.parentSchema as { description?: string } | undefined)?.description ?? 'a valid key';
        push({ pointer: `${e.instancePath}/${pointerEscape(name)}`, atValue: false, message: `${where}key ${show(name)} is not ${what}` });
        break;
      }
      case 'enum': {
        const allowed = (e.params as { allowedValues: unknown[] }).allowedValues.map(String).join(', ');
        push({ pointer: e.instancePath, atValue: true, message: `${where}must be one of ${allowed} (got ${show(e.data)})` });
        break;
      }
      case 'const':
        push({ pointer: e.instancePath, atValue: true, message: `${where}must be ${show((e.params as { allowedValue: unknown }).allowedValue)} (got ${show(e.data)})` });
        break;
      case 'type': {
        const want = (e.params as { type: string }).type;
        const article = /^[aeiou]/.test(want) ? 'an' : 'a';
        const wantText = want === 'object' ? 'a mapping' : want === 'array' ? 'a list' : `${article} ${want}`;
        // A block list or mapping starts on the line after its key: point at the key instead.
        const collection = typeof e.data === 'object' && e.data !== null;
        // A string with a format says which (memory: 512 -> 'a string, a size such as 512Mi or 2Gi').
        const what = want === 'string' && hint ? `${wantText}, ${hint}` : wantText;
        push({ pointer: e.instancePath, atValue: !collection, message: `${where}must be ${what} (got ${typeOf(e.data)})` });
        break;
      }
      case 'pattern':
      case 'format':
        // propertyNames' inner pattern error is reported by the propertyNames case.
        if (errors.some((x) => x.keyword === 'propertyNames' && x.instancePath === e.instancePath)) break;
        push({ pointer: e.instancePath, atValue: true, message: `${where}${show(e.data)} is not ${hint ?? `valid (${e.message})`}` });
        break;
      case 'minimum':
      case 'maximum':
      case 'exclusiveMinimum':
      case 'exclusiveMaximum': {
        const limit = (e.params as { limit: number }).limit;
        const word = e.keyword.endsWith('inimum') ? 'at least' : 'at most';
        push({ pointer: e.instancePath, atValue: true, message: `${where}must be ${word} ${limit} (got ${show(e.data)})` });
        break;
      }
      case 'minLength':
      case 'maxLength': {
        const limit = (e.params as { limit: number }).limit;
        const word = e.keyword === 'minLength' ? 'at least' : 'at most';
        push({ pointer: e.instancePath, atValue: true, message: `${where}must be ${word} ${limit} character${limit === 1 ? '' : 's'} long` });
        break;
      }
      case 'minItems':
      case 'maxItems':
      case 'minProperties':
      case 'maxProperties': {
        const limit = (e.params as { limit: number }).limit;
        const word = e.keyword.startsWith('min') ? 'at least' : 'at most';
        const nouns = e.keyword.endsWith('Items') ? ['item', 'items'] : ['entry', 'entries'];
        const unit = nouns[limit === 1 ? 0 : 1];
        push({ pointer: e.instancePath, atValue: false, message: `${where}must have ${word} ${limit} ${unit}` });
        break;
      }
      default:
        push({ pointer: e.instancePath, atValue: false, message: `${where}${e.message ?? 'is invalid'}` });
    }
  }
  return issues;
}

/** The known name nearest to a misspelt one, when it is near enough to be a likely typo. */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      bestDistance = d;
      best = c;
    }
  }
  return bestDistance <= Math.max(1, Math.floor(word.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 3) return Infinity;
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

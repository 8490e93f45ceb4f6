// Shape checks for what the store reads back. State files can be truncated by a full disk or edited by
// hand; a file of the wrong shape must fail here, with a message naming it, and never deep inside a caller
// ("records.filter is not a function").
import { UserError, printable } from '../errors.ts';

/** A state file that exists but cannot be used: unreadable, not JSON, or not of the expected shape. */
export class CorruptStateError extends UserError {
  override name = 'CorruptStateError';
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`state file ${printable(file)} is unusable: ${printable(reason)}`);
  }
}

type Obj = Record<string, unknown>;

export function isObject(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Collects the first problem; check functions return it (or undefined when the value is fine). */
function need(ok: boolean, what: string): string | undefined {
  return ok ? undefined : what;
}

const isString = (v: unknown): v is string => typeof v === 'string';
const optString = (v: unknown) => v === undefined || isString(v);
const isStringMap = (v: unknown) => v === undefined || (isObject(v) && Object.values(v).every(isString));
const isCount = (v: unknown, min: number) => Number.isInteger(v) && (v as number) >= min;

/** Why a parsed resource file is not a stored resource of that kind and name (undefined: it is). */
export function resourceProblem(v: unknown, kind: string, name: string): string | undefined {
  if (!isObject(v)) return 'not a JSON object';
  const meta = v.metadata;
  const src = v.source;
  return (
    need(isString(v.apiVersion), 'apiVersion is not a string') ??
    need(v.kind === kind, `kind is not ${kind}`) ??
    need(isObject(meta), 'metadata is not an object') ??
    need(isObject(meta) && meta.name === name, `metadata.name is not ${name}`) ??
    need(isObject(meta) && isStringMap(meta.labels) && isStringMap(meta.annotations), 'labels or annotations are not string maps') ??
    need(isObject(v.spec), 'spec is not an object') ??
    need(isObject(src) && isString(src.path) && isString(src.digest) && optString(src.commit), 'source is not {path, digest}') ??
    need(isObject(src) && (src.signer === undefined || (isObject(src.signer) && isString(src.signer.keyId) && isString(src.signer.alg))), 'source.signer is malformed') ??
    need(isCount(v.generation, 1), 'generation is not a positive integer') ??
    need(isString(v.appliedAt), 'appliedAt is not a string') ??
    need(v.suspended === undefined || typeof v.suspended === 'boolean', 'suspended is not a boolean') ??
    need(optString(v.deletionRequestedAt), 'deletionRequestedAt is not a string')
  );
}

export function statusProblem(v: unknown, kind: string, name: string): string | undefined {
  if (!isObject(v)) return 'not a JSON object';
  return (
    need(v.kind === kind && v.name === name, `does not name ${kind}/${name}`) ??
    need(isCount(v.observedGeneration, 0), 'observedGeneration is not an integer') ??
    need(isString(v.phase), 'phase is not a string') ??
    need(
      Array.isArray(v.conditions) &&
        v.conditions.every((c) => isObject(c) && isString(c.type) && isString(c.status) && isString(c.reason) && isString(c.message) && isString(c.lastTransitionTime)),
      'conditions is not a list of conditions',
    ) ??
    need(isObject(v.fields), 'fields is not an object') ??
    need(isString(v.updatedAt), 'updatedAt is not a string')
  );
}

function driftRecordProblem(r: unknown, resource: string): string | undefined {
  if (!isObject(r)) return 'an entry is not an object';
  return (
    need(r.resource === resource, `an entry is not about ${resource}`) ??
    need(
      [r.id, r.field, r.desired, r.actual, r.detectedAt, r.lastSeenAt].every(isString) && optString(r.healedAt),
      'an entry lacks id, field, desired, actual, detectedAt or lastSeenAt',
    ) ??
    need(isCount(r.count, 0), 'an entry has no count') ??
    need(r.policy === 'heal' || r.policy === 'warn', 'an entry has no policy') ??
    need(r.state === 'open' || r.state === 'healed', 'an entry is neither open nor healed')
  );
}

export function driftProblem(v: unknown, resource: string): string | undefined {
  if (!Array.isArray(v)) return 'not a JSON list of drift records';
  for (const r of v) {
    const p = driftRecordProblem(r, resource);
    if (p) return p;
  }
  return undefined;
}

export function requestProblem(v: unknown): string | undefined {
  return need(isObject(v) && Array.isArray(v.keys) && v.keys.every((k) => isString(k) && k.length < 200), 'not {"keys": [strings]}');
}

export function eventProblem(v: unknown): string | undefined {
  return need(
    isObject(v) && isString(v.time) && isString(v.resource) && (v.type === 'Normal' || v.type === 'Warning') && isString(v.reason) && isString(v.message),
    'not an event',
  );
}

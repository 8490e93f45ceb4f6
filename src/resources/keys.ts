// Object keys: 'Kind/name', the one way a resource is named across the store, engine, CLI and events.
import { UserError } from '../errors.ts';
import { isDnsLabel } from '../names.ts';
import { isKind, type Kind } from './kinds.ts';

export type ObjectKey<K extends Kind = Kind> = `${K}/${string}`;

export function keyOf<K extends Kind>(r: { kind: K; metadata: { name: string } }): ObjectKey<K>;
export function keyOf(r: { kind: string; metadata: { name: string } }): ObjectKey;
export function keyOf(r: { kind: string; metadata: { name: string } }): ObjectKey {
  return `${r.kind}/${r.metadata.name}` as ObjectKey;
}

/** The key of a kind and name. */
export function makeKey<K extends Kind>(kind: K, name: string): ObjectKey<K> {
  return `${kind}/${name}`;
}

/** Splits and checks 'Kind/name'; a one-line UserError when it is not a known kind and a DNS label. */
export function parseKey(key: string): { kind: Kind; name: string } {
  const slash = key.indexOf('/');
  if (slash < 0) throw new UserError(`invalid resource reference ${JSON.stringify(key)}: expected Kind/name`);
  const kind = key.slice(0, slash);
  const name = key.slice(slash + 1);
  if (!isKind(kind)) throw new UserError(`invalid resource reference ${JSON.stringify(key)}: unknown kind ${JSON.stringify(kind)}`);
  if (!isDnsLabel(name)) throw new UserError(`invalid resource reference ${JSON.stringify(key)}: name must be a lowercase DNS label`);
  return { kind, name };
}

export function isObjectKey(value: unknown): value is ObjectKey {
  if (typeof value !== 'string') return false;
  try {
    parseKey(value);
    return true;
  } catch {
    return false;
  }
}

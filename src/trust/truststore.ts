// The trust store: a directory of NAME.pub files. Only signatures by these keys are accepted.
// Its entries may be hostile or broken; a bad one is skipped with a warning, never fatal, so one stray
// file cannot take verification down (and cannot add trust either).
import fs from 'node:fs/promises';
import path from 'node:path';
import { oneLine, printable } from '../errors.ts';
import { fsReason, readPublicKey, type PublicKeyRecord } from './keys.ts';

export type { PublicKeyRecord } from './keys.ts';

export interface TrustStore {
  dir: string;
  keys: Map<string /* keyId */, PublicKeyRecord>;
  warnings: string[];
}

/** Loads every *.pub in dir. A missing dir is an empty store (nothing trusted), not an error. */
export async function loadTrustStore(dir: string): Promise<TrustStore> {
  const store: TrustStore = { dir, keys: new Map(), warnings: [] };
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      store.warnings.push(`trust store ${printable(dir)} unreadable (${fsReason(err)}); no key is trusted`);
    }
    return store;
  }
  for (const name of names.filter((n) => n.endsWith('.pub')).sort()) {
    const file = path.join(dir, name);
    try {
      const key = await readPublicKey(file);
      const first = store.keys.get(key.keyId);
      if (first) {
        store.warnings.push(`trust store: ${printable(file)} holds the same key ${key.keyId} as ${printable(first.path ?? '')} (skipped)`);
        continue;
      }
      store.keys.set(key.keyId, key);
    } catch (err) {
      store.warnings.push(`trust store: ${oneLine(err)} (skipped)`);
    }
  }
  return store;
}

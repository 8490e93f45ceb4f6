// Opening the state directory for commands that only read it (get, describe, drift).
import fs from 'node:fs/promises';
import { stateDir } from '../config.ts';
import { isErrno } from '../store/atomic.ts';
import { Store } from '../store/store.ts';

/** The store, or undefined when the state directory does not exist yet (a read never creates it). */
export async function openStoreForRead(env: NodeJS.ProcessEnv = process.env): Promise<Store | undefined> {
  const dir = stateDir(env);
  try {
    await fs.stat(dir);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
  return Store.open(dir);
}

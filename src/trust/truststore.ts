// The trust store: a directory of NAME.pub files. Only signatures by these keys are accepted.
// Its entries may be hostile or broken; a bad one is skipped with a warning, never fatal, so one stray
// file cannot take verification down (and cannot add trust either).
// Who may write it is another matter (sshd's StrictModes): a trust store or key that someone other than
// root or the running user owns or could write would let them add trust, so it is refused outright.
import fs from 'node:fs/promises';
import path from 'node:path';
import { UserError, oneLine, printable } from '../errors.ts';
import { fsReason, readPublicKey, type PublicKeyRecord } from './keys.ts';

export type { PublicKeyRecord } from './keys.ts';

export interface TrustStore {
  dir: string;
  keys: Map<string /* keyId */, PublicKeyRecord>;
  warnings: string[];
}

/**
 * Throws a one-line UserError unless path (followed if a symbolic link) is owned by root or the running
 * user and not writable by group or others. `what` names it in the message ("trust store", ...).
 * Returns false when it does not exist.
 */
export async function assertPrivate(file: string, what: string): Promise<boolean> {
  let st;
  try {
    st = await fs.stat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  const me = process.getuid?.();
  if (me === undefined) return true; // no uids on this platform
  if (st.uid !== 0 && st.uid !== me) {
    throw new UserError(`refusing ${what} ${printable(file)}: owned by uid ${st.uid}, not by root or the running user (uid ${me})`);
  }
  if ((st.mode & 0o022) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new UserError(`refusing ${what} ${printable(file)}: writable by group or others (mode ${mode}); fix with chmod go-w ${printable(file)}`);
  }
  return true;
}

/**
 * Loads every *.pub in dir. A missing dir is an empty store (nothing trusted), not an error; a dir or key
 * that others could write is refused (UserError), see the header.
 */
export async function loadTrustStore(dir: string): Promise<TrustStore> {
  const store: TrustStore = { dir, keys: new Map(), warnings: [] };
  if (!(await assertPrivate(dir, 'trust store').catch(unlessPermission))) return store;
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
    // A symbolic link is judged by its target: a safe link to a file anyone can write adds nothing safe.
    await assertPrivate(file, 'trusted key').catch(unlessPermission);
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

/** Ownership refusals propagate; other stat failures (a dangling link, a loop) are left to the reader, which warns. */
function unlessPermission(err: unknown): true {
  if (err instanceof UserError) throw err;
  return true;
}

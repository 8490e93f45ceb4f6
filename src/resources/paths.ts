// Image paths (kernels, initrds, backing images) must stay under the image root: no absolute paths,
// no '..', and no symlink that leads out of it.
import { realpathSync } from 'node:fs';
import path from 'node:path';

/** Why a relative image path escapes the root, or undefined when it stays inside. */
export function imagePathEscape(root: string, relative: string): string | undefined {
  if (path.isAbsolute(relative)) return 'is absolute; paths are relative to the image root';
  if (relative.split(/[\\/]/).includes('..')) return "contains '..'; paths must stay under the image root";
  const realRoot = realOrSelf(root);
  // Resolve the deepest part of the path that exists: a symlink anywhere along it counts.
  let probe = path.resolve(root, relative);
  for (;;) {
    try {
      const real = realpathSync(probe);
      if (real !== realRoot && !real.startsWith(realRoot + path.sep)) {
        return `leads out of the image root through a symlink (to ${real})`;
      }
      return undefined;
    } catch {
      const parent = path.dirname(probe);
      if (parent === probe || !parent.startsWith(path.resolve(root))) return undefined;
      probe = parent;
    }
  }
}

function realOrSelf(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

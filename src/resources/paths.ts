// Image paths (kernels, initrds, backing images) must stay under the image root: no absolute paths,
// no '..', and no symlink that leads out of it.
import { lstatSync, readlinkSync, realpathSync } from 'node:fs';
import path from 'node:path';

/** Symlink hops followed before giving up, as the kernel's ELOOP limit does. */
const MAX_SYMLINK_HOPS = 40;

/** Why a relative image path escapes the root, or undefined when it stays inside. */
export function imagePathEscape(root: string, relative: string): string | undefined {
  if (path.isAbsolute(relative)) return 'is absolute; paths are relative to the image root';
  if (relative.split(/[\\/]/).includes('..')) return "contains '..'; paths must stay under the image root";
  const realRoot = realOrSelf(root);
  const real = leadsTo(path.resolve(root, relative));
  if (real !== realRoot && !real.startsWith(realRoot + path.sep)) {
    return `leads out of the image root through a symlink (to ${real})`;
  }
  return undefined;
}

/**
 * Where a path leads once every symlink along it is followed, also where the path does not exist
 * (yet): a dangling symlink counts by its target, since that is where a file created later would be.
 */
function leadsTo(p: string, hops = 0): string {
  try {
    return realpathSync(p);
  } catch {
    // Not there (or a dangling link): resolve the parent, then look at this last component.
  }
  const parent = path.dirname(p);
  if (parent === p) return p;
  const here = path.join(leadsTo(parent, hops), path.basename(p));
  const target = hops < MAX_SYMLINK_HOPS ? linkTarget(here) : undefined;
  return target === undefined ? here : leadsTo(path.resolve(path.dirname(here), target), hops + 1);
}

/** A symlink's target, or undefined when p is not a symlink (or vanished meanwhile). */
function linkTarget(p: string): string | undefined {
  try {
    return lstatSync(p).isSymbolicLink() ? readlinkSync(p) : undefined;
  } catch {
    return undefined;
  }
}

function realOrSelf(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/**
 * The first component of `relative` under `root` that is a symlink (as a relative path), or undefined.
 * Files qwamos creates and deletes itself (disks) must not go through any symlink at all.
 */
export function symlinkOnPath(root: string, relative: string): string | undefined {
  const parts = relative.split(/[\\/]/).filter(Boolean);
  for (let i = 1; i <= parts.length; i++) {
    const rel = parts.slice(0, i).join('/');
    if (linkTarget(path.join(root, rel)) !== undefined) return rel;
  }
  return undefined;
}

/** Why qwamos must not create or delete a file at `relative` under `root` (escape or symlink), or undefined. */
export function ownedPathProblem(root: string, relative: string): string | undefined {
  const escape = imagePathEscape(root, relative);
  if (escape) return `${relative} ${escape}`;
  const link = symlinkOnPath(root, relative);
  return link ? `${relative}: ${link} is a symlink; qwamos does not create or delete files through symlinks` : undefined;
}

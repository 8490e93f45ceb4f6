// Which git source a stored resource came from: its source path is 'gitsource/NAME:path/in/repo'.
// Pruning and conflict detection go by this alone, so a resource someone re-applied from a file
// (`apply -f`) is no longer the source's until the source takes it back.

/** The source path of a resource applied by git source `name` from `file` (a path inside the repository). */
export function gitSourcePath(name: string, file: string): string {
  return `gitsource/${name}:${file}`;
}

/** The git source that applied a resource with this source path, or undefined (a file, or nothing). */
export function gitSourceOf(sourcePath: string): string | undefined {
  const m = /^gitsource\/([a-z0-9]([-a-z0-9]*[a-z0-9])?):/.exec(sourcePath);
  return m?.[1];
}

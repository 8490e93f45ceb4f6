#!/usr/bin/env node
// The qwamos command. It runs the compiled JavaScript in dist/ (built by `npm run build`, which the setup
// script runs). A checkout whose sources are newer than its build (a developer editing src/) runs the
// TypeScript sources through tsx instead, so it never runs stale code.
import { readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

function newestSource(dir) {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    newest = Math.max(newest, e.isDirectory() ? newestSource(p) : statSync(p).mtimeMs);
  }
  return newest;
}

function buildIsFresh() {
  try {
    return statSync(`${root}dist/.built`).mtimeMs >= newestSource(`${root}src`);
  } catch {
    return false;
  }
}

let main;
if (buildIsFresh()) {
  // Source maps are turned on by main() for the daemons and QWAMOS_DEBUG only: reading a .map for each
  // module costs ~25 ms at every start, and a short command prints one-line errors, never a stack.
  ({ main } = await import('../dist/cli/main.js'));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../src/cli/main.ts'));
}
process.exitCode = await main(process.argv.slice(2));

// Start-up of the real bin: a command loads only the modules it uses. `qwamos get` and `qwamos --help`
// never load the engine (XState), the drivers (QEMU, ip, nft), ML-DSA, ajv, js-yaml, etcd or the cluster
// code: each of those is tens of milliseconds of a start-up whose goal is 0.2 s in all (issue 10).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tempDirs: string[] = [];

after(async () => {
  await Promise.all(tempDirs.map((dir) => fs.rm(dir, { recursive: true, force: true })));
});

// Every module the child loads, one line each in OUT: ES modules from a loader hook (it runs in its own
// thread, so it appends to the file itself), CommonJS ones from require's cache when the process exits.
const hooks = (out: string) =>
  `import { appendFileSync } from 'node:fs';
export async function load(url, context, next) { appendFileSync(${JSON.stringify(out)}, url + '\\n'); return next(url, context); }`;
const preload = (out: string) =>
  `import { register, createRequire } from 'node:module';
import { appendFileSync } from 'node:fs';
register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hooks(out))}));
const Module = createRequire(${JSON.stringify(`${repoRoot}/`)})('node:module');
process.on('exit', () => appendFileSync(${JSON.stringify(out)}, Object.keys(Module._cache).join('\\n') + '\\n'));`;

/** The repository modules and packages `qwamos ARGS` loads (the TypeScript loader's own excluded). */
async function modulesLoadedBy(...args: string[]): Promise<{ repo: string[]; packages: string[] }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-startup-'));
  tempDirs.push(dir);
  const out = path.join(dir, 'loaded.txt');
  const env: NodeJS.ProcessEnv = { ...process.env, QWAMOS_STATE_DIR: path.join(dir, 'state') };
  delete env.QWAMOS_DEBUG;
  const r = spawnSync(process.execPath, ['--import', `data:text/javascript,${encodeURIComponent(preload(out))}`, 'bin/qwamos.js', ...args], { cwd: repoRoot, env, encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  const loaded = (await fs.readFile(out, 'utf8')).split('\n').filter(Boolean).map((u) => (u.startsWith('file:') ? fileURLToPath(u) : u));
  const repo = new Set<string>();
  const packages = new Set<string>();
  for (const file of loaded) {
    const pkg = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(file)?.[1];
    if (pkg) packages.add(pkg);
    else if (file.startsWith(repoRoot)) repo.add(path.relative(repoRoot, file).replace(/^(src|dist)\//, '').replace(/\.(ts|js)$/, ''));
  }
  for (const loader of ['tsx', 'esbuild', '@esbuild', 'get-tsconfig', 'resolve-pkg-maps']) packages.delete(loader);
  return { repo: [...repo].sort(), packages: [...packages].sort() };
}

const HEAVY_PACKAGES = ['xstate', '@noble/post-quantum', '@noble/hashes', 'ajv', 'ajv-formats', 'js-yaml', 'etcd3', '@grpc/grpc-js', 'execa', 'chokidar', 'isomorphic-git'];
const HEAVY_DIRS = /^(engine\/(?!phase$)|drivers\/|controllers\/|trust\/|cluster\/|firewall\/|git\/(?!owner$|spec$)|runtime$|daemon$)/;

for (const args of [['--help'], ['get', 'all'], ['get', 'vm']]) {
  test(`qwamos ${args.join(' ')} loads only what it uses`, async () => {
    const { repo, packages } = await modulesLoadedBy(...args);
    assert.ok(repo.includes('cli/main'), `the probe saw the bin load cli/main: ${repo.join(' ')}`);
    assert.deepEqual(packages.filter((p) => HEAVY_PACKAGES.includes(p)), [], `packages loaded: ${packages.join(' ')}`);
    assert.deepEqual(repo.filter((m) => HEAVY_DIRS.test(m)), [], `modules loaded: ${repo.join(' ')}`);
  });
}

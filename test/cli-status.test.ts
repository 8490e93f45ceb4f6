// End-to-end tests of `qwamos get`, `describe` and `drift` over a state dir filled through the Store API.
// They run the real bin.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { load } from 'js-yaml';
import { formatAge, parseKinds, renderTable, resolveKind, toJson, toYaml } from '../src/cli/format.ts';
import { Store } from '../src/store/store.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const entry = ['bin/qwamos.js'];
const tempDirs: string[] = [];

after(async () => {
  await Promise.all(tempDirs.map((dir) => fs.rm(dir, { recursive: true, force: true })));
});

async function freshState(): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-cli-status-'));
  tempDirs.push(dir);
  return dir;
}

interface Run { code: number | null; stdout: string; stderr: string }

function env(state: string): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env, QWAMOS_STATE_DIR: state };
  delete e.QWAMOS_DEBUG;
  return e;
}

function noStackTrace(text: string, args: string[]): void {
  assert.doesNotMatch(text, /^ {4}at /m, `stack trace in output of qwamos ${args.join(' ')}:\n${text}`);
}

/** Runs qwamos ...args against the state dir; every run is checked for leaked stack traces and raw escapes. */
function qwamos(state: string, ...args: string[]): Run {
  const r = spawnSync(process.execPath, [...entry, ...args], { cwd: repoRoot, env: env(state), encoding: 'utf8', timeout: 60_000 });
  const run = { code: r.status, stdout: r.stdout, stderr: r.stderr };
  for (const text of [run.stdout, run.stderr]) {
    noStackTrace(text, args);
    assert.doesNotMatch(text, /[\u001b\u0007\u009b\u202e]/, `raw control character in output of qwamos ${args.join(' ')}`);
  }
  return run;
}

const API = 'qwamos.io/v1alpha1';
const src = (name: string, commit?: string) => ({ path: `/manifests/${name}.yaml`, digest: 'ab12'.repeat(16), ...(commit ? { commit } : {}) });

/**
 * A populated store: Route/dev ready (with drift and events), VirtualMachine/dev stalled (with a hostile
 * message), VirtualMachine/old suspended and 3 days old, FirewallPolicy/web being deleted, GpuTrustLevel/low
 * with no status yet.
 */
async function populated(): Promise<{ state: string; store: Store }> {
  const state = await freshState();
  const store = await Store.open(state);
  await store.putResource(
    { apiVersion: API, kind: 'Route', metadata: { name: 'dev', labels: { tier: 'net' } }, spec: { vm: 'dev', mode: 'tor', address: '10.8.0.2/24' } },
    { ...src('dev', '0123456789abcdef0123456789abcdef01234567'), signer: { keyId: 'fedcba9876543210fedcba9876543210', alg: 'ml-dsa-65', name: 'alice' } },
  );
  await store.putResource(
    { apiVersion: API, kind: 'VirtualMachine', metadata: { name: 'dev' }, spec: { runStrategy: 'Running', cpus: 2, memory: '1Gi', network: { route: 'dev' } } },
    src('vm-dev'),
  );
  await store.putResource({ apiVersion: API, kind: 'VirtualMachine', metadata: { name: 'old' }, spec: { runStrategy: 'Stopped' } }, src('vm-old'));
  await store.putResource({ apiVersion: API, kind: 'FirewallPolicy', metadata: { name: 'web' }, spec: { defaultAction: 'drop' } }, src('fw'));
  await store.putResource({ apiVersion: API, kind: 'GpuTrustLevel', metadata: { name: 'low' }, spec: { level: 1 } }, src('gpu'));

  await store.updateStatus('Route', 'dev', {
    phase: 'Ready',
    observedGeneration: 1,
    conditions: [{ type: 'Ready', status: 'True', reason: 'Reconciled', message: 'netns qw-dev is up' }],
    fields: { netns: 'qw-dev' },
  });
  await store.updateStatus('VirtualMachine', 'dev', {
    phase: 'Failed',
    observedGeneration: 1,
    conditions: [
      { type: 'Ready', status: 'False', reason: 'Stalled', message: 'not ready' },
      { type: 'Stalled', status: 'True', reason: 'NoAccel', message: 'no accelerator \u001b[31m\u202e available' },
    ],
  });
  await store.updateStatus('VirtualMachine', 'old', {
    phase: 'Stopped',
    observedGeneration: 1,
    conditions: [{ type: 'Ready', status: 'True', reason: 'Stopped', message: 'stopped as declared' }],
  });
  await store.updateStatus('FirewallPolicy', 'web', { phase: 'Ready', observedGeneration: 1, conditions: [{ type: 'Ready', status: 'True', reason: 'Reconciled', message: '' }] });
  await store.setSuspended('VirtualMachine', 'old', true);
  await store.markForDeletion('FirewallPolicy', 'web');
  // Age the old VM by three days (the store stamps appliedAt itself).
  const oldFile = path.join(state, 'resources', 'VirtualMachine', 'old.json');
  const old = JSON.parse(await fs.readFile(oldFile, 'utf8'));
  old.appliedAt = new Date(Date.now() - 3 * 86_400_000 - 60_000).toISOString();
  await fs.writeFile(oldFile, JSON.stringify(old));

  await store.appendEvent({ resource: 'Route/dev', type: 'Normal', reason: 'NetnsCreated', message: 'created netns qw-dev' });
  await store.appendEvent({ resource: 'Route/dev', type: 'Warning', reason: 'DriftDetected', message: 'netns qw-dev vanished \u0007' });
  await store.appendEvent({ resource: 'VirtualMachine/dev', type: 'Warning', reason: 'NoAccel', message: 'other resource event' });
  await store.recordDrift({ resource: 'Route/dev', field: 'netns', desired: 'qw-dev', actual: '', policy: 'heal' });
  await store.recordDrift({ resource: 'Route/dev', field: 'veth', desired: 'qw-dev-h', actual: 'missing', policy: 'warn' });
  await store.resolveDrift('Route/dev', 'veth');
  return { state, store };
}

/** Table rows as arrays of cells (columns are separated by 2+ spaces). */
function rows(text: string): string[][] {
  return text
    .trimEnd()
    .split('\n')
    .map((line) => line.trim().split(/ {2,}/));
}

describe('format helpers', () => {
  test('formatAge is kubectl-short', () => {
    const now = Date.parse('2026-01-10T00:00:00Z');
    const ago = (ms: number) => new Date(now - ms).toISOString();
    assert.equal(formatAge(ago(5_000), now), '5s');
    assert.equal(formatAge(ago(3 * 60_000 + 5_000), now), '3m');
    assert.equal(formatAge(ago(2 * 3_600_000 + 59 * 60_000), now), '2h');
    assert.equal(formatAge(ago(4 * 86_400_000), now), '4d');
    assert.equal(formatAge(ago(800 * 86_400_000), now), '2y');
    assert.equal(formatAge(new Date(now + 5_000).toISOString(), now), '0s');
    assert.equal(formatAge('garbage', now), '<unknown>');
    assert.equal(formatAge(undefined, now), '<unknown>');
  });

  test('kinds by name, alias and plural in any case; all; lists; unknown is a usage error', () => {
    assert.equal(resolveKind('vm'), 'VirtualMachine');
    assert.equal(resolveKind('VMs'), 'VirtualMachine');
    assert.equal(resolveKind('routes'), 'Route');
    assert.equal(resolveKind('rt'), 'Route');
    assert.equal(resolveKind('FirewallPolicy'), 'FirewallPolicy');
    assert.equal(resolveKind('fws'), 'FirewallPolicy');
    assert.equal(resolveKind('gpus'), 'GpuTrustLevel');
    assert.equal(resolveKind('NODE'), 'ClusterNode');
    assert.equal(resolveKind('gs'), 'GitSource');
    assert.equal(resolveKind('pods'), undefined);
    assert.equal(parseKinds(undefined).length, 6);
    assert.equal(parseKinds('ALL').length, 6);
    assert.deepEqual(parseKinds('vm,rt,vms'), ['VirtualMachine', 'Route']);
    assert.throws(() => parseKinds('pods'), { name: 'UsageError', message: /known kinds: VirtualMachine \(vm\), Route \(rt\)/ });
  });

  test('renderTable aligns columns, escapes cells and leaves no trailing blanks', () => {
    const text = renderTable(['A', 'LONGER'], [['x\u001by', ''], ['abcdef', 'z']], { indent: '  ' });
    assert.equal(text, '  A          LONGER\n  x\\u001by\n  abcdef     z\n');
  });

  test('toJson and toYaml escape terminal-active characters and still parse back', () => {
    const value = { a: 'x\u001b[2Jy', b: 'bidi\u202eevil', c: 'del\u007f\u0085', 'k\u2066': ['l\u2028'] };
    const json = toJson(value);
    const yaml = toYaml(value);
    for (const text of [json, yaml]) assert.doesNotMatch(text, /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/);
    assert.deepEqual(JSON.parse(json), value);
    assert.deepEqual(load(yaml), value);
  });
});

describe('qwamos get', () => {
  test('lists every kind in a table sorted by kind then name, with READY, STATUS and AGE', async () => {
    const { state } = await populated();
    const r = qwamos(state, 'get');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    assert.deepEqual(rows(r.stdout), [
      ['KIND', 'NAME', 'READY', 'STATUS', 'AGE'],
      ['FirewallPolicy', 'web', 'True', 'Deleting', rows(r.stdout)[1]![4]!],
      ['GpuTrustLevel', 'low', 'Unknown', 'Pending', rows(r.stdout)[2]![4]!],
      ['Route', 'dev', 'True', 'Ready', rows(r.stdout)[3]![4]!],
      ['VirtualMachine', 'dev', 'False', 'Failed', rows(r.stdout)[4]![4]!],
      ['VirtualMachine', 'old', 'True', 'Suspended', '3d'],
    ]);
    for (const row of rows(r.stdout).slice(1, 5)) assert.match(row[4]!, /^\d+s$/);
    const withoutAge = (text: string) => rows(text).map((row) => row.slice(0, 4));
    assert.deepEqual(withoutAge(qwamos(state, 'get', 'all').stdout), withoutAge(r.stdout));
  });

  test('-o wide adds GEN, OBSERVED, DETAIL, SOURCE (with the commit), SIGNER and MESSAGE (the Stalled one when stalled), escaped', async () => {
    const { state } = await populated();
    const r = qwamos(state, 'get', '-o', 'wide');
    assert.equal(r.code, 0, r.stderr);
    const table = rows(r.stdout);
    assert.deepEqual(table[0], ['KIND', 'NAME', 'READY', 'STATUS', 'AGE', 'GEN', 'OBSERVED', 'DETAIL', 'SOURCE', 'SIGNER', 'MESSAGE']);
    const route = table.find((row) => row[0] === 'Route')!;
    assert.deepEqual(route.slice(5), ['1', '1', 'netns qw-dev', '/manifests/dev.yaml@0123456', 'alice:fedcba987654', 'netns qw-dev is up']);
    const vm = table.find((row) => row[0] === 'VirtualMachine' && row[1] === 'dev')!;
    assert.equal(vm[10], 'no accelerator \\u001b[31m\\u202e available');
    const gpu = table.find((row) => row[0] === 'GpuTrustLevel')!;
    assert.deepEqual(gpu.slice(5), ['1', '-', '-', '/manifests/gpu.yaml', '<unsigned>']);
  });

  test('-o json prints an array of {apiVersion, kind, metadata, spec, status}; one NAME prints one object', async () => {
    const { state } = await populated();
    const r = qwamos(state, 'get', '-o', 'json');
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout);
    assert.ok(Array.isArray(list));
    assert.deepEqual(list.map((o: any) => `${o.kind}/${o.metadata.name}`), [
      'FirewallPolicy/web', 'GpuTrustLevel/low', 'Route/dev', 'VirtualMachine/dev', 'VirtualMachine/old',
    ]);
    const route = list.find((o: any) => o.kind === 'Route');
    assert.equal(route.apiVersion, API);
    assert.deepEqual(route.metadata, { name: 'dev', labels: { tier: 'net' } });
    assert.deepEqual(route.spec, { vm: 'dev', mode: 'tor', address: '10.8.0.2/24' });
    assert.equal(route.status.phase, 'Ready');
    assert.equal(route.status.observedGeneration, 1);
    assert.equal(route.status.conditions[0].type, 'Ready');
    assert.deepEqual(route.status.fields, { netns: 'qw-dev' });
    assert.equal(list.find((o: any) => o.kind === 'GpuTrustLevel').status, null);
    const vm = list.find((o: any) => o.metadata.name === 'dev' && o.kind === 'VirtualMachine');
    assert.equal(vm.status.conditions[1].message, 'no accelerator \u001b[31m\u202e available'); // escaped in text, intact as data

    const one = qwamos(state, 'get', 'route', 'dev', '-o', 'json');
    assert.equal(one.code, 0, one.stderr);
    const obj = JSON.parse(one.stdout);
    assert.ok(!Array.isArray(obj));
    assert.equal(obj.kind, 'Route');
    assert.equal(obj.status.phase, 'Ready');
  });

  test('-o yaml loads back to the same objects as -o json', async () => {
    const { state } = await populated();
    const r = qwamos(state, 'get', '-o', 'yaml');
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(load(r.stdout), JSON.parse(qwamos(state, 'get', '-o', 'json').stdout));
    const one = qwamos(state, 'get', 'vm', 'dev', '-o', 'yaml');
    assert.equal(one.code, 0, one.stderr);
    assert.equal((load(one.stdout) as any).status.phase, 'Failed');
  });

  test('short names, plurals, any case, KIND/NAME and comma lists', async () => {
    const { state } = await populated();
    const names = (...args: string[]) => {
      const r = qwamos(state, 'get', ...args);
      assert.equal(r.code, 0, r.stderr);
      return rows(r.stdout).slice(1).map((row) => `${row[0]}/${row[1]}`);
    };
    assert.deepEqual(names('vm'), ['VirtualMachine/dev', 'VirtualMachine/old']);
    assert.deepEqual(names('VirtualMachines'), ['VirtualMachine/dev', 'VirtualMachine/old']);
    assert.deepEqual(names('routes'), ['Route/dev']);
    assert.deepEqual(names('rt'), ['Route/dev']);
    assert.deepEqual(names('ROUTE', 'dev'), ['Route/dev']);
    assert.deepEqual(names('vm/old'), ['VirtualMachine/old']);
    assert.deepEqual(names('rt,fw'), ['FirewallPolicy/web', 'Route/dev']);
    const r = qwamos(state, 'get', 'vm', '-o', 'name');
    assert.equal(r.stdout, 'VirtualMachine/dev\nVirtualMachine/old\n');
  });

  test('an unknown kind is a usage error (exit 2) listing the known kinds on one line', async () => {
    const { state } = await populated();
    const r = qwamos(state, 'get', 'pods');
    assert.equal(r.code, 2);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^error: unknown resource kind "pods"; known kinds: VirtualMachine \(vm\), Route \(rt\), FirewallPolicy \(fw\), GpuTrustLevel \(gpu\), ClusterNode \(node\), GitSource \(gs\), all\n$/);
    assert.equal(qwamos(state, 'get', '-o', 'xml').code, 2);
    assert.equal(qwamos(state, 'get', 'all', 'dev').code, 2);
  });

  test('a named resource that does not exist exits 1', async () => {
    const { state } = await populated();
    const r = qwamos(state, 'get', 'rt', 'x');
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, 'error: Route "x" not found\n');
    const bad = qwamos(state, 'get', 'rt', 'Bad\u001bName');
    assert.equal(bad.code, 1);
    assert.equal(bad.stderr, 'error: Route "Bad\\u001bName" not found\n');
  });

  test('nothing to list: "No resources found." on stderr, exit 0; a missing state dir is not created', async () => {
    const state = await freshState();
    await Store.open(state);
    const r = qwamos(state, 'get');
    assert.equal(r.code, 0);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, 'No resources found.\n');
    const json = qwamos(state, 'get', 'vm', '-o', 'json');
    assert.equal(json.code, 0);
    assert.deepEqual(JSON.parse(json.stdout), []);

    const missing = path.join(state, 'no-such-dir');
    const m = qwamos(missing, 'get', 'vm');
    assert.equal(m.code, 0, m.stderr);
    assert.equal(m.stderr, 'No resources found.\n');
    await assert.rejects(fs.stat(missing), { code: 'ENOENT' });
  });
});

describe('qwamos describe', () => {
  test('shows metadata, source, generations, spec, conditions, open and healed drift and the events of the resource', async () => {
    const { state } = await populated();
    const r = qwamos(state, 'describe', 'route/dev');
    assert.equal(r.code, 0, r.stderr);
    const out = r.stdout;
    assert.match(out, /^Name: +dev$/m);
    assert.match(out, /^Kind: +Route$/m);
    assert.match(out, /^Labels: +tier=net$/m);
    assert.match(out, /^Annotations: +<none>$/m);
    assert.match(out, /^ {2}Path: +\/manifests\/dev\.yaml$/m);
    assert.match(out, /^ {2}Digest: +sha256:ab12ab12ab12$/m);
    assert.match(out, /^ {2}Commit: +0123456789ab$/m);
    assert.match(out, /^ {2}Signed By: +alice fedcba9876543210fedcba9876543210 \(ml-dsa-65\)$/m);
    assert.match(qwamos(state, 'describe', 'vm/old').stdout, /^ {2}Signed By: +<unsigned>$/m);
    assert.match(out, /^Generation: +1$/m);
    assert.match(out, /^Observed Generation: +1$/m);
    assert.match(out, /^Phase: +Ready$/m);
    assert.match(out, /^Suspended: +false$/m);
    assert.match(out, /^Spec:\n {2}vm: dev\n {2}mode: tor\n {2}address: 10\.8\.0\.2\/24\n/m);
    assert.match(out, /^Conditions:\n {2}TYPE +STATUS +REASON +AGE +MESSAGE\n {2}Ready +True +Reconciled +\d+s +netns qw-dev is up\n/m);
    assert.match(out, /^Drift:\n {2}FIELD +DESIRED +ACTUAL +POLICY +DETECTED +COUNT\n {2}netns +qw-dev +\(none\) +heal +\d+s +1\n/m);
    assert.match(out, /^ {2}Recently healed:\n {4}FIELD .*\n {4}veth +qw-dev-h +missing +\d+s +\d+s +1\n/m);
    assert.match(out, /^Events:\n {2}AGE +TYPE +REASON +MESSAGE\n {2}\d+s +Normal +NetnsCreated +created netns qw-dev\n {2}\d+s +Warning +DriftDetected +netns qw-dev vanished \\u0007\n$/m);
    assert.doesNotMatch(out, /other resource event/);
    // The order of the report.
    const order = ['Name:', 'Source:', 'Generation:', 'Spec:', 'Conditions:', 'Drift:', 'Events:'].map((h) => out.indexOf(h));
    assert.deepEqual([...order].sort((a, b) => a - b), order);
  });

  test('KIND NAME form; suspended, deleting, no status yet; escaped stalled message', async () => {
    const { state } = await populated();
    const vm = qwamos(state, 'describe', 'vm', 'old');
    assert.equal(vm.code, 0, vm.stderr);
    assert.match(vm.stdout, /^Suspended: +true$/m);
    const fw = qwamos(state, 'describe', 'FirewallPolicy/web');
    assert.match(fw.stdout, /^Deletion Requested: +\S+Z \(\d+s ago\)$/m);
    const gpu = qwamos(state, 'describe', 'gpu', 'low');
    assert.match(gpu.stdout, /^Observed Generation: +<none>$/m);
    assert.match(gpu.stdout, /^Phase: +Pending$/m);
    assert.match(gpu.stdout, /^Conditions:\n {2}<none>\n/m);
    assert.match(gpu.stdout, /^Drift:\n {2}<none>\n/m);
    assert.match(gpu.stdout, /^Events:\n {2}<none>\n$/m);
    const stalled = qwamos(state, 'describe', 'vm/dev');
    assert.match(stalled.stdout, /^ {2}Stalled +True +NoAccel +\d+s +no accelerator \\u001b\[31m\\u202e available$/m);
  });

  test('KIND alone describes every resource of that kind', async () => {
    const { state } = await populated();
    const r = qwamos(state, 'describe', 'vms');
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual([...r.stdout.matchAll(/^Name: +(\S+)$/gm)].map((m) => m[1]), ['dev', 'old']);
  });

  test('not found exits 1; unknown kind exits 2', async () => {
    const { state } = await populated();
    const r = qwamos(state, 'describe', 'vm/nope');
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'error: VirtualMachine "nope" not found\n');
    assert.equal(qwamos(state, 'describe', 'pods/x').code, 2);
    assert.equal(qwamos(state, 'describe', 'vm/a', 'b').code, 2);
  });
});

describe('qwamos drift', () => {
  test('lists open records by default; --all adds healed ones; -o json is an array of records', async () => {
    const { state } = await populated();
    const r = qwamos(state, 'drift');
    assert.equal(r.code, 0, r.stderr);
    const table = rows(r.stdout);
    assert.deepEqual(table[0], ['RESOURCE', 'FIELD', 'DESIRED', 'ACTUAL', 'POLICY', 'STATE', 'DETECTED', 'HEALED', 'COUNT']);
    assert.equal(table.length, 2);
    assert.deepEqual([...table[1]!.slice(0, 6), table[1]![7], table[1]![8]], ['Route/dev', 'netns', 'qw-dev', '(none)', 'heal', 'open', '-', '1']);

    const all = rows(qwamos(state, 'drift', '--all').stdout);
    assert.equal(all.length, 3);
    const veth = all.find((row) => row[1] === 'veth')!;
    assert.deepEqual(veth.slice(0, 6), ['Route/dev', 'veth', 'qw-dev-h', 'missing', 'warn', 'healed']);
    assert.match(veth[7]!, /^\d+s$/);

    const json = JSON.parse(qwamos(state, 'drift', '-o', 'json').stdout);
    assert.equal(json.length, 1);
    assert.equal(json[0].field, 'netns');
    assert.equal(json[0].state, 'open');
    assert.equal(JSON.parse(qwamos(state, 'drift', '-o', 'json', '--all').stdout).length, 2);
  });

  test('no drift: a note on stderr, exit 0; bad usage exits 2', async () => {
    const state = await freshState();
    await Store.open(state);
    const r = qwamos(state, 'drift');
    assert.equal(r.code, 0);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, 'No open drift.\n');
    assert.deepEqual(JSON.parse(qwamos(state, 'drift', '-o', 'json').stdout), []);
    assert.equal(qwamos(state, 'drift', '-o', 'yaml').code, 2);
    assert.equal(qwamos(state, 'drift', 'extra').code, 2);
  });

  /** Spawns `qwamos drift --watch ...args`, collecting its output. */
  function watchDrift(state: string, ...args: string[]) {
    const child = spawn(process.execPath, [...entry, 'drift', '--watch', ...args], { cwd: repoRoot, env: env(state) });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const waitFor = async (re: RegExp, what: string, timeoutMs = 20_000) => {
      const deadline = Date.now() + timeoutMs;
      while (!re.test(stdout)) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; stdout:\n${stdout}\nstderr:\n${stderr}`);
        if (child.exitCode !== null) throw new Error(`drift --watch exited ${child.exitCode} before ${what}; stderr:\n${stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const stop = async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      const code = await exited;
      noStackTrace(stdout + stderr, ['drift', '--watch', ...args]);
      return { code, stdout, stderr };
    };
    return { child, waitFor, stop, output: () => stdout };
  }

  test('--watch prints the table, then a line when a record appears and when it heals, and exits 0 on SIGTERM', async (t) => {
    const { state, store } = await populated();
    const w = watchDrift(state);
    t.after(() => void w.child.kill('SIGKILL'));
    await w.waitFor(/^Route\/dev +netns +qw-dev/m, 'the initial table');
    assert.doesNotMatch(w.output(), /veth/); // healed: not listed without --all, not repeated as a change

    await store.recordDrift({ resource: 'VirtualMachine/dev', field: 'qemu.state', desired: 'running', actual: 'paused\u001b[2J', policy: 'heal' });
    await w.waitFor(
      /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ {2}VirtualMachine\/dev {2}qemu\.state {2}desired running {2}actual paused\\u001b\[2J {2}open$/m,
      'the open line',
    );
    await store.resolveDrift('VirtualMachine/dev', 'qemu.state');
    await w.waitFor(/^\S+Z {2}VirtualMachine\/dev {2}qemu\.state {2}desired running {2}actual paused\\u001b\[2J {2}healed$/m, 'the healed line');
    await store.recordDrift({ resource: 'Route/dev', field: 'netns', desired: 'qw-dev', actual: '', policy: 'heal' });
    await w.waitFor(/^\S+Z {2}Route\/dev {2}netns {2}desired qw-dev {2}actual \(none\) {2}open {2}count 2$/m, 'the changed line');

    const r = await w.stop();
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /\u001b/);
    assert.equal(r.stdout.match(/qemu\.state/g)?.length, 2, r.stdout); // one open line and one healed line, nothing repeated
  });

  test('-o json --watch prints one JSON object per line', async (t) => {
    const { state, store } = await populated();
    const w = watchDrift(state, '-o', 'json');
    t.after(() => void w.child.kill('SIGKILL'));
    await w.waitFor(/"field":"netns"/, 'the initial record');
    await store.recordDrift({ resource: 'Route/dev', field: 'address', desired: '10.8.0.2/24', actual: '10.9.0.2/24', policy: 'warn' });
    await w.waitFor(/"field":"address"/, 'the new record');
    const r = await w.stop();
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n').map((line) => JSON.parse(line));
    assert.deepEqual(lines.map((d) => [d.resource, d.field, d.state]), [
      ['Route/dev', 'netns', 'open'],
      ['Route/dev', 'address', 'open'],
    ]);
    assert.equal(lines[1].policy, 'warn');
  });
});

describe('a store with broken records', () => {
  test('get, describe and drift keep working; each broken file is named once; delete clears a record that cannot be parsed', async () => {
    const { state } = await populated();
    await fs.mkdir(path.join(state, 'resources', 'Route'), { recursive: true });
    const badResource = path.join(state, 'resources', 'Route', 'r5.json');
    await fs.writeFile(badResource, '');
    const badStatus = path.join(state, 'status', 'Route', 'dev.json');
    await fs.writeFile(badStatus, '{"kind":"Route"}');
    const badDrift = path.join(state, 'drift', 'Route', 'dev.json');
    await fs.writeFile(badDrift, '{"not":"an array"}');

    const get = qwamos(state, 'get');
    assert.equal(get.code, 0, get.stderr);
    assert.match(get.stdout, /^Route +dev /m);
    assert.doesNotMatch(get.stdout, /r5/);
    for (const f of [badResource, badStatus]) assert.equal(get.stderr.split(f).length - 1, 1, `${f} named once in:\n${get.stderr}`);
    assert.match(get.stderr, /qwamos delete Route\/r5/);

    const one = qwamos(state, 'get', 'Route/r5');
    assert.equal(one.code, 1);
    assert.equal(one.stderr.trim().split('\n').length, 1, one.stderr);
    assert.match(one.stderr, /r5\.json is unusable/);

    const desc = qwamos(state, 'describe', 'Route/dev');
    assert.equal(desc.code, 0, desc.stderr);
    assert.match(desc.stdout, /^Phase: +Pending$/m, 'an unusable status counts as absent');
    assert.match(desc.stderr, /drift\/Route\/dev\.json/);

    const drift = qwamos(state, 'drift', '--all');
    assert.equal(drift.code, 0, drift.stderr);
    assert.match(drift.stderr, /drift\/Route\/dev\.json/);

    const del = qwamos(state, 'delete', 'Route/r5');
    assert.equal(del.code, 0, del.stderr);
    assert.match(del.stdout, /Route\/r5 deleted/);
    await assert.rejects(fs.stat(badResource), { code: 'ENOENT' });
    assert.doesNotMatch(qwamos(state, 'get').stderr, /r5/);
  });
});

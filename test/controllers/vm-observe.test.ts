// VM observe against the real host: what it spawns for stopped VMs (their Route's netns are not
// looked into: the tap matters only under a live QEMU).
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { execa } from 'execa';
import { VmObserver } from '../../src/controllers/vm/observe.ts';
import { processesSpawned } from '../../src/drivers/exec.ts';
import { makeWorld } from '../../src/engine/contract.ts';
import type { StoredResource } from '../../src/store/store.ts';
import { createTestHost, type TestHost } from '../helpers/hostns.ts';

let host: TestHost;
let dir: string;
before(async () => {
  host = await createTestHost();
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-vm-observe-'));
});
after(async () => {
  await host?.cleanup();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

const meta = (name: string) => ({ name, generation: 1, createdAt: '2026-01-01T00:00:00Z', updatedAt: '2026-01-01T00:00:00Z' });
const source = { path: '/m.yaml', digest: 'd' };

test('stopped VMs cost no process per Route netns, however many there are', async () => {
  const n = 20;
  const names = Array.from({ length: n }, (_, i) => `o${i}`);
  await execa('ip', ['-batch', '-'], { input: names.map((v) => `netns add ${host.prefix}-${v}`).join('\n') });
  const routes = names.map((v) => ({ apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: meta(v), spec: { vm: v, mode: 'isolated' }, source }));
  const vms = names.map((v) => ({
    apiVersion: 'qwamos.io/v1alpha1',
    kind: 'VirtualMachine',
    metadata: meta(v),
    spec: { runStrategy: 'Stopped', memory: '192Mi', boot: { kernel: 'guest/vmlinux' }, network: { route: v } },
    source,
  }));
  const world = makeWorld([...routes, ...vms] as unknown as StoredResource[], Date.now());
  const observer = new VmObserver({ layout: { prefix: host.prefix, hostNetns: host.hostNs }, stateDir: dir, imageRoot: dir, stopTimeoutMs: 500, tscKhz: 1_000_000, runRoot: path.join(dir, 'run') });
  await observer.observe(vms as unknown as StoredResource<'VirtualMachine'>[], world); // probes the host once
  const spawned = processesSpawned();
  const seen = await observer.observe(vms as unknown as StoredResource<'VirtualMachine'>[], world);
  assert.equal(processesSpawned() - spawned, 0);
  for (const v of names) {
    const a = seen.get(`VirtualMachine/${v}`)!;
    assert.equal(a.proc.state, 'none');
    assert.equal(a.netnsExists, true, 'the netns is still known to exist (a file check)');
    assert.equal(a.tap, undefined);
  }
});

test('observed for plans only (diff), stopped VMs probe nothing of the host; one VM to run probes it', async () => {
  const vm = (name: string, runStrategy: string) => ({
    apiVersion: 'qwamos.io/v1alpha1',
    kind: 'VirtualMachine',
    metadata: meta(name),
    spec: { runStrategy, memory: '192Mi', boot: { kernel: 'guest/vmlinux' } },
    source,
  });
  const stopped = [vm('p0', 'Stopped'), vm('p1', 'Stopped')] as unknown as StoredResource<'VirtualMachine'>[];
  const ctx = { layout: { prefix: host.prefix, hostNetns: host.hostNs }, stateDir: dir, imageRoot: dir, stopTimeoutMs: 500, runRoot: path.join(dir, 'run') };
  const planOnly = new VmObserver({ ...ctx, planOnly: true });
  const spawned = processesSpawned();
  const seen = await planOnly.observe(stopped, makeWorld(stopped, Date.now()));
  assert.equal(processesSpawned() - spawned, 0, 'no QEMU probe, TSC script or getent');
  assert.equal(seen.get('VirtualMachine/p0')!.host, undefined);

  const mixed = [...stopped, vm('p2', 'Running')] as unknown as StoredResource<'VirtualMachine'>[];
  const withRun = await planOnly.observe(mixed, makeWorld(mixed, Date.now()));
  assert.ok(withRun.get('VirtualMachine/p2')!.host?.probe.version, 'a VM to run: the host is probed');
  // Status reports need the host for every VM: a full observer always probes it.
  const full = await new VmObserver(ctx).observe(stopped, makeWorld(stopped, Date.now()));
  assert.ok(full.get('VirtualMachine/p0')!.host?.probe.version);
});

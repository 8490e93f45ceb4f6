// The VirtualMachine controller: QEMU started inside the VM's Route netns with a tap, daemonized, with a
// pidfile and a QMP socket (0600) in the state directory. Observe reads every VM's pidfile and QMP
// status; plan decides from runStrategy; apply launches, stops, pauses and resumes. A restarted
// controller adopts running VMs: the pidfile's process is checked to be the QEMU it started.
import { createHash } from 'node:crypto';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../drivers/exec.ts';
import { createTap, deleteTap, derivedNames, observeRouteNets, plugTap, type NetLayout } from '../drivers/netns.ts';
import {
  createDisk,
  gpuSupport,
  inspect,
  launch,
  probeQemu,
  qmpCommand,
  queryStatus,
  stopVm,
  listVmDevices,
  removeVmDevice,
  watchVm,
  type QemuProbe,
  type QemuSpec,
} from '../drivers/qemu.ts';
import { BUILTIN_GPU_LEVELS, resolveGpuLevel, type GpuLevel } from '../resources/gpu.ts';
import { imagePathEscape } from '../resources/paths.ts';
import { sizeMiB } from '../resources/checks.ts';
import type { RouteSpec, VirtualMachineSpec } from '../resources/generated.ts';
import type { StoredResource } from '../store/store.ts';
import { makeWorld, stalled, waiting, type Action, type Controller, type FieldDiff, type Plan, type StatusReport, type World } from '../engine/contract.ts';
import type { ObjectKey } from '../resources/keys.ts';

export interface VmContext {
  layout: NetLayout;
  stateDir: string;
  imageRoot: string;
  stopTimeoutMs: number;
  tscKhz?: number;
}

/** What was launched, kept beside the pidfile: to tell a clean exit from a crash and see spec changes. */
interface LaunchRecord {
  specHash: string;
  generation: number;
  startedAt: string;
  crashes: number;
  lastCrashAt?: string;
  /** Set when the controller stopped it, so RerunOnFailure does not mistake that for the guest's exit. */
  stoppedByController?: boolean;
}

export interface VmActual {
  now: number;
  runDir: string;
  /** The process in the pidfile, if any, and whether it is this VM's QEMU. */
  proc?: { pid: number; alive: boolean; ours: boolean; why?: string };
  /** QMP run state ('running', 'paused', ...) of our live process. */
  status?: string;
  launched?: LaunchRecord;
  disks: { name: string; path: string; exists: boolean; sizeMiB: number; backing?: string }[];
  /** GPU devices found in the running VM that its spec does not give it (added by hand). */
  foreignGpus: string[];
  netnsExists: boolean;
  /** The launch this VM needs now, or why it cannot be launched on this host. */
  want: { spec: QemuSpec; hash: string; netns?: string } | { problem: string; condition?: 'GpuUnavailable'; terminal: boolean };
  gpu?: { level: string; ok: boolean; reason?: string };
  /** The VM's tap in its Route's netns (routed VMs only): gone if the netns was recreated under QEMU. */
  tap?: { exists: boolean; plugged: boolean };
}

type VmAction =
  | (Action & { type: 'create-disk'; path: string; sizeMiB: number; backing?: string })
  | (Action & { type: 'start'; spec: QemuSpec; hash: string; generation: number; netns?: string; tapVm?: string; runDir: string })
  | (Action & { type: 'stop'; runDir: string; name: string; graceful: boolean })
  | (Action & { type: 'pause' | 'resume'; runDir: string })
  | (Action & { type: 'remove-device'; runDir: string; id: string })
  | (Action & { type: 'record-crash'; runDir: string })
  | (Action & { type: 'plug-tap'; tapVm: string })
  | (Action & { type: 'clean-up'; runDir: string; tapVm?: string; disks: string[] });

const scriptsDir = fileURLToPath(new URL('../../scripts/', import.meta.url));

export class VmController implements Controller<'VirtualMachine', VmActual, VmAction> {
  readonly kind = 'VirtualMachine';
  /** The desired state of the current call (set at each entry point). */
  private world: World = makeWorld([]);
  private probe?: Promise<QemuProbe>;
  private tscKhz?: Promise<number | undefined>;
  private watchers = new Map<string, { close(): void }>();
  private notify?: (keys: ObjectKey[]) => void;

  constructor(private readonly ctx: VmContext) {}

  // ---------------------------------------------------------------------------------------- observe

  async observe(resources: StoredResource<'VirtualMachine'>[], world: World): Promise<Map<ObjectKey, VmActual>> {
    this.world = world;
    this.probe ??= probeQemu();
    this.tscKhz ??= hostTscKhz(this.ctx.tscKhz);
    const routed = resources.flatMap((r) => {
      const route = this.routeOf(r.spec);
      return route ? [route.vm] : [];
    });
    const [probe, tscKhz, nets] = await Promise.all([
      this.probe,
      this.tscKhz,
      routed.length ? observeRouteNets(this.ctx.layout, routed) : Promise.resolve(new Map()),
    ]);
    const out = new Map<ObjectKey, VmActual>();
    await Promise.all(
      resources.map(async (r) => {
        const actual = await this.observeOne(r, probe, tscKhz);
        const route = this.routeOf(r.spec);
        if (route) {
          const tap = nets.get(route.vm)?.tap;
          const bridge = derivedNames(this.ctx.layout.prefix, route.vm).bridge;
          actual.tap = { exists: Boolean(tap), plugged: Boolean(tap?.up && tap.master === bridge) };
        }
        out.set(`VirtualMachine/${r.metadata.name}`, actual);
        this.follow(r, actual);
      }),
    );
    return out;
  }

  private runDir(name: string): string {
    return path.join(this.ctx.stateDir, 'vms', name);
  }

  private async observeOne(r: StoredResource<'VirtualMachine'>, probe: QemuProbe, tscKhz: number | undefined): Promise<VmActual> {
    const name = r.metadata.name;
    const spec = r.spec;
    const runDir = this.runDir(name);
    const [info, launched, netnsExists] = await Promise.all([
      inspect(runDir, name),
      readJson<LaunchRecord>(path.join(runDir, 'launch.json')),
      this.netnsOf(spec).then((ns) => (ns ? exists(`/run/netns/${ns}`) : true)),
    ]);
    let status: string | undefined;
    let foreignGpus: string[] = [];
    if (info?.alive && info.ours) {
      status = await queryStatus(runDir).catch(() => undefined);
      // Started with -S (runStrategy Paused), QEMU reports 'prelaunch' until the first cont: paused.
      if (status === 'prelaunch') status = 'paused';
      const gpuWanted = this.gpuLevelOf(spec)?.device;
      foreignGpus = (await listVmDevices(runDir).catch(() => []))
        .filter((d) => d.gpu && !(gpuWanted && gpuWanted !== 'none' && d.id === 'gpu0'))
        .map((d) => d.id);
    }
    const disks = await Promise.all(
      (spec.disks ?? []).map(async (d) => {
        const file = this.diskPath(name, d.name);
        return { name: d.name, path: file, exists: await exists(file), sizeMiB: sizeMiB(d.size), ...(d.backingImage ? { backing: path.join(this.ctx.imageRoot, d.backingImage) } : {}) };
      }),
    );
    const want = await this.launchSpec(r, probe, tscKhz, runDir, disks);
    const level = this.gpuLevelOf(spec);
    const gpu = level ? { level: level.name, ...gpuVerdict(level, probe, spec.machine ?? 'microvm') } : undefined;
    return {
      now: Date.now(),
      runDir,
      ...(info ? { proc: info } : {}),
      ...(status ? { status } : {}),
      ...(launched ? { launched } : {}),
      disks,
      foreignGpus,
      netnsExists,
      want,
      ...(gpu ? { gpu } : {}),
    };
  }

  private diskPath(vm: string, disk: string): string {
    return path.join(this.ctx.imageRoot, 'disks', vm, `${disk}.qcow2`);
  }

  private routeOf(spec: VirtualMachineSpec): RouteSpec | undefined {
    const name = spec.network?.route;
    if (!name) return undefined;
    return this.world.list('Route').find((r) => r.metadata.name === name)?.spec;
  }

  /** The netns QEMU runs in: its Route's; without a NIC, the host side's (the test netns in tests). */
  private async netnsOf(spec: VirtualMachineSpec): Promise<string | undefined> {
    const route = this.routeOf(spec);
    if (route) return derivedNames(this.ctx.layout.prefix, route.vm).netns;
    return this.ctx.layout.hostNetns;
  }

  private gpuLevelOf(spec: VirtualMachineSpec): GpuLevel | undefined {
    const name = spec.gpu?.trustLevel;
    if (!name) return undefined;
    const declared = this.world.list('GpuTrustLevel').find((g) => g.metadata.name === name);
    if (declared) return resolveGpuLevel(name, declared.spec);
    return BUILTIN_GPU_LEVELS.find((l) => l.name === name);
  }

  private async launchSpec(
    r: StoredResource<'VirtualMachine'>,
    probe: QemuProbe,
    tscKhz: number | undefined,
    runDir: string,
    disks: VmActual['disks'],
  ): Promise<VmActual['want']> {
    const name = r.metadata.name;
    const spec = r.spec;
    // Accelerator: KVM only where the CPU has vmx/svm and /dev/kvm works.
    const accelWanted = spec.accel ?? 'auto';
    if (accelWanted === 'kvm' && !probe.kvmUsable) return { problem: `accel kvm requested but KVM is not usable here: ${probe.kvmReason}`, terminal: true };
    const accel = accelWanted === 'tcg' ? 'tcg' : accelWanted === 'kvm' || probe.kvmUsable ? 'kvm' : 'tcg';

    for (const [field, rel] of [['boot.kernel', spec.boot?.kernel], ['boot.initrd', spec.boot?.initrd]] as const) {
      if (!rel) continue;
      const escape = imagePathEscape(this.ctx.imageRoot, rel);
      if (escape) return { problem: `${field} "${rel}" ${escape}`, terminal: true };
      if (!(await exists(path.join(this.ctx.imageRoot, rel)))) return { problem: `${field} "${rel}" not found under the image root ${this.ctx.imageRoot}`, terminal: false };
    }
    for (const d of spec.disks ?? []) {
      if (!d.backingImage) continue;
      const escape = imagePathEscape(this.ctx.imageRoot, d.backingImage);
      if (escape) return { problem: `disk ${d.name}: backingImage "${d.backingImage}" ${escape}`, terminal: true };
    }

    const level = this.gpuLevelOf(spec);
    let gpu: QemuSpec['gpu'];
    if (level && level.device !== 'none') {
      const verdict = gpuSupport(level, probe, { machine: spec.machine ?? 'microvm' });
      if (!verdict.ok) return { problem: `GPU trust level ${level.name} (${level.device}) cannot be provided: ${verdict.reason}`, condition: 'GpuUnavailable', terminal: true };
      gpu = { device: level.device, vramMiB: level.vramMiB, ...(level.hostDevice ? { hostDevice: level.hostDevice } : {}) };
    }

    const route = this.routeOf(spec);
    if (spec.network?.route && !route) return { problem: `Route "${spec.network.route}" is not declared`, terminal: false };
    const machine = spec.machine ?? 'microvm';
    const cmdline = [
      spec.boot?.cmdline ?? '',
      machine === 'microvm' && tscKhz ? `tsc_early_khz=${tscKhz}` : '',
      route?.address ? `qwamos.ip=${route.address}` : '',
      route?.gateway ? `qwamos.gw=${route.gateway}` : '',
      `qwamos.name=${name}`,
    ]
      .filter(Boolean)
      .join(' ');
    const qemuSpec: QemuSpec = {
      name,
      machine,
      accel,
      cpus: spec.cpus ?? 1,
      memoryMiB: sizeMiB(spec.memory ?? '256Mi'),
      ...(spec.boot?.kernel ? { kernel: path.join(this.ctx.imageRoot, spec.boot.kernel) } : {}),
      ...(spec.boot?.initrd ? { initrd: path.join(this.ctx.imageRoot, spec.boot.initrd) } : {}),
      ...(spec.boot ? { cmdline } : {}),
      disks: disks.map((d, i) => ({ path: d.path, readOnly: Boolean(spec.disks?.[i]?.readOnly), format: 'qcow2' as const })),
      ...(route ? { tap: derivedNames(this.ctx.layout.prefix, route.vm).tap, mac: macOf(name) } : {}),
      ...(gpu ? { gpu } : {}),
      runDir,
      ...(spec.runStrategy === 'Paused' ? { startPaused: true } : {}),
    };
    const netns = await this.netnsOf(spec);
    const hash = createHash('sha256').update(JSON.stringify({ ...qemuSpec, startPaused: undefined })).digest('hex').slice(0, 16);
    return { spec: qemuSpec, hash, ...(netns ? { netns } : {}) };
  }

  // ------------------------------------------------------------------------------------------- plan

  plan(r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined, world: World): Plan<VmAction> {
    this.world = world;
    const deleting = Boolean(r.deletionRequestedAt);
    const actions = this.planActions(r, actual, deleting);
    if (!Array.isArray(actions)) return actions;
    return { actions };
  }

  private planActions(r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined, deleting: boolean): VmAction[] | Plan<VmAction> {
    const key: ObjectKey = `VirtualMachine/${r.metadata.name}`;
    const spec = r.spec;
    const name = r.metadata.name;
    const runDir = actual?.runDir ?? this.runDir(name);
    const running = Boolean(actual?.proc?.alive && actual.proc.ours);
    const route = this.routeOf(spec);
    const tapVm = route?.vm;

    if (deleting) {
      const acts: VmAction[] = [];
      if (running) acts.push({ type: 'stop', resource: key, runDir, name, graceful: false, describe: `stop QEMU of ${name} (pid ${actual!.proc!.pid})` });
      const disks = spec.deletionPolicy === 'Delete' ? (actual?.disks ?? []).filter((d) => d.exists).map((d) => d.path) : [];
      if (actual?.proc || actual?.launched || disks.length) {
        acts.push({ type: 'clean-up', resource: key, runDir, ...(tapVm ? { tapVm } : {}), disks, describe: `remove ${name}'s runtime files${disks.length ? ` and disks ${disks.map((d) => path.basename(d)).join(', ')}` : ' (disks kept: deletionPolicy Retain)'}` });
      }
      return acts;
    }

    const strategy = spec.runStrategy ?? 'Running';
    // QEMU removes its pidfile when it exits cleanly; a pidfile whose process is gone means it died.
    const crashed = !running && actual?.proc !== undefined;
    const cleanExit = !running && !actual?.proc && actual?.launched !== undefined && !actual.launched.stoppedByController;
    const wantRunning = strategy === 'Running' || strategy === 'Paused' || (strategy === 'RerunOnFailure' && !cleanExit);
    const acts: VmAction[] = [];

    if (!running && wantRunning) {
      const want = actual?.want;
      if (!want) return { actions: [], hold: waiting('NotObserved', 'not observed yet', 1000) };
      if ('problem' in want) return { actions: acts, hold: want.terminal ? stalled(want.condition ?? 'LaunchImpossible', want.problem) : waiting('LaunchNotReady', want.problem, 5000) };
      if (crashed) acts.push({ type: 'record-crash', resource: key, runDir, describe: `record that QEMU of ${name} died (pid ${actual!.proc!.pid})` });
      if (crashed && actual?.launched?.lastCrashAt) {
        const wait = crashBackoffMs(actual.launched.crashes) - (actual.now - Date.parse(actual.launched.lastCrashAt));
        if (wait > 0) return { actions: acts, hold: waiting('CrashLoop', `QEMU keeps dying: next start in ${Math.ceil(wait / 1000)}s`, wait) };
      }
      return [...acts, ...this.startActions(r, actual!, want, tapVm)];
    }
    if (running && !wantRunning) {
      return [{ type: 'stop', resource: key, runDir, name, graceful: true, describe: `shut down ${name} (ACPI power button, then quit)` }];
    }
    if (!running) return acts;

    if (strategy === 'Paused' && actual!.status === 'running') acts.push({ type: 'pause', resource: key, runDir, describe: `pause ${name}` });
    if (strategy !== 'Paused' && actual!.status === 'paused') acts.push({ type: 'resume', resource: key, runDir, describe: `resume ${name}` });
    if (tapVm && actual!.tap && !actual!.tap.exists) {
      // The netns was recreated under a running QEMU: its NIC is gone with the old tap. Restart.
      const want = actual!.want;
      if ('hash' in want) return [{ type: 'stop', resource: key, runDir, name, graceful: false, describe: `restart ${name}: its tap went away with its netns` }, ...this.startActions(r, actual!, want, tapVm)];
    }
    if (tapVm && actual!.tap?.exists && !actual!.tap.plugged) acts.push({ type: 'plug-tap', resource: key, tapVm, describe: `plug ${name}'s tap into its bridge` });
    for (const id of actual!.foreignGpus) acts.push({ type: 'remove-device', resource: key, runDir, id, describe: `remove GPU device ${id} that ${name}'s trust level does not give it` });
    const want = actual!.want;
    if (spec.updatePolicy === 'Restart' && 'hash' in want && actual!.launched && actual!.launched.specHash !== want.hash) {
      acts.push({ type: 'stop', resource: key, runDir, name, graceful: true, describe: `restart ${name} for its new spec: shut down` });
      acts.push(...this.startActions(r, actual!, want, tapVm));
    }
    return acts;
  }

  private startActions(r: StoredResource<'VirtualMachine'>, actual: VmActual, want: { spec: QemuSpec; hash: string; netns?: string }, tapVm?: string): VmAction[] {
    const key: ObjectKey = `VirtualMachine/${r.metadata.name}`;
    const acts: VmAction[] = [];
    for (const d of actual.disks) {
      if (!d.exists) acts.push({ type: 'create-disk', resource: key, path: d.path, sizeMiB: d.sizeMiB, ...(d.backing ? { backing: d.backing } : {}), describe: `create disk ${path.basename(d.path)} (${d.sizeMiB}Mi${d.backing ? `, over ${path.basename(d.backing)}` : ''})` });
    }
    const paused = (r.spec).runStrategy === 'Paused';
    acts.push({
      type: 'start',
      resource: key,
      spec: want.spec,
      hash: want.hash,
      generation: r.generation,
      runDir: actual.runDir,
      ...(want.netns ? { netns: want.netns } : {}),
      ...(tapVm ? { tapVm } : {}),
      describe: `start QEMU ${want.spec.machine}/${want.spec.accel} for ${r.metadata.name}${want.netns ? ` in netns ${want.netns}` : ''}${paused ? ' (paused)' : ''}`,
    });
    return acts;
  }

  diff(r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined): FieldDiff[] {
    const spec = r.spec;
    const strategy = spec.runStrategy ?? 'Running';
    const running = Boolean(actual?.proc?.alive && actual.proc.ours);
    const state = running ? (actual?.status ?? 'running') : actual?.proc ? `dead (pid ${actual.proc.pid} gone)` : 'stopped';
    const want = strategy === 'Stopped' ? 'stopped' : strategy === 'Paused' ? 'paused' : 'running';
    const diffs: FieldDiff[] = [];
    if (want !== state && !(strategy === 'RerunOnFailure' && state === 'stopped')) diffs.push({ field: 'state', desired: want, actual: state });
    if (running && actual?.tap && !actual.tap.plugged) diffs.push({ field: 'tap', desired: 'plugged into the bridge', actual: actual.tap.exists ? 'unplugged' : 'gone' });
    if (actual?.foreignGpus.length) diffs.push({ field: 'gpu', desired: spec.gpu?.trustLevel ?? '(none)', actual: `extra device ${actual.foreignGpus.join(', ')}` });
    return diffs;
  }

  report(r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined): StatusReport {
    if (!actual) return {};
    const spec = r.spec;
    const running = Boolean(actual.proc?.alive && actual.proc.ours);
    const want = actual.want;
    const restartRequired = running && 'hash' in want && actual.launched !== undefined && actual.launched.specHash !== want.hash && spec.updatePolicy !== 'Restart';
    const gpuProblem = 'problem' in want && want.condition === 'GpuUnavailable' ? want.problem : undefined;
    return {
      conditions: [
        restartRequired
          ? { type: 'RestartRequired', status: 'True', reason: 'SpecChanged', message: 'the spec changed in a way that needs a restart; restart the VM (or set updatePolicy: Restart)' }
          : { type: 'RestartRequired', status: 'False', reason: 'UpToDate', message: '' },
        gpuProblem
          ? { type: 'GpuUnavailable', status: 'True', reason: 'HostCannotProvide', message: gpuProblem }
          : { type: 'GpuUnavailable', status: 'False', reason: 'Provided', message: actual.gpu ? `${actual.gpu.level}` : '' },
        { type: 'Paused', status: actual.status === 'paused' ? 'True' : 'False', reason: actual.status === 'paused' ? 'PausedByStrategy' : 'NotPaused', message: '' },
      ],
      fields: {
        pid: running ? actual.proc!.pid : null,
        state: running ? (actual.status ?? 'running') : 'stopped',
        qmpSocket: path.join(actual.runDir, 'qmp.sock'),
        serialLog: path.join(actual.runDir, 'serial.log'),
        ...('spec' in want ? { machine: want.spec.machine, accel: want.spec.accel, netns: want.netns ?? null } : {}),
        startedAt: running ? (actual.launched?.startedAt ?? null) : null,
        crashes: actual.launched?.crashes ?? 0,
      },
    };
  }

  dependencies(r: StoredResource<'VirtualMachine'>, world: World): ObjectKey[] {
    this.world = world;
    const spec = r.spec;
    return [
      ...(spec.network?.route ? [`Route/${spec.network.route}` as ObjectKey] : []),
      ...(spec.gpu?.trustLevel && this.world.list('GpuTrustLevel').some((g) => g.metadata.name === spec.gpu!.trustLevel) ? [`GpuTrustLevel/${spec.gpu.trustLevel}` as ObjectKey] : []),
      ...(spec.dependsOn ?? []).map((d) => `${d.kind ?? 'VirtualMachine'}/${d.name}` as ObjectKey),
    ];
  }

  // ------------------------------------------------------------------------------------------ apply

  async apply(actions: VmAction[], world: World): Promise<void> {
    this.world = world;
    // VMs are independent: each one's actions in order, different VMs at once.
    const byVm = new Map<string, VmAction[]>();
    for (const a of actions) byVm.set(a.resource, [...(byVm.get(a.resource) ?? []), a]);
    const results = await Promise.allSettled([...byVm.values()].map((list) => this.applyOne(list)));
    const failed = results.find((x): x is PromiseRejectedResult => x.status === 'rejected');
    if (failed) throw failed.reason;
  }

  private async applyOne(actions: VmAction[]): Promise<void> {
    for (const a of actions) {
      switch (a.type) {
        case 'create-disk':
          await mkdir(path.dirname(a.path), { recursive: true, mode: 0o700 });
          await createDisk(a.path, a.sizeMiB, a.backing);
          break;
        case 'record-crash': {
          const file = path.join(a.runDir, 'launch.json');
          const rec = await readJson<LaunchRecord>(file);
          if (rec) await writeFile(file, JSON.stringify({ ...rec, crashes: rec.crashes + 1, lastCrashAt: new Date().toISOString() }), { mode: 0o600 });
          await rm(path.join(a.runDir, 'qemu.pid'), { force: true });
          break;
        }
        case 'start': {
          await mkdir(a.runDir, { recursive: true, mode: 0o700 });
          if (a.tapVm) {
            await createTap(this.ctx.layout, a.tapVm).catch(async (err: Error) => {
              // A tap left from the previous QEMU (persistent, so it survives a crash) is reused.
              if (!/exists|busy/i.test(err.message)) throw err;
              await plugTap(this.ctx.layout, a.tapVm!);
            });
          }
          const prev = await readJson<LaunchRecord>(path.join(a.runDir, 'launch.json'));
          await launch(a.spec, a.netns ? { netns: a.netns } : {});
          const rec: LaunchRecord = { specHash: a.hash, generation: a.generation, startedAt: new Date().toISOString(), crashes: prev?.crashes ?? 0, ...(prev?.lastCrashAt ? { lastCrashAt: prev.lastCrashAt } : {}) };
          await writeFile(path.join(a.runDir, 'launch.json'), JSON.stringify(rec), { mode: 0o600 });
          break;
        }
        case 'stop': {
          await stopVm(a.runDir, a.name, { graceful: a.graceful, timeoutMs: this.ctx.stopTimeoutMs });
          const file = path.join(a.runDir, 'launch.json');
          const rec = await readJson<LaunchRecord>(file);
          if (rec) await writeFile(file, JSON.stringify({ ...rec, stoppedByController: true }), { mode: 0o600 });
          break;
        }
        case 'pause':
        case 'resume':
          await qmpCommand(a.runDir, a.type === 'pause' ? 'stop' : 'cont');
          break;
        case 'plug-tap':
          await plugTap(this.ctx.layout, a.tapVm);
          break;
        case 'remove-device':
          await removeVmDevice(a.runDir, a.id);
          break;
        case 'clean-up':
          this.watchers.get(a.resource)?.close();
          this.watchers.delete(a.resource);
          if (a.tapVm) await deleteTap(this.ctx.layout, a.tapVm).catch(() => {});
          await rm(a.runDir, { recursive: true, force: true });
          for (const d of a.disks) await rm(d, { force: true });
          break;
      }
    }
  }

  // ------------------------------------------------------------------------------------------ watch

  watch(notify: (keys: ObjectKey[]) => void): { close(): void } {
    this.notify = notify;
    return {
      close: () => {
        this.notify = undefined;
        for (const w of this.watchers.values()) w.close();
        this.watchers.clear();
      },
    };
  }

  /** Keeps an event connection to each running VM, so a crash (socket EOF) is reconciled at once. */
  private follow(r: StoredResource<'VirtualMachine'>, actual: VmActual): void {
    const key: ObjectKey = `VirtualMachine/${r.metadata.name}`;
    const running = Boolean(actual.proc?.alive && actual.proc.ours);
    const current = this.watchers.get(key);
    if (!this.notify || !running) {
      if (current && !running) {
        current.close();
        this.watchers.delete(key);
      }
      return;
    }
    if (current) return;
    const notify = this.notify;
    // Exit (socket EOF: crash, quit, kill -9) ends the watch; events (STOP, RESUME, ...) keep it.
    const w = watchVm(actual.runDir, (change) => {
      if (change.kind === 'exit') {
        w.close();
        if (this.watchers.get(key) === w) this.watchers.delete(key);
      }
      notify([key]);
    });
    this.watchers.set(key, w);
  }
}

/** Backoff between restarts of a VM that keeps dying: 1 s, 2 s, 4 s ... up to 5 min. */
function crashBackoffMs(crashes: number): number {
  return Math.min(300_000, 1000 * 2 ** Math.max(0, crashes - 1));
}

/** A stable, locally administered MAC address per VM name. */
function macOf(name: string): string {
  const h = createHash('sha256').update(name).digest();
  return ['52', '54', ...[...h.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

function gpuVerdict(level: GpuLevel, probe: QemuProbe, machine: 'microvm' | 'q35'): { ok: boolean; reason?: string } {
  if (level.device === 'none') return { ok: true };
  const v = gpuSupport(level, probe, { machine });
  return v.ok ? { ok: true } : { ok: false, reason: v.reason };
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/** The host TSC frequency for microvm's tsc_early_khz= (QWAMOS_TSC_KHZ, else scripts/host-tsc-khz.sh). */
async function hostTscKhz(configured: number | undefined): Promise<number | undefined> {
  if (configured) return configured;
  try {
    const out = await run(['bash', path.join(scriptsDir, 'host-tsc-khz.sh')]);
    const khz = Number(out.trim());
    return Number.isInteger(khz) && khz > 0 ? khz : undefined;
  } catch {
    return undefined;
  }
}

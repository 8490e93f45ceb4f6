// Observe: host facts only, one batch per pass. For each VM: its pidfile's process (ours, dead, or a
// recycled pid), a live QEMU of this VM found by its command line when the pidfile does not name it,
// QMP run state ('unknown' when QMP does not answer), GPU devices in the running VM, disks, the
// image files it boots from (present? escaping the image root?), its Route's netns and tap; and the
// host's QEMU probe (KVM, GPU support), TSC and VM user. Nothing here decides what should be.
import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../../drivers/exec.ts';
import { observeRouteNets } from '../../drivers/netns.ts';
import {
  inspect,
  listVmDevices,
  probeQemu,
  queryStatus,
  resolveVmUser,
  scanQemuProcesses,
  socketPathProblem,
  sysfsGpuHost,
  vmProcesses,
  type PciHostInfo,
  type QemuProbe,
  type VmUser,
} from '../../drivers/qemu.ts';
import { derivedNames } from '../../names.ts';
import { keyOf, type ObjectKey } from '../../resources/keys.ts';
import { imagePathEscape, ownedPathProblem } from '../../resources/paths.ts';
import type { World } from '../../engine/contract.ts';
import type { StoredResource } from '../../store/store.ts';
import { observeCluster, type VmClusterFacts } from './placement.ts';
import { leaseFilePath } from '../../cluster/membership.ts';
import { vmPaths, type LaunchRecord, type VmContext, type VmPaths } from './context.ts';
import { routeOf } from './launch.ts';
import { sizeMiB } from '../../resources/checks.ts';

/** The process the pidfile names. */
export type ProcFact =
  | { state: 'none' }
  | { state: 'running'; pid: number }
  /** Gone, a zombie, or a live process that is not this VM's QEMU (a recycled pid). */
  | { state: 'dead'; pid: number; why: string };

export interface DiskFact {
  name: string;
  /** Absolute path. */
  path: string;
  exists: boolean;
  sizeMiB: number;
  backing?: string;
  /** Escapes the image root or goes through a symlink: never created, opened or deleted. */
  problem?: string;
}

export interface ImageFact {
  exists: boolean;
  escape?: string;
}

/** What the host offers every VM (probed once per controller). */
export interface HostFacts {
  probe: QemuProbe;
  tscKhz?: number;
  vmUser: VmUser;
  /** sysfs view of each PCI address a GPU level names (for passthrough). */
  pci: Record<string, PciHostInfo>;
}

export interface VmActual {
  paths: VmPaths;
  /** Why QEMU's QMP sockets cannot be bound under this run directory, if so. */
  socketProblem?: string;
  proc: ProcFact;
  /** A live QEMU of this VM that the pidfile does not name (missing or corrupt pidfile). */
  stray?: { pid: number };
  /** QMP run state of the running QEMU ('prelaunch' counts as paused); 'unknown' when QMP did not answer. */
  status?: string;
  launched?: LaunchRecord;
  disks: DiskFact[];
  /** Image files the spec names (kernel, initrd, backing images), by their path relative to the image root. */
  images: Record<string, ImageFact>;
  /** GPU devices in the running VM (undefined: not running or QMP did not answer). */
  gpuDevices?: string[];
  /** The Route's netns exists (undefined: no Route, or the Route is not declared). */
  netnsExists?: boolean;
  /** The VM's tap in its Route's netns. */
  tap?: { exists: boolean; plugged: boolean };
  /** The state or run directory exists (something to clean up). */
  leftovers: boolean;
  /** Undefined only when observed for plans only and no VM of the batch runs or is to run (context.ts). */
  host?: HostFacts;
  /** In a cluster: placement, the claim, failover facts (absent on one host). */
  cluster?: VmClusterFacts;
  /** Not run in a cluster, but this state dir belongs to cluster node NAME (its lease file is there). */
  clusterNodeOutside?: string;
}

const scriptsDir = fileURLToPath(new URL('../../../scripts/', import.meta.url));

export class VmObserver {
  private host?: Promise<Omit<HostFacts, 'pci'>>;

  constructor(private readonly ctx: VmContext) {}

  async observe(resources: StoredResource<'VirtualMachine'>[], world: World): Promise<Map<ObjectKey, VmActual>> {
    const probeHost = () => {
      this.host ??= Promise.all([probeQemu(), hostTscKhz(this.ctx.tscKhz), resolveVmUser()]).then(([probe, tscKhz, vmUser]) => ({ probe, vmUser, ...(tscKhz ? { tscKhz } : {}) }));
      this.host.catch(() => (this.host = undefined));
      return this.host;
    };
    // A plan renders a launch only for a VM that runs or is to run: for plans alone (diff) of Stopped
    // VMs that do not run, the host is not probed (QEMU, the TSC script, getent: six processes).
    const wantsRun = (r: StoredResource<'VirtualMachine'>) => (r.spec.runStrategy ?? 'Running') !== 'Stopped';
    const early = !this.ctx.planOnly || resources.some(wantsRun) ? probeHost() : undefined;
    const [procs, cluster, leaseFile] = await Promise.all([
      scanQemuProcesses(),
      this.ctx.cluster ? observeCluster(this.ctx.cluster, this.ctx.stateDir, resources, world) : undefined,
      this.ctx.cluster ? undefined : readJson<{ node?: unknown }>(leaseFilePath(this.ctx.stateDir)),
    ]);
    const outside = leaseFile && typeof leaseFile.node === 'string' ? leaseFile.node : undefined;
    const pci: Record<string, PciHostInfo> = {};
    for (const g of world.list('GpuTrustLevel')) if (g.spec.hostDevice) pci[g.spec.hostDevice] = sysfsGpuHost.pciDevice(g.spec.hostDevice);
    const out = new Map<ObjectKey, VmActual>();
    await Promise.all(
      resources.map(async (r) => {
        const actual = await this.observeOne(r, world, procs);
        const facts = cluster?.get(r.metadata.name);
        if (facts) actual.cluster = facts;
        if (outside) actual.clusterNodeOutside = outside;
        const route = routeOf(r.spec, world);
        if (route) actual.netnsExists = await exists(`/run/netns/${derivedNames(this.ctx.layout.prefix, route.vm).netns}`);
        out.set(keyOf(r), actual);
      }),
    );
    // The tap matters only under a live QEMU (plan and status look at it for a running VM alone): only
    // those VMs' netns are looked into, so a thousand stopped VMs cost no process per netns.
    const live = resources.filter((r) => {
      const a = out.get(keyOf(r))!;
      return (a.proc.state === 'running' || a.stray !== undefined) && routeOf(r.spec, world);
    });
    const facts = early ?? (live.length || resources.some((r) => out.get(keyOf(r))!.proc.state === 'running') ? probeHost() : undefined);
    if (facts) {
      const host = { ...(await facts), pci };
      for (const a of out.values()) a.host = host;
    }
    const nets = live.length ? await observeRouteNets(this.ctx.layout, live.map((r) => routeOf(r.spec, world)!.vm)) : new Map();
    for (const r of live) {
      const route = routeOf(r.spec, world)!;
      const names = derivedNames(this.ctx.layout.prefix, route.vm);
      const tap = nets.get(route.vm)?.tap;
      out.get(keyOf(r))!.tap = { exists: Boolean(tap), plugged: Boolean(tap?.up && tap.master === names.bridge) };
    }
    return out;
  }

  private async observeOne(r: StoredResource<'VirtualMachine'>, world: World, procs: Awaited<ReturnType<typeof scanQemuProcesses>>): Promise<VmActual> {
    const name = r.metadata.name;
    const spec = r.spec;
    const paths = vmPaths(this.ctx, name);
    const socketProblem = socketPathProblem(paths.runDir);
    const [info, launched, leftovers] = await Promise.all([
      inspect(paths.runDir, name),
      readJson<LaunchRecord>(paths.launchRecord),
      Promise.all([exists(paths.stateDir), exists(paths.runDir)]).then(([a, b]) => a || b),
    ]);
    const proc: ProcFact = !info ? { state: 'none' } : info.alive && info.ours ? { state: 'running', pid: info.pid } : { state: 'dead', pid: info.pid, why: info.why ?? 'not ours' };
    const stray = proc.state === 'running' ? undefined : vmProcesses(procs, paths.runDir, name)[0];

    let status: string | undefined;
    let gpuDevices: string[] | undefined;
    if (proc.state === 'running') {
      status = socketProblem ? 'unknown' : await queryStatus(paths.runDir).catch(() => 'unknown');
      // Started with -S (runStrategy Paused), QEMU reports 'prelaunch' until the first cont: paused.
      if (status === 'prelaunch') status = 'paused';
      if (status !== 'unknown') gpuDevices = await listVmDevices(paths.runDir).then((ds) => ds.filter((d) => d.gpu).map((d) => d.id), () => undefined);
    }

    const disks = await Promise.all(
      (spec.disks ?? []).map(async (d): Promise<DiskFact> => {
        const rel = path.join(paths.diskDir, `${d.name}.qcow2`);
        const problem = ownedPathProblem(this.ctx.imageRoot, rel);
        const file = path.join(this.ctx.imageRoot, rel);
        return {
          name: d.name,
          path: file,
          exists: problem ? false : await exists(file),
          sizeMiB: sizeMiB(d.size),
          ...(d.backingImage ? { backing: path.join(this.ctx.imageRoot, d.backingImage) } : {}),
          ...(problem ? { problem } : {}),
        };
      }),
    );
    const images: Record<string, ImageFact> = {};
    for (const rel of [spec.boot?.kernel, spec.boot?.initrd, ...(spec.disks ?? []).map((d) => d.backingImage)]) {
      if (!rel || images[rel]) continue;
      const escape = imagePathEscape(this.ctx.imageRoot, rel);
      images[rel] = { exists: escape ? false : await exists(path.join(this.ctx.imageRoot, rel)), ...(escape ? { escape } : {}) };
    }
    return {
      paths,
      ...(socketProblem ? { socketProblem } : {}),
      proc,
      ...(stray ? { stray: { pid: stray.pid } } : {}),
      ...(status ? { status } : {}),
      ...(launched ? { launched } : {}),
      disks,
      images,
      ...(gpuDevices ? { gpuDevices } : {}),
      leftovers,
    };
  }
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(() => true, () => false);
}

export async function readJson<T>(file: string): Promise<T | undefined> {
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
    const khz = Number((await run(['bash', path.join(scriptsDir, 'host-tsc-khz.sh')])).trim());
    return Number.isInteger(khz) && khz > 0 ? khz : undefined;
  } catch {
    return undefined;
  }
}

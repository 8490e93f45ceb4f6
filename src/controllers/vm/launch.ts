// The QEMU launch a VM needs now, rendered from the resource, the world (its Route, its GPU trust level)
// and what observe saw (image files, disks, the host's probe). Pure. When it cannot be launched, the
// hold says why: Stalled when only a spec change can help, Waiting when the host may still get there.
import { createHash } from 'node:crypto';
import path from 'node:path';
import { gpuSupport, type QemuSpec } from '../../drivers/qemu.ts';
import { stalled, waiting, type Hold, type World } from '../../engine/contract.ts';
import { derivedNames } from '../../names.ts';
import { sizeMiB } from '../../resources/checks.ts';
import type { RouteSpec, VirtualMachineSpec } from '../../resources/generated.ts';
import { BUILTIN_GPU_LEVELS, resolveGpuLevel, type GpuLevel } from '../../resources/gpu.ts';
import type { StoredResource } from '../../store/store.ts';
import type { VmContext } from './context.ts';
import type { VmActual } from './observe.ts';

export type Rendered = { ok: true; spec: QemuSpec; hash: string; netns?: string } | { ok: false; hold: Hold };

/** How long to wait before looking again for something the host may still get (a Route, a kernel file). */
export const RECHECK_MS = 5000;

export function routeOf(spec: VirtualMachineSpec, world: World): RouteSpec | undefined {
  return spec.network?.route ? world.get('Route', spec.network.route)?.spec : undefined;
}

/** The VM's GPU trust level: a declared GpuTrustLevel, else the built-in one of that name. */
export function gpuLevelOf(spec: VirtualMachineSpec, world: World): GpuLevel | undefined {
  const name = spec.gpu?.trustLevel;
  if (!name) return undefined;
  const declared = world.list('GpuTrustLevel').find((g) => g.metadata.name === name);
  return declared ? resolveGpuLevel(name, declared.spec) : BUILTIN_GPU_LEVELS.find((l) => l.name === name);
}

export function renderLaunch(ctx: VmContext, r: StoredResource<'VirtualMachine'>, actual: VmActual, world: World): Rendered {
  const name = r.metadata.name;
  const spec = r.spec;
  const no = (hold: Hold): Rendered => ({ ok: false, hold });
  // Only an observation for plans alone leaves the host unprobed, and only when no VM runs or is to run.
  if (!actual.host) return no(waiting('HostNotProbed', 'the host was not probed in this observation', 1000));
  const { probe, tscKhz, vmUser, pci } = actual.host;

  // Image files: never outside the image root, never a disk through a symlink.
  for (const [field, rel] of [['boot.kernel', spec.boot?.kernel], ['boot.initrd', spec.boot?.initrd], ...(spec.disks ?? []).map((d) => [`disk ${d.name}: backingImage`, d.backingImage] as const)] as const) {
    const escape = rel ? actual.images[rel]?.escape : undefined;
    if (escape) return no(stalled('ImagePathEscape', `${field} "${rel}" ${escape}`));
  }
  const badDisk = actual.disks.find((d) => d.problem);
  if (badDisk) return no(stalled('ImagePathEscape', `disk ${badDisk.name}: ${badDisk.problem}`));
  if (actual.socketProblem) return no(stalled('SocketPathTooLong', actual.socketProblem));

  // Accelerator: KVM only where the CPU has vmx/svm and /dev/kvm works.
  const accelWanted = spec.accel ?? 'auto';
  if (accelWanted === 'kvm' && !probe.kvmUsable) return no(stalled('KvmUnavailable', `accel kvm requested but KVM is not usable here: ${probe.kvmReason}`));
  const accel = accelWanted === 'tcg' ? 'tcg' : accelWanted === 'kvm' || probe.kvmUsable ? 'kvm' : 'tcg';
  const machine = spec.machine ?? 'microvm';

  // GPU: a level the host cannot provide exactly is refused, never downgraded.
  const level = gpuLevelOf(spec, world);
  if (spec.gpu?.trustLevel && !level) return no(stalled('GpuUnavailable', `GPU trust level ${spec.gpu.trustLevel} is neither built in nor declared`));
  let gpu: QemuSpec['gpu'];
  if (level && level.device !== 'none') {
    const verdict = gpuSupport(level, probe, { machine, host: { pciDevice: (addr) => pci[addr] ?? pci[level.hostDevice ?? ''] ?? { exists: false } } });
    if (!verdict.ok) return no(stalled('GpuUnavailable', `GPU trust level ${level.name} (${level.device}) cannot be provided: ${verdict.reason}`));
    gpu = { device: level.device, vramMiB: level.vramMiB, ...(level.hostDevice ? { hostDevice: level.hostDevice } : {}) };
  }

  const route = routeOf(spec, world);
  if (spec.network?.route && !route) return no(waiting('RouteNotReady', `Route "${spec.network.route}" is not declared`, RECHECK_MS));
  if (route && actual.netnsExists === false) return no(waiting('RouteNotReady', `Route "${spec.network!.route}" has no netns yet`, RECHECK_MS));

  for (const [field, rel] of [['boot.kernel', spec.boot?.kernel], ['boot.initrd', spec.boot?.initrd]] as const) {
    if (rel && !actual.images[rel]?.exists) return no(waiting('KernelMissing', `${field} "${rel}" not found under the image root ${ctx.imageRoot}`, RECHECK_MS));
  }

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
    ...(spec.boot?.kernel ? { kernel: path.join(ctx.imageRoot, spec.boot.kernel) } : {}),
    ...(spec.boot?.initrd ? { initrd: path.join(ctx.imageRoot, spec.boot.initrd) } : {}),
    ...(spec.boot ? { cmdline } : {}),
    disks: actual.disks.map((d, i) => ({ path: d.path, ...(d.backing ? { backing: d.backing } : {}), readOnly: Boolean(spec.disks?.[i]?.readOnly), format: 'qcow2' as const })),
    ...(route ? { tap: derivedNames(ctx.layout.prefix, route.vm).tap, mac: macOf(name) } : {}),
    ...(gpu ? { gpu } : {}),
    runDir: actual.paths.runDir,
    user: vmUser,
    ...(spec.runStrategy === 'Paused' ? { startPaused: true } : {}),
  };
  // The netns QEMU runs in: its Route's; without a NIC, the host side's (the test netns in tests).
  const netns = route ? derivedNames(ctx.layout.prefix, route.vm).netns : ctx.layout.hostNetns;
  // What needs a restart when it changes: not the start-paused flag, not the uid QEMU runs as.
  const hash = createHash('sha256').update(JSON.stringify({ ...qemuSpec, startPaused: undefined, user: undefined })).digest('hex').slice(0, 16);
  return { ok: true, spec: qemuSpec, hash, ...(netns ? { netns } : {}) };
}

/** A stable, locally administered MAC address per VM name. */
function macOf(name: string): string {
  const h = createHash('sha256').update(name).digest();
  return ['52', '54', ...[...h.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

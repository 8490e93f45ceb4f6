// The QEMU driver: build a VM's command line (pure), probe what the host's QEMU can do (devices, KVM,
// GPU levels), launch a VM detached inside its network namespace as an unprivileged user, recognise it
// again later (adoption by pidfile + /proc/PID/cmdline + start time, or by scanning /proc for its command
// line), query and stop it over QMP, watch it for crashes, and create its qcow2 disks.
//
// A VM's run directory (0700, owned by the VM user: QEMU writes and removes its pidfile there) holds:
//   qmp.sock        QMP for commands (short connections: query-status, stop, cont, quit, ...)
//   qmp-watch.sock  QMP for the long-lived watcher (a QMP socket serves one client at a time)
//   qemu.pid        written by QEMU (-pidfile), removed by QEMU on a clean exit
//   serial.log      the guest's serial console
//   qemu.log        QEMU's stderr (why a start failed)
//
// Choices, with the QEMU 7.2 facts behind them:
// - QEMU runs unprivileged with the full sandbox: `setpriv --reuid --regid --clear-groups --inh-caps=-all
//   --bounding-set=-all --no-new-privs` and `-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,
//   resourcecontrol=deny`. `-runas` cannot be used: its setuid comes after seccomp is installed and
//   elevateprivileges=deny kills QEMU with SIGSYS. spawn=deny forbids -daemonize's fork, so QEMU is
//   spawned detached (own session) instead. What it cannot open as its user is opened here as root and
//   inherited: kernel and initrd (`/proc/self/fd/N`), disks and backing images (`-add-fd` fd sets), the
//   tap (/dev/net/tun is 0600 root on some hosts: a perl one-liner attaches it with TUNSETIFF and hands
//   QEMU the fd, `-netdev tap,fd=N`).
// - `-no-reboot`: a guest reboot (or panic=-1) ends QEMU, so the controller sees it and applies the
//   runStrategy, instead of a VM rebooting behind its back.
// - GPU `vramMiB` maps to virtio-gpu's `max_hostmem` (bytes of host memory QEMU lets the guest's
//   resources use; default 256 MiB). xres/yres stay default. vfio passes the physical device: vramMiB is
//   ignored there.
// - QEMU 7.2 cannot hot-plug virtio-gpu (device_add: "expects a pluggable device type"): a GPU is always
//   given at launch; a display device added by hand later (e.g. bochs-display on a q35 hotplug port) is
//   seen by listDevices()/isGpuDevice().
import { constants as fsc } from 'node:fs';
import { access, chmod, chown, lstat, mkdir, open, readFile, readdir, rename, rm, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { existsSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { firstLine, run, runResult } from './exec.ts';
import { MAX_SOCKET_PATH } from '../names.ts';
import { QmpClient, deviceDel, listDevices, queryStatusQmp, type QemuDevice, type QemuRunState, type QmpEvent, type QmpStatus } from './qmp.ts';

export type { QemuDevice, QemuRunState, QmpEvent, QmpStatus } from './qmp.ts';

export const QEMU_BIN = 'qemu-system-x86_64';
export const QEMU_IMG = 'qemu-img';

export type Machine = 'microvm' | 'q35';
export type Accel = 'kvm' | 'tcg';
export type GpuDeviceKind = 'none' | 'virtio-gpu' | 'virgl' | 'venus' | 'vfio';

export interface GpuSpec {
  device: GpuDeviceKind;
  vramMiB: number;
  /** PCI address of the host device (vfio only), e.g. 0000:01:00.0. */
  hostDevice?: string;
  /** Render node for virgl/venus (`-display egl-headless,rendernode=...`); QEMU picks one when absent. */
  renderNode?: string;
}

export interface DiskSpec {
  path: string;
  /** The disk's backing image (opened here and handed to QEMU with the disk when QEMU runs as a user). */
  backing?: string;
  readOnly: boolean;
  format: 'qcow2';
}

export interface QemuSpec {
  /** VM name: a DNS label (lowercase, digits, '-'; at most 63). */
  name: string;
  machine: Machine;
  accel: Accel;
  cpus: number;
  memoryMiB: number;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  disks: DiskSpec[];
  /** Tap name inside the VM's netns; no tap = no NIC at all. */
  tap?: string;
  mac?: string;
  gpu?: GpuSpec;
  /** Absolute and short (unix socket paths are limited to 107 bytes); holds the QMP sockets, pidfile and serial log. */
  runDir: string;
  /** Run QEMU as this user (setpriv, no capabilities). Without it QEMU runs as the caller (tests by hand). */
  user?: VmUser;
  /** Host TSC in kHz: appended to the kernel cmdline as tsc_early_khz= on microvm (PIT calibration hangs otherwise). */
  tscKhz?: number;
  /** Start with the CPUs stopped (`-S`: QMP status 'prelaunch' until `cont`). */
  startPaused?: boolean;
  /** q35 only: this many empty pcie-root-ports (ids hp0, hp1, ...) for hot-plugging devices later. */
  hotplugSlots?: number;
}

/** A launch or QEMU command failed; `message` is one line. */
export class QemuError extends Error {
  override name = 'QemuError';
}

// --------------------------------------------------------------------------------------------- names

const VM_NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const TAP_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const PCI_RE = /^(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i;
const RENDER_RE = /^\/dev\/dri\/renderD[0-9]+$/;
const NETNS_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export function checkVmName(name: string): void {
  if (!VM_NAME_RE.test(name)) throw new QemuError(`invalid VM name ${JSON.stringify(name)}: lowercase letters, digits and '-', at most 63`);
}

/** Absolute, no ',' (QEMU's option separator), no control characters. */
function checkPath(what: string, p: string): void {
  if (typeof p !== 'string' || !path.isAbsolute(p)) throw new QemuError(`${what} must be an absolute path: ${JSON.stringify(p)}`);
  if (/[,\u0000-\u001f\u007f]/.test(p)) throw new QemuError(`${what} must not contain ',' or control characters: ${JSON.stringify(p)}`);
}

function checkInt(what: string, v: number, min: number, max: number): void {
  if (!Number.isInteger(v) || v < min || v > max) throw new QemuError(`${what} must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
}

/** Canonical PCI address (0000:01:00.0) or undefined when malformed. */
export function normalizePciAddress(addr: string): string | undefined {
  const m = PCI_RE.exec(addr.trim());
  if (!m) return undefined;
  return `${(m[1] ?? '0000').toLowerCase()}:${m[2]!.toLowerCase()}:${m[3]!.toLowerCase()}.${m[4]}`;
}

export interface RunPaths {
  runDir: string;
  qmp: string;
  qmpWatch: string;
  pidfile: string;
  serial: string;
  log: string;
}

/** The files of a run directory. Never throws on length: a VM whose sockets cannot be bound can still be found and stopped by its pidfile. */
export function runPaths(runDir: string): RunPaths {
  checkPath('runDir', runDir);
  const dir = path.resolve(runDir);
  return {
    runDir: dir,
    qmp: path.join(dir, 'qmp.sock'),
    qmpWatch: path.join(dir, 'qmp-watch.sock'),
    pidfile: path.join(dir, 'qemu.pid'),
    serial: path.join(dir, 'serial.log'),
    log: path.join(dir, 'qemu.log'),
  };
}

/** Why this run directory's QMP sockets cannot be bound (path over 107 bytes), or undefined. */
export function socketPathProblem(runDir: string): string | undefined {
  const p = runPaths(runDir);
  const len = Buffer.byteLength(p.qmpWatch);
  return len > MAX_SOCKET_PATH ? `QMP socket path ${p.qmpWatch} is ${len} bytes, over the ${MAX_SOCKET_PATH} of a unix socket` : undefined;
}

function checkSocketPaths(runDir: string): void {
  const problem = socketPathProblem(runDir);
  if (problem) throw new QemuError(problem);
}

/** The exact `-qmp` value of the command socket: also what inspect() looks for in /proc/PID/cmdline. */
function qmpArg(sock: string): string {
  return `unix:${sock},server=on,wait=off`;
}

// ------------------------------------------------------------------------------------------ command line

interface GpuArgs {
  /** Replaces `-display none` when set. */
  display?: string;
  devices: string[];
}

/** The QEMU arguments for a GPU level on a machine (pure). Throws on what cannot be expressed at all. */
function gpuArgs(gpu: GpuSpec, machine: Machine): GpuArgs {
  if (gpu.device === 'none') return { devices: [] };
  if (gpu.device !== 'vfio') checkInt('gpu.vramMiB', gpu.vramMiB, 1, 65536);
  const mem = `max_hostmem=${gpu.vramMiB}M`;
  switch (gpu.device) {
    case 'virtio-gpu':
      return { devices: ['-device', `${machine === 'microvm' ? 'virtio-gpu-device' : 'virtio-gpu-pci'},id=gpu0,${mem}`] };
    case 'virgl':
    case 'venus': {
      if (gpu.renderNode !== undefined && !RENDER_RE.test(gpu.renderNode)) throw new QemuError(`invalid render node ${JSON.stringify(gpu.renderNode)}`);
      const dev = machine === 'microvm' ? 'virtio-gpu-gl-device' : 'virtio-gpu-gl-pci';
      // Venus (QEMU >= 9.2): blob resources in a host-memory BAR, sized like the VRAM.
      const extra = gpu.device === 'venus' ? `,blob=true,hostmem=${gpu.vramMiB}M,venus=true` : '';
      return {
        display: `egl-headless${gpu.renderNode ? `,rendernode=${gpu.renderNode}` : ''}`,
        devices: ['-device', `${dev},id=gpu0,${mem}${extra}`],
      };
    }
    case 'vfio': {
      if (machine !== 'q35') throw new QemuError('GPU passthrough (vfio) needs machine q35: microvm has no PCI bus');
      const addr = gpu.hostDevice ? normalizePciAddress(gpu.hostDevice) : undefined;
      if (!addr) throw new QemuError(`GPU passthrough needs hostDevice as a PCI address (0000:01:00.0), got ${JSON.stringify(gpu.hostDevice)}`);
      return { devices: ['-device', `vfio-pci,id=gpu0,host=${addr}`] };
    }
    default: {
      const never: never = gpu.device;
      throw new QemuError(`unknown GPU device ${JSON.stringify(never)}`);
    }
  }
}

/** The placeholder for the tap fd in the argv; the tap helper replaces it with the fd it attached. */
export const TAP_FD_PLACEHOLDER = '@TAPFD@';

/**
 * The files QEMU is handed open (fd 3, 4, ... in this order) when it runs as a user: it could not open
 * them itself (a 0700 image root, a root-owned /dev/net/tun).
 */
export function inheritedFiles(spec: QemuSpec): { path: string; write: boolean }[] {
  const files: { path: string; write: boolean }[] = [];
  if (spec.kernel !== undefined) files.push({ path: spec.kernel, write: false });
  if (spec.initrd !== undefined) files.push({ path: spec.initrd, write: false });
  for (const d of spec.disks) {
    // QEMU probes a disk read-only first, then opens it read-write: an fd set needs both.
    if (!d.readOnly) files.push({ path: d.path, write: true });
    files.push({ path: d.path, write: false });
    if (d.backing !== undefined) files.push({ path: d.backing, write: false });
  }
  return files;
}

/**
 * The full QEMU argv (without the binary) for a VM. Pure: validates, touches nothing. With `inherit`,
 * files are named by the fds of inheritedFiles() (see launch) and the NIC by the tap helper's fd.
 */
export function buildQemuArgs(spec: QemuSpec, opts: { inherit?: boolean } = {}): string[] {
  checkVmName(spec.name);
  if (spec.machine !== 'microvm' && spec.machine !== 'q35') throw new QemuError(`unknown machine ${JSON.stringify(spec.machine)}`);
  if (spec.accel !== 'kvm' && spec.accel !== 'tcg') throw new QemuError(`unknown accel ${JSON.stringify(spec.accel)}`);
  checkInt('cpus', spec.cpus, 1, 255);
  checkInt('memoryMiB', spec.memoryMiB, 16, 4 * 1024 * 1024);
  const p = runPaths(spec.runDir);
  checkSocketPaths(spec.runDir);
  const inherit = opts.inherit === true;
  let nextFd = 3;

  const gpu = spec.gpu ? gpuArgs(spec.gpu, spec.machine) : { devices: [] };
  const args = [
    '-name', `guest=${spec.name},process=qwamos-${spec.name}`,
    '-machine', spec.machine,
    '-accel', spec.accel,
    ...(spec.accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-smp', String(spec.cpus),
    '-m', `${spec.memoryMiB}M`,
    '-nodefaults',
    '-no-user-config',
    '-display', gpu.display ?? 'none',
    '-serial', `file:${p.serial}`,
    '-qmp', qmpArg(p.qmp),
    '-qmp', qmpArg(p.qmpWatch),
    '-pidfile', p.pidfile,
    '-no-reboot',
    '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny',
  ];
  if (spec.startPaused) args.push('-S');

  if (spec.kernel !== undefined) {
    checkPath('kernel', spec.kernel);
    args.push('-kernel', inherit ? `/proc/self/fd/${nextFd++}` : spec.kernel);
    if (spec.initrd !== undefined) {
      checkPath('initrd', spec.initrd);
      args.push('-initrd', inherit ? `/proc/self/fd/${nextFd++}` : spec.initrd);
    }
    let cmdline = spec.cmdline ?? '';
    if (/[\u0000-\u001f\u007f]/.test(cmdline)) throw new QemuError('kernel cmdline must not contain control characters');
    if (spec.machine === 'microvm' && spec.tscKhz !== undefined) {
      checkInt('tscKhz', spec.tscKhz, 1, 100_000_000);
      if (!/(^|\s)tsc_early_khz=/.test(cmdline)) cmdline = `${cmdline} tsc_early_khz=${spec.tscKhz}`.trim();
    }
    if (cmdline) args.push('-append', cmdline);
  } else if (spec.initrd !== undefined || spec.cmdline !== undefined) {
    throw new QemuError('initrd and cmdline need a kernel');
  }

  const pci = spec.machine === 'q35';
  if (spec.hotplugSlots !== undefined && spec.hotplugSlots > 0) {
    if (!pci) throw new QemuError('hotplugSlots needs machine q35');
    checkInt('hotplugSlots', spec.hotplugSlots, 0, 16);
    for (let i = 0; i < spec.hotplugSlots; i++) args.push('-device', `pcie-root-port,id=hp${i},chassis=${i + 1}`);
  }

  spec.disks.forEach((d, i) => {
    checkPath(`disks[${i}].path`, d.path);
    if (d.backing !== undefined) checkPath(`disks[${i}].backing`, d.backing);
    if (d.format !== 'qcow2') throw new QemuError(`disks[${i}].format must be qcow2`);
    let file = d.path;
    let backing = '';
    if (inherit) {
      const set = 2 * i + 1;
      const fds = d.readOnly ? [nextFd++] : [nextFd++, nextFd++];
      for (const fd of fds) args.push('-add-fd', `fd=${fd},set=${set}`);
      file = `/dev/fdset/${set}`;
      if (d.backing !== undefined) {
        args.push('-add-fd', `fd=${nextFd++},set=${set + 1}`);
        backing = `,backing.file.filename=/dev/fdset/${set + 1}`;
      }
    }
    args.push('-drive', `file=${file},if=none,id=d${i},format=qcow2${d.readOnly ? ',readonly=on' : ''}${backing}`);
    args.push('-device', `${pci ? 'virtio-blk-pci' : 'virtio-blk-device'},drive=d${i},id=disk${i}`);
  });

  if (spec.tap !== undefined) {
    if (!TAP_RE.test(spec.tap)) throw new QemuError(`invalid tap name ${JSON.stringify(spec.tap)}`);
    let nic = `${pci ? 'virtio-net-pci' : 'virtio-net-device'},netdev=n0,id=net0`;
    if (spec.mac !== undefined) {
      if (!MAC_RE.test(spec.mac) || (parseInt(spec.mac.slice(0, 2), 16) & 1) === 1) throw new QemuError(`invalid unicast MAC ${JSON.stringify(spec.mac)}`);
      nic += `,mac=${spec.mac.toLowerCase()}`;
    }
    // Never vhost: there is no /dev/vhost-net here and vhost=on aborts QEMU.
    args.push('-netdev', inherit ? `tap,id=n0,fd=${TAP_FD_PLACEHOLDER}` : `tap,id=n0,ifname=${spec.tap},script=no,downscript=no`, '-device', nic);
  } else if (spec.mac !== undefined) {
    throw new QemuError('mac needs a tap');
  }

  args.push(...gpu.devices);
  return args;
}

// ------------------------------------------------------------------------------------------------ probe

export interface QemuProbe {
  /** e.g. '7.2.22'. */
  version: string;
  /** Device types from `-device help`. A listed type may still fail to load (a missing module). */
  devices: Set<string>;
  /** Display backends from `-display help`. */
  displays: Set<string>;
  /** virtio-gpu-gl can really be instantiated (`-device virtio-gpu-gl-pci,help` works); why not otherwise. */
  gl: { usable: boolean; reason?: string; venus: boolean };
  /** /dev/dri/renderD* */
  renderNodes: string[];
  /** /dev/vfio/vfio exists. */
  vfioContainer: boolean;
  kvmUsable: boolean;
  kvmReason: string;
}

let probeCache: Promise<QemuProbe> | undefined;

/** What the host's QEMU offers. Cached for the life of the process (refresh: true to probe again). */
export function probeQemu(opts: { refresh?: boolean } = {}): Promise<QemuProbe> {
  if (!probeCache || opts.refresh) {
    probeCache = doProbe();
    probeCache.catch(() => {
      probeCache = undefined;
    });
  }
  return probeCache;
}

async function doProbe(): Promise<QemuProbe> {
  const [ver, dev, disp, gl, renderNodes, kvm, vfioContainer] = await Promise.all([
    run([QEMU_BIN, '--version']),
    run([QEMU_BIN, '-device', 'help']),
    runResult([QEMU_BIN, '-display', 'help']),
    runResult([QEMU_BIN, '-device', 'virtio-gpu-gl-pci,help']),
    readdir('/dev/dri').then((l) => l.filter((n) => /^renderD\d+$/.test(n)).map((n) => `/dev/dri/${n}`).sort(), () => [] as string[]),
    kvmVerdict(),
    access('/dev/vfio/vfio').then(() => true, () => false),
  ]);
  const version = /version\s+(\d+\.\d+(?:\.\d+)?)/.exec(ver)?.[1] ?? 'unknown';
  const devices = new Set([...dev.matchAll(/^name "([^"]+)"/gm)].map((m) => m[1]!));
  const displays = new Set<string>();
  let inList = false;
  for (const line of disp.stdout.split('\n')) {
    if (/^Available display backend types:/.test(line)) inList = true;
    else if (inList && /^[a-z][a-z0-9-]*$/.test(line.trim())) displays.add(line.trim());
  }
  const glOk = gl.exitCode === 0 && /options:/.test(gl.stdout);
  const glReason = glOk
    ? undefined
    : !devices.has('virtio-gpu-gl-pci')
      ? 'this QEMU has no virtio-gpu-gl-pci device'
      : glLoadReason(stripQemuPrefix(firstLine(gl.stderr) || firstLine(gl.stdout) || `exit ${gl.exitCode}`));
  return {
    version,
    devices,
    displays,
    gl: { usable: glOk, ...(glReason ? { reason: glReason } : {}), venus: glOk && /\bvenus=/.test(gl.stdout) },
    renderNodes,
    vfioContainer,
    ...kvm,
  };
}

function versionBelow(version: string, major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(version);
  if (!m) return false;
  return Number(m[1]) < major || (Number(m[1]) === major && Number(m[2]) < minor);
}

function glLoadReason(line: string): string {
  const why = line.replace(/^-device [^:]*:\s*/, '');
  const module = /missing object type/.test(why) ? ' (its QEMU display module is not installed)' : '';
  return `QEMU cannot load virtio-gpu-gl: ${why}${module}`;
}

/** KVM is usable only with hardware virtualisation (vmx/svm in /proc/cpuinfo) AND /dev/kvm opening read/write. */
async function kvmVerdict(): Promise<{ kvmUsable: boolean; kvmReason: string }> {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const flags = new Set((/^flags\s*:(.*)$/m.exec(cpuinfo)?.[1] ?? '').trim().split(/\s+/));
  const hw = flags.has('vmx') ? 'vmx' : flags.has('svm') ? 'svm' : undefined;
  let devOk = false;
  let devWhy = '';
  try {
    const fh = await open('/dev/kvm', fsc.O_RDWR);
    await fh.close();
    devOk = true;
  } catch (err) {
    devWhy = (err as NodeJS.ErrnoException).code ?? String(err);
  }
  if (!hw && !devOk) return { kvmUsable: false, kvmReason: `no vmx/svm CPU flag and /dev/kvm cannot be opened (${devWhy})` };
  if (!hw) return { kvmUsable: false, kvmReason: '/dev/kvm opens but the CPU has no vmx/svm flag (a software hypervisor: guests fail with emulation errors)' };
  if (!devOk) return { kvmUsable: false, kvmReason: `CPU has ${hw} but /dev/kvm cannot be opened read/write (${devWhy})` };
  return { kvmUsable: true, kvmReason: `CPU has ${hw} and /dev/kvm opens read/write` };
}

// ------------------------------------------------------------------------------------------ GPU support

export interface PciHostInfo {
  exists: boolean;
  /** Basename of /sys/bus/pci/devices/ADDR/iommu_group, when there is one. */
  iommuGroup?: string;
  /** Basename of the bound driver, when there is one. */
  driver?: string;
}

/** The host's PCI view; replaced by a fake in tests. */
export interface GpuHost {
  pciDevice(addr: string): PciHostInfo;
}

export const sysfsGpuHost: GpuHost = {
  pciDevice(addr) {
    const dir = `/sys/bus/pci/devices/${addr}`;
    if (!existsSync(dir)) return { exists: false };
    const base = (p: string) => {
      try {
        return path.basename(readlinkSync(p));
      } catch {
        return undefined;
      }
    };
    const iommuGroup = base(`${dir}/iommu_group`);
    const driver = base(`${dir}/driver`);
    return { exists: true, ...(iommuGroup ? { iommuGroup } : {}), ...(driver ? { driver } : {}) };
  },
};

export type GpuSupport = { ok: true; args: string[] } | { ok: false; reason: string };

/**
 * Can this host's QEMU provide a GPU level? ok with the QEMU arguments it adds (the `-display` one
 * replaces `-display none`), or not ok with every reason why. Fail closed: a level that cannot be
 * provided exactly is refused, never downgraded.
 */
export function gpuSupport(level: GpuSpec, probe: QemuProbe, opts: { machine?: Machine; host?: GpuHost } = {}): GpuSupport {
  const machine = opts.machine ?? 'q35';
  const host = opts.host ?? sysfsGpuHost;
  const args = (g: GpuSpec): GpuSupport => {
    try {
      const a = gpuArgs(g, machine);
      return { ok: true, args: [...(a.display ? ['-display', a.display] : []), ...a.devices] };
    } catch (err) {
      return { ok: false, reason: (err as Error).message };
    }
  };
  const why: string[] = [];
  switch (level.device) {
    case 'none':
      return { ok: true, args: [] };
    case 'virtio-gpu': {
      const dev = machine === 'microvm' ? 'virtio-gpu-device' : 'virtio-gpu-pci';
      if (!probe.devices.has(dev)) return { ok: false, reason: `virtio-gpu: QEMU ${probe.version} has no ${dev} device` };
      return args(level);
    }
    case 'virgl':
    case 'venus': {
      const name = level.device;
      if (!probe.gl.usable) why.push(probe.gl.reason ?? 'virtio-gpu-gl is not usable');
      if (name === 'venus' && !probe.gl.venus && (probe.gl.usable || versionBelow(probe.version, 9, 2))) {
        why.push(`QEMU ${probe.version} has no Venus (virtio-gpu-gl's venus property needs QEMU >= 9.2)`);
      }
      if (!probe.displays.has('egl-headless')) why.push('QEMU has no egl-headless display');
      if (level.renderNode !== undefined) {
        if (!probe.renderNodes.includes(level.renderNode)) why.push(`render node ${level.renderNode} does not exist`);
      } else if (probe.renderNodes.length === 0) why.push('no GPU render node (/dev/dri/renderD*) on this host');
      if (why.length) return { ok: false, reason: `${name}: ${why.join('; ')}` };
      return args({ ...level, renderNode: level.renderNode ?? probe.renderNodes[0]! });
    }
    case 'vfio': {
      if (machine !== 'q35') return { ok: false, reason: 'vfio: GPU passthrough needs machine q35 (microvm has no PCI bus)' };
      if (!probe.devices.has('vfio-pci')) why.push(`QEMU ${probe.version} has no vfio-pci device`);
      const addr = level.hostDevice ? normalizePciAddress(level.hostDevice) : undefined;
      if (!addr) why.push(level.hostDevice ? `hostDevice ${JSON.stringify(level.hostDevice)} is not a PCI address` : 'no hostDevice given');
      else {
        const info = host.pciDevice(addr);
        if (!info.exists) why.push(`no PCI device ${addr} on this host (/sys/bus/pci/devices/${addr})`);
        else {
          if (!info.iommuGroup) why.push(`${addr} has no IOMMU group (IOMMU off or absent)`);
          if (info.driver !== 'vfio-pci') why.push(`${addr} is bound to ${info.driver ?? 'no driver'}, not vfio-pci`);
        }
      }
      if (!probe.vfioContainer) why.push('no /dev/vfio/vfio');
      if (why.length) return { ok: false, reason: `vfio: ${why.join('; ')}` };
      return args({ ...level, hostDevice: addr! });
    }
    default: {
      const never: never = level.device;
      return { ok: false, reason: `unknown GPU device ${JSON.stringify(never)}` };
    }
  }
}

// ---------------------------------------------------------------------------------------------- launch

export interface LaunchOptions {
  /** Run QEMU inside this named network namespace (`ip netns exec NS ...`). */
  netns?: string;
  /** Give up on QEMU's start after this long. Default 30 s. */
  timeoutMs?: number;
  /**
   * Called synchronously right before the spawn, after every other preparation; throwing aborts the
   * launch (nothing was spawned). The last moment to check a condition the start depends on.
   */
  beforeSpawn?: () => void;
}

export interface LaunchResult {
  pid: number;
  /** From spawning QEMU to a QMP reply of query-status. */
  readyMs: number;
  status: QmpStatus;
}

/** The unprivileged user QEMU runs as. */
export interface VmUser {
  uid: number;
  gid: number;
  /** The account's name; undefined for the fixed fallback uid (no such account on this host). */
  name?: string;
}

/** The account VMs run as when it exists (scripts/setup.sh creates it). */
export const VM_USER_NAME = 'qwamos-vm';
/** Used when there is no qwamos-vm account: a fixed high uid/gid that no package allocates. */
export const FALLBACK_VM_UID = 64055;

/** `getent passwd qwamos-vm`, or the fixed fallback uid/gid 64055 when the account does not exist. */
export async function resolveVmUser(name = VM_USER_NAME): Promise<VmUser> {
  const r = await runResult(['getent', 'passwd', name]).catch(() => undefined);
  const f = r?.exitCode === 0 ? r.stdout.trim().split(':') : [];
  const uid = Number(f[2]);
  const gid = Number(f[3]);
  if (Number.isInteger(uid) && uid > 0 && Number.isInteger(gid) && gid > 0) return { uid, gid, name };
  return { uid: FALLBACK_VM_UID, gid: FALLBACK_VM_UID };
}

// Attaches the persistent tap (created by root in the VM's netns) on /dev/net/tun as root, keeps the fd
// open across exec (FD_CLOEXEC cleared), puts its number in place of @TAPFD@ and execs the rest of argv.
// struct ifreq: 16-byte name, short flags (IFF_TAP 0x2 | IFF_NO_PI 0x1000 | IFF_VNET_HDR 0x4000).
const TAP_HELPER = `use strict; use Fcntl;
my $tap = shift @ARGV;
open(my $tun, "+<", "/dev/net/tun") or die "open /dev/net/tun: $!\\n";
ioctl($tun, 0x400454ca, pack("a16 s x22", $tap, 0x5002)) or die "attach tap $tap: $!\\n";
fcntl($tun, F_SETFD, 0) or die "fcntl: $!\\n";
my $fd = fileno($tun);
exec { $ARGV[0] } map { s/\\@TAPFD\\@/$fd/r } @ARGV or die "exec $ARGV[0]: $!\\n";`;

/** The argv that starts QEMU: [ip netns exec NS] [perl tap helper TAP] [setpriv ... as the user] qemu ARGS. */
export function launchArgv(spec: QemuSpec, opts: { netns?: string } = {}): string[] {
  const inherit = spec.user !== undefined;
  let argv = [QEMU_BIN, ...buildQemuArgs(spec, { inherit })];
  if (spec.user) {
    checkInt('user.uid', spec.user.uid, 1, 2 ** 31 - 2);
    checkInt('user.gid', spec.user.gid, 1, 2 ** 31 - 2);
    argv = ['setpriv', `--reuid=${spec.user.uid}`, `--regid=${spec.user.gid}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs', ...argv];
  }
  if (inherit && spec.tap !== undefined) argv = ['perl', '-e', TAP_HELPER, spec.tap, ...argv];
  if (opts.netns !== undefined) {
    if (!NETNS_RE.test(opts.netns)) throw new QemuError(`invalid netns name ${JSON.stringify(opts.netns)}`);
    argv = ['ip', 'netns', 'exec', opts.netns, ...argv];
  }
  return argv;
}

/**
 * Start a VM detached (inside `netns`, as spec.user), wait until QMP answers, lock the pidfile and QMP
 * sockets down to root 0600. Refuses when a QEMU of this VM is already running — found by the pidfile or,
 * when that is missing or corrupt, by its command line — and never removes a live QEMU's files.
 * QEMU's own error becomes a one-line QemuError.
 */
export async function launch(spec: QemuSpec, opts: LaunchOptions = {}): Promise<LaunchResult> {
  const argv = launchArgv(spec, opts);
  const p = runPaths(spec.runDir);
  const owner = spec.user ?? { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };

  await mkdir(path.dirname(p.runDir), { recursive: true, mode: 0o711 });
  await mkdir(p.runDir, { recursive: true, mode: 0o700 });
  const st = await lstat(p.runDir);
  if (!st.isDirectory() || st.isSymbolicLink()) throw new QemuError(`run directory ${p.runDir} is not a directory`);
  if (st.uid !== owner.uid && st.uid !== (process.getuid?.() ?? 0)) throw new QemuError(`run directory ${p.runDir} is owned by uid ${st.uid}, neither us nor the VM user`);
  await chown(p.runDir, owner.uid, owner.gid);
  await chmod(p.runDir, 0o700);

  const live = await findLive(p, spec.name);
  if (live) throw new QemuError(`VM ${spec.name} is already running (pid ${live.pid}${live.by === 'cmdline' ? ', found by its command line' : ''})`);
  await removeRunFiles(p);

  // Opened here as root, inherited as fds 3, 4, ... (the order buildQemuArgs numbers them in).
  const files = spec.user ? inheritedFiles(spec) : [];
  const handles: FileHandle[] = [];
  const log = await open(p.log, 'w', 0o600);
  const t0 = performance.now();
  let exited: { code: number | null; signal: string | null } | undefined;
  try {
    for (const f of files) {
      const fh = await open(f.path, (f.write ? fsc.O_RDWR : fsc.O_RDONLY) | fsc.O_NOFOLLOW).catch((err: NodeJS.ErrnoException) => {
        throw new QemuError(`starting VM ${spec.name}: cannot open ${f.path}: ${err.code ?? err.message}`);
      });
      handles.push(fh);
    }
    opts.beforeSpawn?.();
    const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['ignore', log.fd, log.fd, ...handles.map((h) => h.fd)] });
    child.on('error', () => {});
    child.on('exit', (code, signal) => (exited = { code, signal }));
    child.unref();
  } finally {
    // The child has its own copies.
    await Promise.all([...handles, log].map((h) => h.close()));
  }

  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  const failure = async () => {
    const text = await readFile(p.log, 'utf8').catch(() => '');
    const line = text.split('\n').map((l) => stripQemuPrefix(l.trim())).find((l) => l && !/terminating on signal/.test(l));
    return `starting VM ${spec.name}: ${line ?? `QEMU exited (${exited?.signal ?? `code ${exited?.code}`})`}`;
  };
  try {
    // QEMU binds its QMP sockets and writes the pidfile before the guest starts.
    let client: QmpClient | undefined;
    while (!client) {
      if (exited) throw new QemuError(await failure());
      if (Date.now() > deadline) throw new QemuError(`starting VM ${spec.name}: no QMP answer after ${opts.timeoutMs ?? 30_000} ms`);
      const pidReady = (await readPid(p.pidfile)) !== undefined;
      if (pidReady) client = await QmpClient.connect(p.qmp, { timeoutMs: 2000 }).catch(() => undefined);
      if (!client) await new Promise((r) => setTimeout(r, 5));
    }
    const pid = (await readPid(p.pidfile))!;
    try {
      // Root's: the VM user (shared by all VMs) may remove them (its directory) but not use or rewrite them.
      for (const f of [p.qmp, p.qmpWatch, p.pidfile]) {
        await chown(f, process.getuid?.() ?? 0, process.getgid?.() ?? 0);
        await chmod(f, 0o600);
      }
      for (const sock of [p.qmp, p.qmpWatch]) {
        const mode = (await stat(sock)).mode & 0o777;
        if (mode !== 0o600) throw new QemuError(`QMP socket ${sock} has mode ${mode.toString(8)} after chmod 600`);
      }
      const status = await queryStatusQmp(client);
      return { pid, readyMs: Math.round(performance.now() - t0), status };
    } finally {
      client.close();
    }
  } catch (err) {
    // Never leave a half-set-up VM behind: it is ours (we just started it), kill it.
    const info = await inspect(p.runDir, spec.name);
    if (info?.alive && info.ours) {
      killPid(info.pid, 'SIGKILL');
      await waitGone(info.pid, info.startTicks, 5000);
    }
    if (!(await findLive(p, spec.name))) await removeRunFiles(p);
    throw err instanceof QemuError ? err : new QemuError(`starting VM ${spec.name}: ${(err as Error).message}`);
  }
}

// ------------------------------------------------------------------------------------------ processes

/** A live qemu-system process as /proc shows it. */
export interface QemuProcess {
  pid: number;
  startTicks: number;
  /** Values after each -qmp. */
  qmp: string[];
  /** Values after -name. */
  names: string[];
}

/** Every live qemu-system process on the host (one pass over /proc/STAR/cmdline). */
export async function scanQemuProcesses(): Promise<QemuProcess[]> {
  const pids = (await readdir('/proc')).filter((d) => /^\d+$/.test(d)).map(Number);
  const found = await Promise.all(
    pids.map(async (pid): Promise<QemuProcess | undefined> => {
      const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').then((t) => t.split('\0'), () => undefined);
      if (!argv || !/qemu-system/.test(path.basename(argv[0] ?? ''))) return undefined;
      const ps = await procStat(pid);
      if (!ps || ps.state === 'Z' || ps.state === 'X') return undefined;
      const after = (flag: string) => argv.flatMap((a, i) => (a === flag && i + 1 < argv.length ? [argv[i + 1]!] : []));
      return { pid, startTicks: ps.startTicks, qmp: after('-qmp'), names: after('-name') };
    }),
  );
  return found.filter((x): x is QemuProcess => x !== undefined);
}

/** The processes among `procs` that are the VM of this run directory (its QMP socket and -name). */
export function vmProcesses(procs: readonly QemuProcess[], runDir: string, name: string): QemuProcess[] {
  const p = runPaths(runDir);
  return procs.filter((q) => q.qmp.includes(qmpArg(p.qmp)) && q.names.some((v) => v === `guest=${name}` || v.startsWith(`guest=${name},`)));
}

/** A live QEMU of this VM, by its pidfile or else by its command line. */
async function findLive(p: RunPaths, name: string): Promise<{ pid: number; startTicks: number | undefined; by: 'pidfile' | 'cmdline' } | undefined> {
  const info = await inspect(p.runDir, name);
  if (info?.alive && info.ours) return { pid: info.pid, startTicks: info.startTicks, by: 'pidfile' };
  const found = vmProcesses(await scanQemuProcesses(), p.runDir, name)[0];
  return found ? { pid: found.pid, startTicks: found.startTicks, by: 'cmdline' } : undefined;
}

/**
 * Adopt a live QEMU of this VM whose pidfile is missing or corrupt: check by /proc that `pid` is this
 * VM's QEMU (as inspect would), then rewrite the pidfile. Throws when it is not.
 */
export async function adoptPid(runDir: string, name: string, pid: number): Promise<void> {
  const p = runPaths(runDir);
  checkVmName(name);
  const match = vmProcesses(await scanQemuProcesses(), p.runDir, name).find((q) => q.pid === pid);
  if (!match) throw new QemuError(`process ${pid} is not the QEMU of VM ${name}: not adopted`);
  const tmp = `${p.pidfile}.adopt`;
  await writeFile(tmp, `${pid}\n`, { mode: 0o600 });
  await rename(tmp, p.pidfile);
}

// --------------------------------------------------------------------------------------------- inspect

export interface VmInspect {
  /** From the pidfile. */
  pid: number;
  /** The pid's process exists (and is not a zombie). */
  alive: boolean;
  /** Alive and provably the QEMU of this run directory (and name), not a recycled pid. */
  ours: boolean;
  /** Why not alive / not ours. */
  why?: string;
  /** The process's start time in clock ticks since boot (to recognise it again), when alive. */
  startTicks?: number;
}

const CLK_TCK = 100; // USER_HZ: 100 on every Linux x86 ABI

interface ProcStat {
  state: string;
  startTicks: number;
}

async function procStat(pid: number): Promise<ProcStat | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, 'utf8');
    // comm may contain spaces and parentheses: fields after the last ')'.
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0] ?? '?', startTicks: Number(rest[19]) };
  } catch {
    return undefined;
  }
}

async function uptimeSeconds(): Promise<number> {
  return Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]);
}

async function readPid(pidfile: string): Promise<number | undefined> {
  try {
    const n = Number((await readFile(pidfile, 'utf8')).trim());
    return Number.isInteger(n) && n > 1 ? n : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Adoption check (undefined = no pidfile: nothing of ours runs from this run directory): is the VM of this run directory running, and is the pidfile's pid really the QEMU we
 * started? Ours = /proc/PID/cmdline is a qemu-system with `-qmp unix:RUNDIR/qmp.sock,...` and (when a
 * name is given) `-name guest=NAME,...`, and the process did not start after the pidfile was written
 * (a recycled pid starts later).
 */
export async function inspect(runDir: string, name?: string): Promise<VmInspect | undefined> {
  const p = runPaths(runDir);
  if (name !== undefined) checkVmName(name);
  let pidText: string;
  let mtimeMs: number;
  try {
    pidText = (await readFile(p.pidfile, 'utf8')).trim();
    mtimeMs = (await stat(p.pidfile)).mtimeMs;
  } catch {
    return undefined;
  }
  const pid = Number(pidText);
  if (!/^\d+$/.test(pidText) || pid <= 1) return undefined; // half-written or not QEMU's: as good as none
  const ps = await procStat(pid);
  if (!ps) return { pid, alive: false, ours: false, why: `process ${pid} is gone` };
  if (ps.state === 'Z' || ps.state === 'X') return { pid, alive: false, ours: false, why: `process ${pid} has exited (zombie)` };
  const base = { pid, alive: true, startTicks: ps.startTicks };
  let argv: string[];
  try {
    argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
  } catch {
    return { ...base, ours: false, why: `cannot read /proc/${pid}/cmdline` };
  }
  const after = (flag: string) => argv.flatMap((a, i) => (a === flag && i + 1 < argv.length ? [argv[i + 1]!] : []));
  if (!/qemu-system/.test(path.basename(argv[0] ?? ''))) return { ...base, ours: false, why: `process ${pid} is not QEMU (${path.basename(argv[0] ?? '?')})` };
  if (!after('-qmp').includes(qmpArg(p.qmp))) return { ...base, ours: false, why: `process ${pid} is a QEMU of another run directory` };
  if (name !== undefined && !after('-name').some((v) => v === `guest=${name}` || v.startsWith(`guest=${name},`))) {
    return { ...base, ours: false, why: `process ${pid} is not VM ${name}` };
  }
  // Started when? now - (uptime - start/CLK_TCK). QEMU writes the pidfile after it starts.
  const startedMs = Date.now() - ((await uptimeSeconds()) - ps.startTicks / CLK_TCK) * 1000;
  if (startedMs > mtimeMs + 2000) return { ...base, ours: false, why: `process ${pid} started after the pidfile was written (recycled pid)` };
  return { ...base, ours: true };
}

/** QEMU's run state ('running', 'paused', 'prelaunch', 'shutdown', ...) over the command socket. */
export async function queryStatus(runDir: string, opts: { timeoutMs?: number } = {}): Promise<QemuRunState> {
  return withQmp(runDir, async (c) => (await queryStatusQmp(c)).status, opts);
}

/** Run one QMP command on the VM of this run directory. */
export async function qmpCommand<T = unknown>(runDir: string, command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
  return withQmp(runDir, (c) => c.execute<T>(command, args), opts);
}

/**
 * The devices added to the VM (with -device or device_add; see qmp.ts listDevices), each with `gpu`.
 * With `{ builtin: true }` also the machine's own PCI devices.
 */
export async function listVmDevices(runDir: string, opts: { timeoutMs?: number; builtin?: boolean } = {}): Promise<QemuDevice[]> {
  const all = await withQmp(runDir, (c) => listDevices(c), opts);
  return opts.builtin ? all : all.filter((d) => !d.builtin);
}

/**
 * `device_del ID` (an id or a QOM path) and wait up to waitMs for DEVICE_DELETED. True when the device
 * is gone. A PCI unplug needs the guest's cooperation: without a guest OS it never completes.
 */
export async function removeVmDevice(runDir: string, id: string, waitMs = 3000): Promise<boolean> {
  return withQmp(runDir, (c) => deviceDel(c, id, waitMs), { timeoutMs: Math.max(3000, waitMs + 1000) });
}

/** Connect to the command socket, run fn, close. */
export async function withQmp<T>(runDir: string, fn: (c: QmpClient) => Promise<T>, opts: { timeoutMs?: number } = {}): Promise<T> {
  const p = runPaths(runDir);
  checkSocketPaths(runDir);
  const client = await QmpClient.connect(p.qmp, { timeoutMs: opts.timeoutMs ?? 3000, commandTimeoutMs: opts.timeoutMs ?? 5000 });
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

// ------------------------------------------------------------------------------------------------ stop

export interface StopOptions {
  /**
   * ACPI powerdown first (running guests only; the guest must handle the power button, e.g. acpid —
   * microvm has ACPI by default in 7.2, not with acpi=off), `quit` after timeoutMs. Otherwise `quit` at
   * once. Without a usable QMP socket, SIGTERM takes the place of `quit`.
   */
  graceful: boolean;
  /** How long the guest gets to power off (graceful). Default 10 s. */
  timeoutMs?: number;
  /** Only stop it if it is this VM (checked against -name guest=NAME). */
  name?: string;
  /** How long `quit` (or SIGTERM) gets before SIGKILL. Default 3 s. */
  quitTimeoutMs?: number;
}

export interface StopResult {
  /** What ended it: already not running, the guest's ACPI poweroff, QMP quit / SIGTERM, SIGKILL. */
  how: 'not-running' | 'powerdown' | 'quit' | 'kill';
  ms: number;
  /** For 'not-running': why (no pidfile, process gone, pid not ours). */
  why?: string;
}

/**
 * Stop the VM of this run directory and wait until its process is gone. Never signals a pid that
 * inspect() does not call ours (re-checked before every signal). Leaves no pidfile or sockets behind.
 */
export async function stop(runDir: string, opts: StopOptions): Promise<StopResult> {
  const p = runPaths(runDir);
  const t0 = performance.now();
  const ms = () => Math.round(performance.now() - t0);
  const info = await inspect(p.runDir, opts.name);
  let target = info?.alive && info.ours ? { pid: info.pid, startTicks: info.startTicks } : undefined;
  // A missing or corrupt pidfile does not mean no QEMU: look for this VM's command line.
  if (!target && opts.name !== undefined) target = vmProcesses(await scanQemuProcesses(), p.runDir, opts.name)[0];
  if (!target) {
    if (!info?.alive) await removeRunFiles(p);
    return { how: 'not-running', ms: ms(), why: info?.why ?? 'no pidfile' };
  }
  const pid = target.pid;
  const start = target.startTicks;
  const client = socketPathProblem(p.runDir) ? undefined : await QmpClient.connect(p.qmp, { timeoutMs: 2000 }).catch(() => undefined);
  try {
    if (opts.graceful) {
      // Only a running guest can react to the ACPI power button: a paused one goes straight to quit.
      const running = client ? await queryStatusQmp(client).then((st) => st.running, () => false) : false;
      let sent = false;
      if (running) sent = await client!.execute('system_powerdown').then(() => true, () => false);
      if (sent && (await waitGone(pid, start, opts.timeoutMs ?? 10_000))) return done('powerdown');
    }
    if (client && !client.closed) await client.execute('quit', undefined, { timeoutMs: 2000 }).catch(() => undefined);
    else if (await stillSame(pid, start)) killPid(pid, 'SIGTERM');
    if (await waitGone(pid, start, opts.quitTimeoutMs ?? 3000)) return done('quit');
    if (await stillSame(pid, start)) killPid(pid, 'SIGKILL');
    if (await waitGone(pid, start, 5000)) return done('kill');
    throw new QemuError(`VM in ${p.runDir}: process ${pid} still there 5 s after SIGKILL`);
  } finally {
    client?.close();
  }

  async function done(how: StopResult['how']): Promise<StopResult> {
    await removeRunFiles(p);
    return { how, ms: ms() };
  }
}

/** stop() for callers that know the VM's name (never stops a QEMU of another VM). */
export function stopVm(runDir: string, name: string, opts: Omit<StopOptions, 'name'>): Promise<StopResult> {
  return stop(runDir, { ...opts, name });
}

/** The process found earlier (pid and start time) still exists: never signal a recycled pid. */
async function stillSame(pid: number, startTicks: number | undefined): Promise<boolean> {
  const ps = await procStat(pid);
  return !!ps && ps.state !== 'Z' && ps.state !== 'X' && ps.startTicks === startTicks;
}

function killPid(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** Wait until the process (pid with this start time) no longer exists or is a zombie. True if gone in time. */
async function waitGone(pid: number, startTicks: number | undefined, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ps = await procStat(pid);
    if (!ps || ps.state === 'Z' || ps.state === 'X' || (startTicks !== undefined && ps.startTicks !== startTicks)) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Remove what a dead QEMU left behind (after SIGKILL QEMU cannot remove its pidfile and sockets). */
async function removeRunFiles(p: RunPaths): Promise<void> {
  await Promise.all([p.pidfile, p.qmp, p.qmpWatch].map((f) => rm(f, { force: true })));
}

// ----------------------------------------------------------------------------------------------- watch

export type VmChange =
  /** The QMP connection hit EOF: QEMU quit, crashed or was killed (SIGKILL sends no event). */
  | { kind: 'exit'; error?: string }
  /** A QMP event passed through: SHUTDOWN, STOP, RESUME, POWERDOWN, RESET, GUEST_PANICKED, DEVICE_DELETED, ... */
  | { kind: 'event'; event: QmpEvent };

export interface VmWatch {
  /** Resolves true once connected; false when the connection failed (then 'exit' has been reported). */
  ready: Promise<boolean>;
  /** The open watch connection once ready (commands may be sent on it too). */
  readonly client: QmpClient | undefined;
  /** Stop watching (no 'exit' is reported after this). */
  close(): void;
}

/**
 * Keep a QMP connection to the VM's watch socket open and report every QMP event and the EOF at once.
 * Returns at once; connects in the background. 'exit' comes exactly once unless close() came first,
 * also when the connection cannot be made (the VM is gone, or its watch socket is busy: see `error`).
 */
export function watchVm(runDir: string, onChange: (c: VmChange) => void, opts: { timeoutMs?: number } = {}): VmWatch {
  const p = runPaths(runDir);
  let closedByUs = false;
  let exited = false;
  let client: QmpClient | undefined;
  const exit = (error?: string) => {
    if (closedByUs || exited) return;
    exited = true;
    onChange(error ? { kind: 'exit', error } : { kind: 'exit' });
  };
  const ready = QmpClient.connect(p.qmpWatch, { timeoutMs: opts.timeoutMs ?? 3000 }).then(
    (c) => {
      if (closedByUs) {
        c.close();
        return false;
      }
      client = c;
      c.onEvent((event) => {
        if (!closedByUs) onChange({ kind: 'event', event });
      });
      c.onClose((err) => exit(err?.message));
      return true;
    },
    (err: Error) => {
      exit(err.message);
      return false;
    },
  );
  return {
    ready,
    get client() {
      return client;
    },
    close() {
      closedByUs = true;
      client?.close();
    },
  };
}

// ----------------------------------------------------------------------------------------------- disks

export interface DiskInfo {
  format: string;
  virtualSizeBytes: number;
  actualSizeBytes: number;
  backingFile?: string;
  backingFormat?: string;
  dirty: boolean;
}

/**
 * `qemu-img create -f qcow2 [-b BACKING -F FMT] PATH [SIZE]`, mode 0600. Refuses to overwrite: the file
 * is created exclusively first. Without sizeMiB a backed disk takes its backing image's size.
 */
export async function createDisk(file: string, sizeMiB: number | undefined, backing?: string): Promise<DiskInfo> {
  checkPath('disk path', file);
  if (sizeMiB !== undefined) checkInt('disk size (MiB)', sizeMiB, 1, 64 * 1024 * 1024);
  else if (backing === undefined) throw new QemuError('createDisk: a size is needed without a backing image');
  let backingFormat: string | undefined;
  if (backing !== undefined) {
    checkPath('backing image', backing);
    backingFormat = (await diskInfo(backing)).format;
    if (backingFormat !== 'qcow2' && backingFormat !== 'raw') throw new QemuError(`backing image ${backing} is ${backingFormat}, not qcow2 or raw`);
  }
  let fh;
  try {
    fh = await open(file, fsc.O_CREAT | fsc.O_EXCL | fsc.O_WRONLY | fsc.O_NOFOLLOW, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new QemuError(`disk ${file} already exists: refusing to overwrite it`);
    throw new QemuError(`disk ${file}: ${code ?? (err as Error).message}`);
  }
  await fh.close();
  try {
    const argv = [QEMU_IMG, 'create', '-q', '-f', 'qcow2'];
    if (backing !== undefined) argv.push('-b', backing, '-F', backingFormat!);
    argv.push(file);
    if (sizeMiB !== undefined) argv.push(`${sizeMiB}M`);
    const r = await runResult(argv);
    if (r.exitCode !== 0) throw new QemuError(`creating disk ${file}: ${stripQemuPrefix(firstLine(r.stderr)) || `exit ${r.exitCode}`}`);
    await chmod(file, 0o600);
    return await diskInfo(file);
  } catch (err) {
    await unlink(file).catch(() => {});
    throw err;
  }
}

/** `qemu-img info --output=json` (with --force-share, so it works while a VM has the disk open). */
export async function diskInfo(file: string): Promise<DiskInfo> {
  checkPath('disk path', file);
  const r = await runResult([QEMU_IMG, 'info', '--force-share', '--output=json', file]);
  if (r.exitCode !== 0) throw new QemuError(`disk ${file}: ${stripQemuPrefix(firstLine(r.stderr)) || `exit ${r.exitCode}`}`);
  const j = JSON.parse(r.stdout) as {
    format: string;
    'virtual-size': number;
    'actual-size'?: number;
    'backing-filename'?: string;
    'full-backing-filename'?: string;
    'backing-filename-format'?: string;
    'dirty-flag'?: boolean;
  };
  const backingFile = j['full-backing-filename'] ?? j['backing-filename'];
  return {
    format: j.format,
    virtualSizeBytes: j['virtual-size'],
    actualSizeBytes: j['actual-size'] ?? 0,
    ...(backingFile ? { backingFile } : {}),
    ...(j['backing-filename-format'] ? { backingFormat: j['backing-filename-format'] } : {}),
    dirty: j['dirty-flag'] ?? false,
  };
}

// ---------------------------------------------------------------------------------------------- helpers


/** "qemu-system-x86_64: -device foo: msg" -> "-device foo: msg". */
function stripQemuPrefix(line: string): string {
  return line.replace(/^qemu-(system-[a-z0-9_]+|img):\s*/, '');
}

// The QEMU driver: buildQemuArgs and gpuSupport (pure), the QMP client against a scripted fake server,
// and the real qemu-system-x86_64 (TCG, never KVM) inside a network namespace the test creates.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  buildQemuArgs,
  createDisk,
  diskInfo,
  gpuSupport,
  inspect,
  launch,
  listVmDevices,
  normalizePciAddress,
  removeVmDevice,
  probeQemu,
  qmpCommand,
  queryStatus,
  runPaths,
  socketPathProblem,
  inheritedFiles,
  launchArgv,
  stop,
  stopVm,
  watchVm,
  withQmp,
  type GpuHost,
  type QemuProbe,
  type QemuSpec,
  type VmChange,
} from '../../src/drivers/qemu.ts';
import { QmpClient, QmpConnectionError, QmpError, deviceAdd, isGpuDevice, qmpOnce, type QmpEvent } from '../../src/drivers/qmp.ts';
import { processAlive } from '../../src/proc.ts';
import { createTestHost, tryIn, type TestHost } from '../helpers/hostns.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------------------------ buildQemuArgs

describe('buildQemuArgs (pure)', () => {
  const base: QemuSpec = { name: 'web', machine: 'microvm', accel: 'tcg', cpus: 2, memoryMiB: 256, disks: [], runDir: '/run/qw/vms/web' };
  const after = (args: string[], flag: string) => args.flatMap((a, i) => (a === flag ? [args[i + 1]!] : []));

  test('the fixed part: no defaults, files in the run dir, not daemonized (spawn=deny), full sandbox, named', () => {
    const a = buildQemuArgs(base);
    for (const f of ['-nodefaults', '-no-user-config', '-no-reboot']) assert.ok(a.includes(f), f);
    assert.ok(!a.includes('-daemonize'), '-daemonize forks, which spawn=deny forbids');
    assert.deepEqual(after(a, '-sandbox'), ['on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny']);
    assert.deepEqual(after(a, '-name'), ['guest=web,process=qwamos-web']);
    assert.deepEqual(after(a, '-machine'), ['microvm']);
    assert.deepEqual(after(a, '-accel'), ['tcg']);
    assert.deepEqual(after(a, '-smp'), ['2']);
    assert.deepEqual(after(a, '-m'), ['256M']);
    assert.deepEqual(after(a, '-display'), ['none']);
    assert.deepEqual(after(a, '-serial'), ['file:/run/qw/vms/web/serial.log']);
    assert.deepEqual(after(a, '-qmp'), ['unix:/run/qw/vms/web/qmp.sock,server=on,wait=off', 'unix:/run/qw/vms/web/qmp-watch.sock,server=on,wait=off']);
    assert.deepEqual(after(a, '-pidfile'), ['/run/qw/vms/web/qemu.pid']);
    assert.ok(!a.includes('-cpu'), 'no -cpu host under TCG');
    assert.ok(!a.includes('-netdev') && !a.includes('-S') && !a.includes('-kernel'));
    assert.ok(!a.some((x) => /vhost/.test(x)));
  });

  test('microvm: kernel, initrd, cmdline with tsc_early_khz, virtio-mmio disk and NIC', () => {
    const a = buildQemuArgs({
      ...base,
      kernel: '/img/vmlinux',
      initrd: '/img/initrd.cpio',
      cmdline: 'console=ttyS0 quiet',
      tscKhz: 2596138,
      disks: [
        { path: '/img/disks/web/root.qcow2', readOnly: false, format: 'qcow2' },
        { path: '/img/base.qcow2', readOnly: true, format: 'qcow2' },
      ],
      tap: 'qwt-web',
      mac: '52:54:AB:00:00:01',
    });
    assert.deepEqual(after(a, '-kernel'), ['/img/vmlinux']);
    assert.deepEqual(after(a, '-initrd'), ['/img/initrd.cpio']);
    assert.deepEqual(after(a, '-append'), ['console=ttyS0 quiet tsc_early_khz=2596138']);
    assert.deepEqual(after(a, '-drive'), [
      'file=/img/disks/web/root.qcow2,if=none,id=d0,format=qcow2',
      'file=/img/base.qcow2,if=none,id=d1,format=qcow2,readonly=on',
    ]);
    assert.deepEqual(after(a, '-netdev'), ['tap,id=n0,ifname=qwt-web,script=no,downscript=no']);
    assert.deepEqual(after(a, '-device'), ['virtio-blk-device,drive=d0,id=disk0', 'virtio-blk-device,drive=d1,id=disk1', 'virtio-net-device,netdev=n0,id=net0,mac=52:54:ab:00:00:01']);
    // An explicit tsc_early_khz in the cmdline wins.
    assert.deepEqual(after(buildQemuArgs({ ...base, kernel: '/k', cmdline: 'tsc_early_khz=1000', tscKhz: 5 }), '-append'), ['tsc_early_khz=1000']);
  });

  test('q35: PCI devices, no tsc_early_khz, hotplug ports, KVM with -cpu host, -S', () => {
    const a = buildQemuArgs({
      ...base,
      machine: 'q35',
      accel: 'kvm',
      kernel: '/k',
      cmdline: 'console=ttyS0',
      tscKhz: 2596138,
      disks: [{ path: '/d.qcow2', readOnly: false, format: 'qcow2' }],
      tap: 't0',
      hotplugSlots: 2,
      startPaused: true,
    });
    assert.deepEqual(after(a, '-append'), ['console=ttyS0']);
    assert.deepEqual(after(a, '-accel'), ['kvm']);
    assert.deepEqual(after(a, '-cpu'), ['host']);
    assert.ok(a.includes('-S'));
    assert.deepEqual(after(a, '-device'), ['pcie-root-port,id=hp0,chassis=1', 'pcie-root-port,id=hp1,chassis=2', 'virtio-blk-pci,drive=d0,id=disk0', 'virtio-net-pci,netdev=n0,id=net0']);
  });

  test('GPU levels: virtio-gpu per machine, GL display for virgl/venus, vfio on q35', () => {
    const gpu = (g: QemuSpec['gpu'], machine: QemuSpec['machine'] = 'q35') => buildQemuArgs({ ...base, machine, gpu: g });
    assert.deepEqual(after(gpu({ device: 'none', vramMiB: 128 }), '-device'), []);
    assert.deepEqual(after(gpu({ device: 'virtio-gpu', vramMiB: 256 }), '-device'), ['virtio-gpu-pci,id=gpu0,max_hostmem=256M']);
    assert.deepEqual(after(gpu({ device: 'virtio-gpu', vramMiB: 256 }, 'microvm'), '-device'), ['virtio-gpu-device,id=gpu0,max_hostmem=256M']);
    const virgl = gpu({ device: 'virgl', vramMiB: 512, renderNode: '/dev/dri/renderD128' });
    assert.deepEqual(after(virgl, '-display'), ['egl-headless,rendernode=/dev/dri/renderD128']);
    assert.deepEqual(after(virgl, '-device'), ['virtio-gpu-gl-pci,id=gpu0,max_hostmem=512M']);
    assert.deepEqual(after(gpu({ device: 'venus', vramMiB: 1024 }), '-device'), ['virtio-gpu-gl-pci,id=gpu0,max_hostmem=1024M,blob=true,hostmem=1024M,venus=true']);
    assert.deepEqual(after(gpu({ device: 'vfio', vramMiB: 2048, hostDevice: '01:00.0' }), '-device'), ['vfio-pci,id=gpu0,host=0000:01:00.0']);
    assert.throws(() => gpu({ device: 'vfio', vramMiB: 2048, hostDevice: '01:00.0' }, 'microvm'), /needs machine q35/);
    assert.throws(() => gpu({ device: 'vfio', vramMiB: 2048 }), /hostDevice/);
    assert.throws(() => gpu({ device: 'virgl', vramMiB: 512, renderNode: '/dev/sda' }), /render node/);
  });

  test('refuses what could break the command line or the kernel limits', () => {
    const bad: [Partial<QemuSpec>, RegExp][] = [
      [{ name: 'Web' }, /invalid VM name/],
      [{ name: 'a,b' }, /invalid VM name/],
      [{ runDir: 'relative/dir' }, /absolute/],
      [{ runDir: '/run/a,b' }, /','/],
      [{ runDir: '/' + 'x'.repeat(100) }, /over the 107 of a unix socket/],
      [{ kernel: '/k', cmdline: 'a\nb' }, /control characters/],
      [{ kernel: '/k,file=/etc/shadow' }, /','/],
      [{ initrd: '/i' }, /need a kernel/],
      [{ disks: [{ path: '/d,format=raw', readOnly: false, format: 'qcow2' }] }, /','/],
      [{ tap: 'a-very-long-tap-name' }, /invalid tap/],
      [{ tap: '-t' }, /invalid tap/],
      [{ tap: 't0', mac: '01:00:5e:00:00:01' }, /unicast MAC/],
      [{ mac: '52:54:00:00:00:01' }, /mac needs a tap/],
      [{ cpus: 0 }, /cpus/],
      [{ memoryMiB: 1.5 }, /memoryMiB/],
      [{ hotplugSlots: 1 }, /needs machine q35/],
      [{ gpu: { device: 'virtio-gpu', vramMiB: 0 } }, /vramMiB/],
    ];
    for (const [patch, re] of bad) assert.throws(() => buildQemuArgs({ ...base, ...patch }), re, JSON.stringify(patch));
  });

  test('as a user: files and the tap handed over as fds, in the order inheritedFiles gives them', () => {
    const s: QemuSpec = { ...base, kernel: '/i/k', initrd: '/i/r', tap: 'qwt-web', user: { uid: 64055, gid: 64055 },
      disks: [{ path: '/i/a.qcow2', readOnly: false, format: 'qcow2' }, { path: '/i/b.qcow2', readOnly: true, backing: '/i/base.qcow2', format: 'qcow2' }] };
    assert.deepEqual(inheritedFiles(s), [
      { path: '/i/k', write: false }, { path: '/i/r', write: false },
      { path: '/i/a.qcow2', write: true }, { path: '/i/a.qcow2', write: false },
      { path: '/i/b.qcow2', write: false }, { path: '/i/base.qcow2', write: false },
    ]);
    const a = buildQemuArgs(s, { inherit: true });
    assert.deepEqual(after(a, '-kernel'), ['/proc/self/fd/3']);
    assert.deepEqual(after(a, '-initrd'), ['/proc/self/fd/4']);
    assert.deepEqual(after(a, '-add-fd'), ['fd=5,set=1', 'fd=6,set=1', 'fd=7,set=3', 'fd=8,set=4']);
    assert.deepEqual(after(a, '-drive'), ['file=/dev/fdset/1,if=none,id=d0,format=qcow2', 'file=/dev/fdset/3,if=none,id=d1,format=qcow2,readonly=on,backing.file.filename=/dev/fdset/4']);
    assert.deepEqual(after(a, '-netdev'), ['tap,id=n0,fd=@TAPFD@']);
    const argv = launchArgv(s, { netns: 'qw-web' });
    assert.deepEqual(argv.slice(0, 4), ['ip', 'netns', 'exec', 'qw-web']);
    assert.equal(argv[4], 'perl');
    const setpriv = argv.indexOf('setpriv');
    assert.deepEqual(argv.slice(setpriv, setpriv + 8), ['setpriv', '--reuid=64055', '--regid=64055', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs', 'qemu-system-x86_64']);
  });

  test('run paths and PCI addresses', () => {
    assert.deepEqual(runPaths('/r/vm'), { runDir: '/r/vm', qmp: '/r/vm/qmp.sock', qmpWatch: '/r/vm/qmp-watch.sock', pidfile: '/r/vm/qemu.pid', serial: '/r/vm/serial.log', log: '/r/vm/qemu.log' });
    const long = `/${'d'.repeat(100)}`;
    assert.equal(runPaths(long).runDir, long, 'a long run dir can still be inspected and stopped');
    assert.match(socketPathProblem(long) ?? '', /over the 107 of a unix socket/);
    assert.throws(() => buildQemuArgs({ ...base, runDir: long }), /over the 107 of a unix socket/);
    assert.equal(normalizePciAddress('01:00.0'), '0000:01:00.0');
    assert.equal(normalizePciAddress('0000:0A:1f.7'), '0000:0a:1f.7');
    assert.equal(normalizePciAddress('0000:01:00.8'), undefined);
    assert.equal(normalizePciAddress('../../x'), undefined);
  });
});

// ------------------------------------------------------------------------------------------ gpuSupport

describe('gpuSupport (fake probe)', () => {
  const probe = (patch: Partial<QemuProbe> = {}): QemuProbe => ({
    version: '7.2.22',
    devices: new Set(['virtio-gpu-pci', 'virtio-gpu-device', 'virtio-gpu-gl-pci', 'vfio-pci']),
    displays: new Set(['none', 'egl-headless']),
    gl: { usable: false, reason: "QEMU cannot load virtio-gpu-gl: missing object type 'virtio-gpu-gl-device'", venus: false },
    renderNodes: [],
    vfioContainer: false,
    kvmUsable: false,
    kvmReason: 'test',
    ...patch,
  });
  const host = (devs: Record<string, { iommuGroup?: string; driver?: string }>): GpuHost => ({
    pciDevice: (addr) => (devs[addr] ? { exists: true, ...devs[addr] } : { exists: false }),
  });

  test('none and virtio-gpu', () => {
    assert.deepEqual(gpuSupport({ device: 'none', vramMiB: 128 }, probe()), { ok: true, args: [] });
    assert.deepEqual(gpuSupport({ device: 'virtio-gpu', vramMiB: 256 }, probe()), { ok: true, args: ['-device', 'virtio-gpu-pci,id=gpu0,max_hostmem=256M'] });
    assert.deepEqual(gpuSupport({ device: 'virtio-gpu', vramMiB: 256 }, probe(), { machine: 'microvm' }), { ok: true, args: ['-device', 'virtio-gpu-device,id=gpu0,max_hostmem=256M'] });
    const r = gpuSupport({ device: 'virtio-gpu', vramMiB: 256 }, probe({ devices: new Set() }));
    assert.equal(r.ok, false);
    assert.match(!r.ok ? r.reason : '', /QEMU 7\.2\.22 has no virtio-gpu-pci device/);
  });

  test('virgl / venus: every missing piece is named', () => {
    const r = gpuSupport({ device: 'virgl', vramMiB: 512 }, probe());
    assert.equal(r.ok, false);
    const reason = !r.ok ? r.reason : '';
    assert.match(reason, /^virgl: /);
    assert.match(reason, /virtio-gpu-gl-device/);
    assert.match(reason, /no GPU render node/);
    const gl = { usable: true, venus: false };
    const ok = gpuSupport({ device: 'virgl', vramMiB: 512 }, probe({ gl, renderNodes: ['/dev/dri/renderD128'] }));
    assert.deepEqual(ok, { ok: true, args: ['-display', 'egl-headless,rendernode=/dev/dri/renderD128', '-device', 'virtio-gpu-gl-pci,id=gpu0,max_hostmem=512M'] });
    const venus = gpuSupport({ device: 'venus', vramMiB: 1024 }, probe({ gl, renderNodes: ['/dev/dri/renderD128'] }));
    assert.match(!venus.ok ? venus.reason : '', /QEMU 7\.2\.22 has no Venus/);
    const venus72 = gpuSupport({ device: 'venus', vramMiB: 1024 }, probe());
    assert.match(!venus72.ok ? venus72.reason : '', /cannot load virtio-gpu-gl.*has no Venus.*no GPU render node/);
    assert.equal(gpuSupport({ device: 'venus', vramMiB: 1024 }, probe({ gl: { usable: true, venus: true }, renderNodes: ['/dev/dri/renderD128'] })).ok, true);
    const noEgl = gpuSupport({ device: 'virgl', vramMiB: 512 }, probe({ gl, renderNodes: ['/dev/dri/renderD128'], displays: new Set(['none']) }));
    assert.match(!noEgl.ok ? noEgl.reason : '', /no egl-headless/);
  });

  test('vfio: device, IOMMU group, vfio-pci driver, container, machine', () => {
    const level = { device: 'vfio' as const, vramMiB: 2048, hostDevice: '01:00.0' };
    const p = probe({ vfioContainer: true });
    const reason = (r: ReturnType<typeof gpuSupport>) => (r.ok ? '' : r.reason);
    assert.match(reason(gpuSupport(level, p, { host: host({}) })), /no PCI device 0000:01:00\.0 on this host/);
    assert.match(reason(gpuSupport(level, p, { host: host({ '0000:01:00.0': { driver: 'nouveau' } }) })), /no IOMMU group.*bound to nouveau, not vfio-pci/);
    assert.match(reason(gpuSupport(level, probe(), { host: host({ '0000:01:00.0': { iommuGroup: '7', driver: 'vfio-pci' } }) })), /no \/dev\/vfio\/vfio/);
    assert.deepEqual(gpuSupport(level, p, { host: host({ '0000:01:00.0': { iommuGroup: '7', driver: 'vfio-pci' } }) }), { ok: true, args: ['-device', 'vfio-pci,id=gpu0,host=0000:01:00.0'] });
    assert.match(reason(gpuSupport(level, p, { machine: 'microvm' })), /needs machine q35/);
    assert.match(reason(gpuSupport({ ...level, hostDevice: 'x' }, p, { host: host({}) })), /not a PCI address/);
    assert.match(reason(gpuSupport({ device: 'vfio', vramMiB: 1 }, p, { host: host({}) })), /no hostDevice/);
  });

  test('isGpuDevice: PCI class first, then driver name; unknown vfio-pci counts', () => {
    const pci = (classCode: number) => ({ bus: 0, slot: 1, function: 0, classCode, vendorId: 1, deviceId: 2 });
    assert.equal(isGpuDevice({ type: 'virtio-gpu-pci' }), true);
    assert.equal(isGpuDevice({ type: 'virtio-gpu-device' }), true);
    assert.equal(isGpuDevice({ type: 'bochs-display' }), true);
    assert.equal(isGpuDevice({ type: 'secondary-vga' }), true);
    assert.equal(isGpuDevice({ type: 'VGA' }), true);
    assert.equal(isGpuDevice({ type: 'vfio-pci' }), true);
    assert.equal(isGpuDevice({ type: 'vfio-pci', pci: pci(0x0200) }), false);
    assert.equal(isGpuDevice({ type: 'vfio-pci', pci: pci(0x0300) }), true);
    assert.equal(isGpuDevice({ type: 'virtio-net-pci' }), false);
    assert.equal(isGpuDevice({ type: 'pcie-root-port', pci: pci(0x0604) }), false);
    assert.equal(isGpuDevice({ pci: pci(0x0380) }), true);
  });
});

// ------------------------------------------------------------------------------- QMP client (fake QEMU)

/** A scripted QMP server: `handle` gets each command and writes what it likes. */
async function fakeQmp(
  dir: string,
  handle: (cmd: { execute: string; id?: string; arguments?: unknown }, sock: net.Socket) => void,
  opts: { greet?: boolean } = {},
): Promise<{ path: string; close(): Promise<void> }> {
  const file = path.join(dir, `fake-${Math.random().toString(36).slice(2, 8)}.sock`);
  const socks = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    socks.add(sock);
    sock.on('error', () => {});
    if (opts.greet !== false) sock.write(JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' }, capabilities: ['oob'] } }) + '\r\n');
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const cmd = JSON.parse(line) as { execute: string; id?: string };
        if (cmd.execute === 'qmp_capabilities') sock.write(JSON.stringify({ return: {}, id: cmd.id }) + '\n');
        else handle(cmd, sock);
      }
    });
  });
  await new Promise<void>((r) => server.listen(file, r));
  return {
    path: file,
    close: () =>
      new Promise<void>((r) => {
        for (const s of socks) s.destroy();
        server.close(() => r());
      }),
  };
}

describe('QmpClient (fake QMP server)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'qwqmp-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('replies matched by id, events before a reply set aside, errors as QmpError', async () => {
    const srv = await fakeQmp(dir, (cmd, sock) => {
      const ev = (event: string) => JSON.stringify({ event, timestamp: { seconds: 1, microseconds: 2 } }) + '\n';
      if (cmd.execute === 'stop') sock.write(ev('STOP') + JSON.stringify({ return: {}, id: cmd.id }) + '\n');
      else if (cmd.execute === 'slow') setTimeout(() => sock.write(JSON.stringify({ return: 'slow', id: cmd.id }) + '\n'), 30);
      else if (cmd.execute === 'fast') sock.write(JSON.stringify({ return: 'fast', id: cmd.id }) + '\n');
      else sock.write(JSON.stringify({ error: { class: 'CommandNotFound', desc: `The command ${cmd.execute} has not been found` }, id: cmd.id }) + '\n');
    });
    const c = await QmpClient.connect(srv.path);
    try {
      assert.equal(c.greeting.version.qemu.major, 7);
      const seen: QmpEvent[] = [];
      c.onEvent((e) => seen.push(e));
      assert.deepEqual(await c.execute('stop'), {});
      assert.deepEqual(seen.map((e) => e.event), ['STOP']);
      // The event that came before the reply is still there for waitEvent.
      assert.equal((await c.waitEvent('STOP', 100)).event, 'STOP');
      // Out-of-order replies land with the right caller.
      const [slow, fast] = await Promise.all([c.execute('slow'), c.execute('fast')]);
      assert.deepEqual([slow, fast], ['slow', 'fast']);
      await assert.rejects(c.execute('nope'), (e: unknown) => e instanceof QmpError && e.errorClass === 'CommandNotFound' && /nope/.test(e.message));
      await assert.rejects(c.execute('bad name;'), /invalid QMP command/);
    } finally {
      c.close();
      await srv.close();
    }
  });

  test('timeout per command; EOF rejects pending commands and calls onClose; quit resolves on EOF', async () => {
    const srv = await fakeQmp(dir, (cmd, sock) => {
      if (cmd.execute === 'hang') return;
      if (cmd.execute === 'die' || cmd.execute === 'quit') sock.destroy();
    });
    const c = await QmpClient.connect(srv.path);
    await assert.rejects(c.execute('hang', undefined, { timeoutMs: 50 }), (e: unknown) => e instanceof QmpConnectionError && /no reply within 50 ms/.test(e.message));
    const closed = new Promise<void>((r) => c.onClose(() => r()));
    const pending = c.execute('hang', undefined, { timeoutMs: 5000 });
    const quitting = c.execute('quit');
    await assert.rejects(pending, /connection closed/);
    assert.deepEqual(await quitting, {});
    await closed;
    assert.equal(c.closed, true);
    await assert.rejects(c.execute('x'), /connection closed/);
    await srv.close();
  });

  test('connect: missing socket, a busy socket (no greeting), qmpOnce', async () => {
    await assert.rejects(QmpClient.connect(path.join(dir, 'absent.sock'), { timeoutMs: 100 }), /no such socket/);
    const mute = await fakeQmp(dir, () => {}, { greet: false });
    await assert.rejects(QmpClient.connect(mute.path, { timeoutMs: 150 }), /no greeting within .* busy/);
    await mute.close();
    const srv = await fakeQmp(dir, (cmd, sock) => sock.write(JSON.stringify({ return: { status: 'running', running: true }, id: cmd.id }) + '\n'));
    assert.deepEqual(await qmpOnce(srv.path, 'query-status'), { status: 'running', running: true });
    await srv.close();
  });
});

// ---------------------------------------------------------------------------------- real QEMU (TCG)

const isRoot = process.getuid?.() === 0;
const haveQemu = existsSync('/usr/bin/qemu-system-x86_64');
const GUEST_DIR = process.env.QWAMOS_GUEST_DIR ?? '/tmp/qwamos-guest-cache';

describe('QEMU driver with a real QEMU (TCG) in a test netns', { skip: !isRoot || !haveQemu ? 'needs root and qemu-system-x86_64' : false }, () => {
  let host: TestHost;
  let tmp: string;
  let probe: QemuProbe;
  /** Every QEMU pid this file started: killed in after() if still ours. */
  const started = new Map<number, string>();
  const others: number[] = [];

  const spec = (name: string, patch: Partial<QemuSpec> = {}): QemuSpec => ({
    name,
    machine: 'q35',
    accel: 'tcg',
    cpus: 1,
    memoryMiB: 64,
    disks: [],
    runDir: path.join(tmp, name),
    ...patch,
  });
  const start = async (s: QemuSpec) => {
    const r = await launch(s, { netns: host.hostNs });
    started.set(r.pid, s.runDir);
    return r;
  };

  before(async () => {
    host = await createTestHost();
    tmp = await mkdtemp('/tmp/qwq-');
    probe = await probeQemu();
  });

  after(async () => {
    for (const [pid, runDir] of started) {
      const info = await inspect(runDir).catch(() => undefined);
      if (info?.alive && info.ours && info.pid === pid) process.kill(pid, 'SIGKILL');
    }
    for (const pid of others) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await host?.cleanup();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  test('probe: version, devices, KVM verdict by CPU flags', async () => {
    assert.match(probe.version, /^\d+\.\d+/);
    assert.ok(probe.devices.has('virtio-net-pci') && probe.devices.has('virtio-blk-device'));
    const cpuinfo = await readFile('/proc/cpuinfo', 'utf8');
    if (!/^flags\s*:.*\b(vmx|svm)\b/m.test(cpuinfo)) {
      assert.equal(probe.kvmUsable, false);
      assert.match(probe.kvmReason, /vmx\/svm/);
    }
    assert.equal(await probeQemu(), probe, 'cached');
    const virgl = gpuSupport({ device: 'virgl', vramMiB: 512 }, probe);
    if (probe.renderNodes.length === 0) assert.equal(virgl.ok, false);
    const vfio = gpuSupport({ device: 'vfio', vramMiB: 2048, hostDevice: '0000:ff:1f.7' }, probe);
    assert.equal(vfio.ok, false);
  });

  test('launch in the netns: QMP ready, pid from the pidfile, sockets 0600, tap inside the netns', async () => {
    const s = spec('alpha', { tap: `${host.prefix}ta`, mac: '52:54:00:12:34:56', hotplugSlots: 1 });
    const r = await start(s);
    assert.equal(r.status.status, 'running');
    assert.ok(r.readyMs < 10_000, `ready in ${r.readyMs} ms`);
    const p = runPaths(s.runDir);
    assert.equal(Number((await readFile(p.pidfile, 'utf8')).trim()), r.pid);
    assert.equal((await stat(p.qmp)).mode & 0o777, 0o600);
    assert.equal((await stat(p.qmpWatch)).mode & 0o777, 0o600);
    assert.equal((await stat(s.runDir)).mode & 0o777, 0o700);
    assert.equal((await readFile(`/proc/${r.pid}/comm`, 'utf8')).trim(), 'qwamos-alpha');
    // QEMU lives in the test netns, not in the machine's own.
    const nsOfQemu = await readlink(`/proc/${r.pid}/ns/net`);
    const nsOfTest = (await tryIn(host.hostNs, ['readlink', '/proc/self/ns/net'])).stdout.trim();
    assert.equal(nsOfQemu, nsOfTest);
    assert.notEqual(nsOfQemu, await readlink('/proc/self/ns/net'));
    assert.equal((await tryIn(undefined, ['ip', '-n', host.hostNs, 'link', 'show', `${host.prefix}ta`])).exitCode, 0, 'QEMU created the tap inside the netns');
    assert.equal(await queryStatus(s.runDir), 'running');
    console.log(`# launch -> QMP ready (q35, TCG, in netns): ${r.readyMs} ms`);

    // A second launch of the same VM is refused; QEMU errors come back as one line.
    await assert.rejects(launch(s, { netns: host.hostNs }), /VM alpha is already running/);
    await assert.rejects(
      launch(spec('broken', { disks: [{ path: path.join(tmp, 'missing.qcow2'), readOnly: false, format: 'qcow2' }] }), { netns: host.hostNs }),
      (e: Error) => /^starting VM broken: -drive file=.*missing\.qcow2.*No such file or directory/.test(e.message) && !e.message.includes('\n'),
    );
    assert.equal(await inspect(path.join(tmp, 'broken'), 'broken'), undefined);
    await assert.rejects(launch(spec('lost'), { netns: `${host.prefix}-nosuchns` }), /^QemuError: starting VM lost: Cannot open network namespace/);
  });

  test('adoption: inspect says ours for our QEMU, not ours for a wrong name or an unrelated pid', async () => {
    const runDir = path.join(tmp, 'alpha');
    const info = await inspect(runDir, 'alpha');
    assert.equal(info?.alive, true);
    assert.equal(info?.ours, true, info?.why);
    const wrong = await inspect(runDir, 'beta');
    assert.equal(wrong?.ours, false);
    assert.match(wrong?.why ?? '', /not VM beta/);

    // A pidfile pointing at an unrelated live process.
    const fake = path.join(tmp, 'fake');
    const sleeper = spawn('sleep', ['60'], { stdio: 'ignore', detached: false });
    others.push(sleeper.pid!);
    await new Promise((r) => sleeper.once('spawn', r));
    await rm(fake, { recursive: true, force: true });
    await (await import('node:fs/promises')).mkdir(fake, { mode: 0o700 });
    await writeFile(path.join(fake, 'qemu.pid'), `${sleeper.pid}\n`);
    const notOurs = await inspect(fake, 'fake');
    assert.equal(notOurs?.alive, true);
    assert.equal(notOurs?.ours, false);
    assert.match(notOurs?.why ?? '', /not QEMU \(sleep\)/);
    // stop() must not touch it.
    const st = await stop(fake, { graceful: false, name: 'fake' });
    assert.equal(st.how, 'not-running');
    await sleep(50);
    assert.equal(sleeper.exitCode, null, 'the unrelated process is still alive');
    assert.equal(sleeper.signalCode, null);

    // A pidfile older than the process it names: a recycled pid.
    await writeFile(path.join(runDir, 'qemu.pid.bak'), await readFile(path.join(runDir, 'qemu.pid')));
    const old = new Date(Date.now() - 3600_000);
    await (await import('node:fs/promises')).utimes(path.join(runDir, 'qemu.pid'), old, old);
    const recycled = await inspect(runDir, 'alpha');
    assert.equal(recycled?.ours, false);
    assert.match(recycled?.why ?? '', /recycled/);
    const now = new Date();
    await (await import('node:fs/promises')).utimes(path.join(runDir, 'qemu.pid'), now, now);
    assert.equal((await inspect(runDir, 'alpha'))?.ours, true);
    await rm(path.join(runDir, 'qemu.pid.bak'));
  });

  test('stop/cont over QMP: queryStatus follows, watchVm sees STOP and RESUME', async () => {
    const runDir = path.join(tmp, 'alpha');
    const changes: VmChange[] = [];
    const w = watchVm(runDir, (c) => changes.push(c));
    assert.equal(await w.ready, true);
    try {
      await qmpCommand(runDir, 'stop');
      assert.equal(await queryStatus(runDir), 'paused');
      await qmpCommand(runDir, 'cont');
      assert.equal(await queryStatus(runDir), 'running');
      const deadline = Date.now() + 2000;
      while (changes.length < 2 && Date.now() < deadline) await sleep(10);
      assert.deepEqual(
        changes.map((c) => (c.kind === 'event' ? c.event.event : c.kind)),
        ['STOP', 'RESUME'],
      );
      // The command socket stays free while the watcher holds its own.
      assert.equal(await queryStatus(runDir, { timeoutMs: 1000 }), 'running');
    } finally {
      w.close();
    }
    assert.ok(changes.every((c) => c.kind === 'event'), 'no exit after close()');
  });

  test('devices: a hand-added display device shows up as a GPU; virtio-gpu cannot be hot-plugged', async () => {
    const runDir = path.join(tmp, 'alpha');
    const before = await listVmDevices(runDir);
    assert.deepEqual(
      before.map((d) => [d.id, d.type, d.gpu]),
      [
        ['hp0', 'pcie-root-port', false],
        ['net0', 'virtio-net-pci', false],
      ],
    );
    const builtin = await listVmDevices(runDir, { builtin: true });
    assert.ok(builtin.some((d) => d.builtin && d.pci?.classDesc === 'Host bridge'));
    assert.ok(builtin.some((d) => d.id === 'hp0' && d.pci?.classCode === 0x0604), 'query-pci merged by id');
    await withQmp(runDir, async (c) => {
      await assert.rejects(deviceAdd(c, 'virtio-gpu-pci', 'sneaky', { bus: 'hp0' }), /pluggable/);
      await deviceAdd(c, 'bochs-display', 'sneaky', { bus: 'hp0' });
    });
    const devs = await listVmDevices(runDir);
    const g = devs.find((d) => d.id === 'sneaky');
    assert.ok(g, JSON.stringify(devs));
    assert.equal(g.type, 'bochs-display');
    assert.equal(g.gpu, true);
    assert.equal((g.pci?.classCode ?? 0) >> 8, 0x03, 'PCI display class');
    // Unplugging a PCIe device needs the guest's ACK: without a guest OS it never completes.
    const removed = await removeVmDevice(runDir, 'sneaky', 300);
    assert.equal((await listVmDevices(runDir)).some((d) => d.id === 'sneaky'), !removed);
  });

  test('a VM launched with virtio-gpu (microvm) lists it as gpu0', { skip: false }, async (t) => {
    const level = { device: 'virtio-gpu' as const, vramMiB: 128 };
    const sup = gpuSupport(level, probe, { machine: 'microvm' });
    if (!sup.ok) return t.skip(sup.reason);
    const s = spec('gamma', { machine: 'microvm', gpu: level });
    const r = await start(s);
    console.log(`# launch -> QMP ready (microvm + virtio-gpu, TCG, in netns): ${r.readyMs} ms`);
    const devs = await listVmDevices(s.runDir);
    assert.deepEqual(
      devs.filter((d) => d.gpu).map((d) => [d.id, d.type]),
      [['gpu0', 'virtio-gpu-device']],
    );
    const st = await stopVm(s.runDir, 'gamma', { graceful: false });
    assert.equal(st.how, 'quit');
  });

  test('kill -9: watchVm sees EOF at once, inspect says not alive, stop cleans up', async () => {
    const s = spec('delta', { machine: 'microvm' });
    const { pid } = await start(s);
    let exitAt = 0;
    const changes: VmChange[] = [];
    const w = watchVm(s.runDir, (c) => {
      changes.push(c);
      if (c.kind === 'exit') exitAt = performance.now();
    });
    assert.equal(await w.ready, true);
    const t0 = performance.now();
    process.kill(pid, 'SIGKILL');
    while (!exitAt && performance.now() - t0 < 1000) await sleep(5);
    assert.ok(exitAt, 'EOF seen within a second');
    console.log(`# kill -9 -> watchVm exit: ${Math.round(exitAt - t0)} ms`);
    assert.deepEqual(changes.map((c) => c.kind), ['exit']);
    // /proc may still show the process for a moment (until it is reaped).
    let info = await inspect(s.runDir, 'delta');
    for (let i = 0; i < 100 && info?.alive; i++) {
      await sleep(10);
      info = await inspect(s.runDir, 'delta');
    }
    assert.equal(info?.alive, false, 'the stale pidfile names a dead process');
    await assert.rejects(queryStatus(s.runDir, { timeoutMs: 200 }), /QMP/);
    const st = await stop(s.runDir, { graceful: true, name: 'delta' });
    assert.equal(st.how, 'not-running');
    assert.equal(existsSync(runPaths(s.runDir).pidfile), false);
    assert.equal(existsSync(runPaths(s.runDir).qmp), false);
    // A watcher on a VM that is gone reports exit at once.
    const gone = await new Promise<VmChange>((resolve) => watchVm(s.runDir, resolve, { timeoutMs: 200 }));
    assert.equal(gone.kind, 'exit');
  });

  test('graceful stop of a q35 VM: POWERDOWN sent, ignored without a guest OS, then quit', async () => {
    const s = spec('epsilon', { startPaused: true });
    const r = await start(s);
    assert.equal(r.status.status, 'prelaunch');
    await qmpCommand(s.runDir, 'cont');
    const events: string[] = [];
    const w = watchVm(s.runDir, (c) => events.push(c.kind === 'event' ? c.event.event : c.kind));
    assert.equal(await w.ready, true);
    const st = await stop(s.runDir, { graceful: true, timeoutMs: 300, name: 'epsilon' });
    assert.equal(st.how, 'quit');
    assert.ok(st.ms >= 300 && st.ms < 5000, `${st.ms} ms`);
    // The process may vanish between any two reads of /proc: ask once, zombie counted as dead.
    assert.equal(processAlive(r.pid), false);
    assert.equal(await inspect(s.runDir, 'epsilon'), undefined, 'QEMU removed its pidfile');
    await sleep(50);
    assert.deepEqual(events, ['POWERDOWN', 'SHUTDOWN', 'exit']);
    w.close();
    // A paused guest cannot react to the power button: graceful goes straight to quit.
    const r2 = await start(s);
    assert.equal(r2.status.status, 'prelaunch');
    const st2 = await stop(s.runDir, { graceful: true, timeoutMs: 10_000, name: 'epsilon' });
    assert.equal(st2.how, 'quit');
    assert.ok(st2.ms < 2000, `${st2.ms} ms`);
    assert.equal(processAlive(r2.pid), false);
  });

  test('alpha stops cleanly (quit)', async () => {
    const st = await stopVm(path.join(tmp, 'alpha'), 'alpha', { graceful: false });
    assert.equal(st.how, 'quit');
    assert.equal((await tryIn(undefined, ['ip', '-n', host.hostNs, 'link', 'show', `${host.prefix}ta`])).exitCode !== 0, true, 'QEMU removed the tap it created');
  });

  test('boot the tiny guest (microvm) to its READY line, then stop', async (t) => {
    const kernel = path.join(GUEST_DIR, 'vmlinux');
    const initrd = path.join(GUEST_DIR, 'initrd.cpio');
    if (!existsSync(kernel) || !existsSync(initrd)) return t.skip(`no guest in ${GUEST_DIR} (scripts/build-guest.sh)`);
    const tsc = await tryIn(undefined, ['bash', path.join(process.cwd(), 'scripts/host-tsc-khz.sh')]);
    const s = spec('zeta', {
      machine: 'microvm',
      memoryMiB: 256,
      kernel,
      initrd,
      cmdline: 'console=ttyS0 quiet panic=-1 qwamos.name=zeta',
      ...(tsc.exitCode === 0 ? { tscKhz: Number(tsc.stdout.trim()) } : {}),
    });
    const t0 = performance.now();
    await start(s);
    const serial = runPaths(s.runDir).serial;
    let text = '';
    while (performance.now() - t0 < 30_000) {
      text = await readFile(serial, 'utf8').catch(() => '');
      if (/QWAMOS-GUEST-(READY|ERROR)/.test(text)) break;
      await sleep(100);
    }
    assert.match(text, /QWAMOS-GUEST-READY name=zeta ip=none/);
    console.log(`# guest boot to READY (microvm, TCG): ${Math.round(performance.now() - t0)} ms`);
    const st = await stop(s.runDir, { graceful: false, name: 'zeta' });
    assert.equal(st.how, 'quit');
  });

  test('createDisk + diskInfo: qcow2, 0600, no overwrite, backing images', async () => {
    const base = path.join(tmp, 'base.qcow2');
    const info = await createDisk(base, 64);
    assert.equal(info.format, 'qcow2');
    assert.equal(info.virtualSizeBytes, 64 * 1024 * 1024);
    assert.equal((await stat(base)).mode & 0o777, 0o600);
    await assert.rejects(createDisk(base, 32), /already exists: refusing to overwrite/);
    assert.equal((await diskInfo(base)).virtualSizeBytes, 64 * 1024 * 1024, 'untouched');

    const child = path.join(tmp, 'child.qcow2');
    const ci = await createDisk(child, undefined, base);
    assert.equal(ci.backingFile, base);
    assert.equal(ci.backingFormat, 'qcow2');
    assert.equal(ci.virtualSizeBytes, 64 * 1024 * 1024);

    const raw = path.join(tmp, 'raw.img');
    await writeFile(raw, Buffer.alloc(1024 * 1024));
    const big = await createDisk(path.join(tmp, 'big.qcow2'), 128, raw);
    assert.equal(big.backingFormat, 'raw');
    assert.equal(big.virtualSizeBytes, 128 * 1024 * 1024);

    await assert.rejects(createDisk(path.join(tmp, 'x.qcow2'), 8, path.join(tmp, 'nope.qcow2')), /nope\.qcow2/);
    assert.equal(existsSync(path.join(tmp, 'x.qcow2')), false, 'nothing left behind on failure');
    await assert.rejects(createDisk('relative.qcow2', 8), /absolute/);
    await assert.rejects(diskInfo(path.join(tmp, 'nope.qcow2')), /nope\.qcow2/);
  });
});

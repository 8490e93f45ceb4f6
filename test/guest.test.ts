// scripts/build-guest.sh: builds the tiny test guest (kernel + initramfs) once into a shared cache dir
// that the VM tests reuse, and is a fast no-op when nothing changed. No QEMU here: the VM controller's
// tests boot the guest. Also covers scripts/host-tsc-khz.sh (the microvm `tsc_early_khz=` value).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const repo = fileURLToPath(new URL('../', import.meta.url));
const buildGuest = path.join(repo, 'scripts/build-guest.sh');
const hostTsc = path.join(repo, 'scripts/host-tsc-khz.sh');
/** Shared with the VM tests (same default there): build once, reuse. */
const GUEST_DIR = process.env.QWAMOS_GUEST_DIR ?? '/tmp/qwamos-guest-cache';

const isRoot = process.getuid?.() === 0;

async function snapshot(file: string) {
  const s = await stat(file);
  return { ino: s.ino, size: s.size, mtimeMs: s.mtimeMs };
}

describe('scripts/build-guest.sh', { skip: isRoot ? false : 'needs root (apt-get, mknod)' }, () => {
  test('builds vmlinux and a newc initrd with /init, busybox and the virtio modules', { timeout: 600_000 }, async () => {
    const r = await execa('bash', [buildGuest, GUEST_DIR], { reject: false, timeout: 590_000 });
    assert.equal(r.exitCode, 0, `build-guest failed: ${r.stderr}`);

    // vmlinux normally; vmlinuz only if the kernel could not be unpacked (the script warns then).
    const kernel = existsSync(path.join(GUEST_DIR, 'vmlinux')) ? 'vmlinux' : 'vmlinuz';
    const kbytes = await readFile(path.join(GUEST_DIR, kernel));
    assert.ok(kbytes.length > 1_000_000, `${kernel} is too small: ${kbytes.length} bytes`);
    if (kernel === 'vmlinux') assert.deepEqual([...kbytes.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46], 'vmlinux is an ELF file');

    const initrd = path.join(GUEST_DIR, 'initrd.cpio');
    const list = await execa('busybox', ['cpio', '-t'], { inputFile: initrd });
    const names = new Set(String(list.stdout).split('\n').map((l) => l.replace(/^\.\//, '')));
    for (const want of ['init', 'bin/busybox', 'bin/sh', 'bin/ip', 'bin/httpd', 'dev/console', 'dev/null', 'etc/modules', 'lib/modules/virtio_net.ko']) {
      assert.ok(names.has(want), `initrd has no ${want}`);
    }

    // The newc archive is uncompressed: the /init script and the module order can be read directly.
    const cpio = await readFile(initrd);
    assert.equal(cpio.subarray(0, 6).toString('latin1'), '070701', 'newc magic');
    const text = cpio.toString('latin1');
    for (const key of ['qwamos.ip=', 'qwamos.gw=', 'qwamos.name=', 'QWAMOS-GUEST-READY name=', 'httpd -p 80 -h /www']) {
      assert.ok(text.includes(key), `/init does not mention ${key}`);
    }
    // Every listed module is in the archive, and virtio_net comes after what it needs.
    const stampText = await readFile(path.join(GUEST_DIR, '.stamp'), 'utf8');
    const mods = /^modules=(.*)$/m.exec(stampText)?.[1]?.split(' ').filter(Boolean) ?? [];
    assert.ok(mods.includes('virtio_net'), `module list: ${mods.join(' ')}`);
    for (const m of mods) assert.ok(names.has(`lib/modules/${m}.ko`), `initrd has no lib/modules/${m}.ko`);
    for (const dep of ['virtio_ring', 'virtio', 'failover', 'net_failover']) {
      if (mods.includes(dep)) assert.ok(mods.indexOf(dep) < mods.indexOf('virtio_net'), `${dep} must load before virtio_net`);
    }

    const scriptHash = createHash('sha256').update(await readFile(buildGuest)).digest('hex');
    assert.match(stampText.split('\n')[0] ?? '', new RegExp(`^package=linux-image-\\S+ version=\\S+ script=${scriptHash}$`));
    assert.match(stampText, new RegExp(`^kernel=${kernel}$`, 'm'));
  });

  test('a second run is a fast no-op that leaves the files alone', { timeout: 120_000 }, async () => {
    const files = ['vmlinux', 'vmlinuz', 'initrd.cpio', '.stamp']
      .map((f) => path.join(GUEST_DIR, f))
      .filter((f) => existsSync(f));
    const before = await Promise.all(files.map(snapshot));

    const t0 = performance.now();
    const r = await execa('bash', [buildGuest, GUEST_DIR], { reject: false, timeout: 60_000 });
    const ms = performance.now() - t0;
    assert.equal(r.exitCode, 0, `build-guest failed: ${r.stderr}`);
    assert.equal(String(r.stdout), '', 'cached run prints nothing');
    assert.ok(ms < 1000, `cached run took ${ms.toFixed(0)} ms`);

    const after = await Promise.all(files.map(snapshot));
    assert.deepEqual(after, before, 'cached run must not rewrite the images');
  });

  test('usage errors are one line on stderr', async () => {
    const r = await execa('bash', [buildGuest], { reject: false });
    assert.notEqual(r.exitCode, 0);
    assert.equal(String(r.stderr).trim().split('\n').length, 1);
    assert.match(String(r.stderr), /^build-guest: usage:/);
  });
});

describe('scripts/host-tsc-khz.sh', () => {
  test('prints the TSC frequency as an integer in kHz', async () => {
    const r = await execa('bash', [hostTsc], { reject: false });
    assert.equal(r.exitCode, 0, `host-tsc-khz failed: ${r.stderr}`);
    assert.match(String(r.stdout), /^[1-9][0-9]*$/);
    const khz = Number(r.stdout);
    assert.ok(khz > 100_000 && khz < 10_000_000, `${khz} kHz is not a plausible TSC frequency`);
  });

  test('QWAMOS_TSC_KHZ overrides, and must be an integer', async () => {
    const ok = await execa('bash', [hostTsc], { env: { QWAMOS_TSC_KHZ: '2300000' } });
    assert.equal(String(ok.stdout), '2300000');
    const bad = await execa('bash', [hostTsc], { env: { QWAMOS_TSC_KHZ: '2.3GHz' }, reject: false });
    assert.notEqual(bad.exitCode, 0);
    assert.match(String(bad.stderr), /^host-tsc-khz: /);
  });
});

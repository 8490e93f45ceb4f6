import { launch, createDisk, stop, inspect } from '/work/wt/vm/src/drivers/qemu.ts';
import { readFileSync } from 'node:fs';
await createDisk('/tmp/qz/img/d.qcow2', 64);
await createDisk('/tmp/qz/img/base.qcow2', 64);
await createDisk('/tmp/qz/img/over.qcow2', undefined, '/tmp/qz/img/base.qcow2');
const spec = { name: 'smk', machine: 'microvm' as const, accel: 'tcg' as const, cpus: 1, memoryMiB: 128, kernel: '/tmp/qz/img/vmlinux', initrd: '/tmp/qz/img/initrd.cpio', cmdline: 'console=ttyS0 panic=-1 qwamos.ip=10.9.0.2/24 qwamos.name=smk', tscKhz: 2000000,
  disks: [{ path: '/tmp/qz/img/d.qcow2', readOnly: false, format: 'qcow2' as const }, { path: '/tmp/qz/img/over.qcow2', backing: '/tmp/qz/img/base.qcow2', readOnly: false, format: 'qcow2' as const }],
  tap: 'qzt0', runDir: '/run/qwamos-smoke/abc', user: { uid: 64055, gid: 64055 } };
const t = Date.now();
const r = await launch(spec, { netns: 'qzt' });
console.log('launched', r, Date.now() - t);
console.log(readFileSync(`/proc/${r.pid}/status`, 'utf8').split('\n').filter((l) => /^(Uid|Gid|CapEff|CapBnd|NoNewPrivs|Seccomp):/.test(l)).join(' | '));
await new Promise((res) => setTimeout(res, 9000));
console.log(readFileSync('/run/qwamos-smoke/abc/serial.log', 'utf8').split('\n').filter((l) => /vd[ab]|READY|virtio_net|eth0/.test(l)).slice(0, 6).join('\n'));
try { await launch(spec, { netns: 'qzt' }); } catch (e) { console.log('second launch:', (e as Error).message); }
console.log(await inspect(spec.runDir, 'smk'));
console.log(await stop(spec.runDir, { name: 'smk', graceful: false }));

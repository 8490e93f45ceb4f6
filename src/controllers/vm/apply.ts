// Apply: carries out the planned actions, each VM's in order, different VMs at once.
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createTap, deleteTap, plugTap } from '../../drivers/netns.ts';
import { adoptPid, createDisk, launch, qmpCommand, removeVmDevice, scanQemuProcesses, stopVm, vmProcesses } from '../../drivers/qemu.ts';
import { ownedPathProblem } from '../../resources/paths.ts';
import type { ObjectKey } from '../../resources/keys.ts';
import type { LaunchRecord, VmContext } from './context.ts';
import { readJson } from './observe.ts';
import type { VmAction } from './plan.ts';
import type { VmWatchers } from './watch.ts';

export async function applyVmActions(ctx: VmContext, watchers: VmWatchers, actions: VmAction[]): Promise<void> {
  const byVm = new Map<ObjectKey, VmAction[]>();
  for (const a of actions) byVm.set(a.resource, [...(byVm.get(a.resource) ?? []), a]);
  const results = await Promise.allSettled([...byVm.values()].map((list) => applyOne(ctx, watchers, list)));
  const failed = results.find((x): x is PromiseRejectedResult => x.status === 'rejected');
  if (failed) throw failed.reason;
}

/** Checked again right before a disk is created or deleted: a symlink may have appeared since observe. */
function checkDiskPath(ctx: VmContext, file: string): void {
  const problem = ownedPathProblem(ctx.imageRoot, path.relative(ctx.imageRoot, file));
  if (problem) throw new Error(`refusing to touch disk ${file}: ${problem}`);
}

async function updateRecord(file: string, change: (rec: LaunchRecord) => LaunchRecord): Promise<void> {
  const rec = await readJson<LaunchRecord>(file);
  if (rec) await writeFile(file, JSON.stringify(change(rec)), { mode: 0o600 });
}

async function applyOne(ctx: VmContext, watchers: VmWatchers, actions: VmAction[]): Promise<void> {
  for (const a of actions) {
    switch (a.type) {
      case 'create-disk':
        checkDiskPath(ctx, a.path);
        await mkdir(path.dirname(a.path), { recursive: true, mode: 0o700 });
        checkDiskPath(ctx, a.path);
        await createDisk(a.path, a.sizeMiB, a.backing);
        break;
      case 'record-crash':
        await updateRecord(a.paths.launchRecord, (rec) => ({ ...rec, crashes: rec.crashes + 1, lastCrashAt: new Date().toISOString() }));
        await rm(path.join(a.paths.runDir, 'qemu.pid'), { force: true });
        break;
      case 'adopt':
        await adoptPid(a.paths.runDir, a.name, a.pid);
        watchers.follow(a.resource, a.paths.runDir);
        break;
      case 'start': {
        await mkdir(a.paths.stateDir, { recursive: true, mode: 0o700 });
        if (a.tapVm) {
          await createTap(ctx.layout, a.tapVm).catch(async (err: Error) => {
            // A tap left from the previous QEMU (persistent, so it survives a crash) is reused.
            if (!/exists|busy/i.test(err.message)) throw err;
            await plugTap(ctx.layout, a.tapVm!);
          });
        }
        for (const d of a.spec.disks) checkDiskPath(ctx, d.path);
        const prev = await readJson<LaunchRecord>(a.paths.launchRecord);
        await launch(a.spec, a.netns ? { netns: a.netns } : {});
        const rec: LaunchRecord = { specHash: a.hash, generation: a.generation, startedAt: new Date().toISOString(), crashes: prev?.crashes ?? 0, ...(prev?.lastCrashAt ? { lastCrashAt: prev.lastCrashAt } : {}) };
        await writeFile(a.paths.launchRecord, JSON.stringify(rec), { mode: 0o600 });
        watchers.follow(a.resource, a.paths.runDir);
        break;
      }
      case 'stop':
        await stopVm(a.paths.runDir, a.name, { graceful: a.graceful, timeoutMs: ctx.stopTimeoutMs });
        await updateRecord(a.paths.launchRecord, (rec) => ({ ...rec, stoppedByController: true }));
        break;
      case 'pause':
      case 'resume':
        await qmpCommand(a.paths.runDir, a.type === 'pause' ? 'stop' : 'cont');
        break;
      case 'plug-tap':
        await plugTap(ctx.layout, a.tapVm);
        break;
      case 'remove-device':
        await removeVmDevice(a.paths.runDir, a.id);
        break;
      case 'clean-up': {
        // Never remove the files (or disks) of a QEMU that still runs, whatever its pidfile says.
        const live = vmProcesses(await scanQemuProcesses(), a.paths.runDir, a.name)[0];
        if (live) throw new Error(`QEMU of ${a.name} (pid ${live.pid}) still runs: its files and disks are kept`);
        watchers.forget(a.resource);
        if (a.tapVm) await deleteTap(ctx.layout, a.tapVm).catch(() => {});
        for (const d of a.disks) checkDiskPath(ctx, d);
        await rm(a.paths.runDir, { recursive: true, force: true });
        await rm(a.paths.stateDir, { recursive: true, force: true });
        for (const d of a.disks) await rm(d, { force: true });
        break;
      }
    }
  }
}

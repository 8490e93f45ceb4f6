// Apply: carries out the planned actions, each VM's in order, different VMs at once.
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createTap, deleteTap, plugTap } from '../../drivers/netns.ts';
import { adoptPid, createDisk, launch, qmpCommand, removeVmDevice, scanQemuProcesses, stopVm, vmProcesses } from '../../drivers/qemu.ts';
import { ownedPathProblem } from '../../resources/paths.ts';
import { OutcomeError, waiting } from '../../engine/contract.ts';
import { appendLedger } from '../../cluster/ledger.ts';
import type { FailoverRecord } from '../../cluster/view.ts';
import type { ObjectKey } from '../../resources/keys.ts';
import type { LaunchRecord, VmContext, VmPaths } from './context.ts';
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

/**
 * Appends the ledger's `stop` for the copy the launch record says is open, once its process is known to be
 * gone (the caller has seen to that), and marks it closed.
 */
async function closeLedger(ctx: VmContext, paths: VmPaths, name: string): Promise<void> {
  const rec = await readJson<LaunchRecord>(paths.launchRecord);
  if (!ctx.ledger || !rec?.ledgerOpen) return;
  await appendLedger(ctx.ledger, name, 'stop', rec.pid ?? null);
  await writeFile(paths.launchRecord, JSON.stringify({ ...rec, ledgerOpen: false }), { mode: 0o600 });
}

/** Retry soon after a refused claim or a claim lost before the launch. */
const CLAIM_RETRY_MS = 1000;

async function applyOne(ctx: VmContext, watchers: VmWatchers, actions: VmAction[]): Promise<void> {
  /** The token of a claim taken earlier in this list (a start right after its claim). */
  let claimed: string | undefined;
  for (const a of actions) {
    switch (a.type) {
      case 'claim': {
        if (!ctx.cluster) throw new Error(`cannot claim run/${a.name}: this node is not in a cluster`);
        const res = await ctx.cluster.claim(a.name);
        if (!res.claimed) throw new OutcomeError(waiting('ClaimRefused', `not started: run/${a.name} was not claimed: ${res.reason}`, CLAIM_RETRY_MS));
        claimed = res.claim.token;
        break;
      }
      case 'release-claim':
        if (!ctx.cluster) break;
        // The record first (guarded by the token): whoever reads it knows the VM was stopped, not lost.
        {
          const state = await ctx.cluster.current();
          const last = state.runs.get(a.name);
          if (last?.token === a.token) await ctx.cluster.recordRun(a.name, a.token, { ...last, stoppedAt: new Date().toISOString() });
        }
        await ctx.cluster.release(a.name, a.token);
        break;
      case 'record-exit':
        await closeLedger(ctx, a.paths, a.name);
        break;
      case 'create-disk':
        checkDiskPath(ctx, a.path);
        await mkdir(path.dirname(a.path), { recursive: true, mode: 0o700 });
        checkDiskPath(ctx, a.path);
        await createDisk(a.path, a.sizeMiB, a.backing);
        break;
      case 'record-crash':
        await updateRecord(a.paths.launchRecord, (rec) => ({ ...rec, crashes: rec.crashes + 1, lastCrashAt: new Date().toISOString() }));
        await rm(path.join(a.paths.runDir, 'qemu.pid'), { force: true });
        await closeLedger(ctx, a.paths, path.basename(a.paths.stateDir));
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
        const token = a.cluster ? (a.cluster.token ?? claimed) : undefined;
        if (a.cluster) {
          // Fresh from etcd, not the cached view: a daemon resumed after SIGSTOP whose lease died meanwhile
          // must start nothing.
          if (!ctx.cluster || !token) throw new OutcomeError(waiting('NotClaimed', `not started: this node holds no claim on run/${a.spec.name}`, CLAIM_RETRY_MS));
          const why = await ctx.cluster.verifyHeld(a.spec.name, token);
          if (why) throw new OutcomeError(waiting('ClaimLost', `not started: ${why}`, CLAIM_RETRY_MS));
        }
        const cluster = a.cluster ? ctx.cluster : undefined;
        const lease = cluster?.liveLease();
        // Checked again at the last moment (a daemon frozen since the etcd check must not spawn on resume).
        const beforeSpawn = () => {
          if (cluster && cluster.liveLease() !== lease) throw new OutcomeError(waiting('ClaimLost', `not started: node ${cluster.node}'s lease deadline passed before the spawn`, CLAIM_RETRY_MS));
        };
        // The intent, before the spawn: the ledger may show a copy that never came up, never miss one that did.
        if (ctx.ledger) await appendLedger(ctx.ledger, a.spec.name, 'start', null);
        let pid: number;
        try {
          pid = (await launch(a.spec, { ...(a.netns ? { netns: a.netns } : {}), beforeSpawn })).pid;
        } catch (err) {
          if (ctx.ledger && !vmProcesses(await scanQemuProcesses(), a.paths.runDir, a.spec.name)[0]) await appendLedger(ctx.ledger, a.spec.name, 'stop', null);
          throw err;
        }
        const startedAt = new Date().toISOString();
        const from = a.cluster?.failedOverFrom;
        const failedOver: FailoverRecord | undefined = from
          ? { from: from.node, at: startedAt, ...(from.vanishedAt !== undefined ? { gapMs: Date.parse(startedAt) - from.vanishedAt } : {}) }
          : undefined;
        const rec: LaunchRecord = {
          specHash: a.hash,
          generation: a.generation,
          startedAt,
          crashes: prev?.crashes ?? 0,
          ...(prev?.lastCrashAt ? { lastCrashAt: prev.lastCrashAt } : {}),
          pid,
          ...(ctx.ledger ? { ledgerOpen: true } : {}),
          ...(token ? { token } : {}),
          ...(failedOver ? { failedOver } : {}),
        };
        await writeFile(a.paths.launchRecord, JSON.stringify(rec), { mode: 0o600 });
        watchers.follow(a.resource, a.paths.runDir);
        if (ctx.cluster && token) {
          // Where it runs now, for every node (and a later failover's `from`); refused once the claim is gone.
          await ctx.cluster.recordRun(a.spec.name, token, { node: ctx.cluster.node, token, startedAt, ...(failedOver ? { failedOver } : {}) });
        }
        break;
      }
      case 'stop':
        await stopVm(a.paths.runDir, a.name, { graceful: a.graceful, timeoutMs: ctx.stopTimeoutMs });
        await updateRecord(a.paths.launchRecord, (rec) => ({ ...rec, stoppedByController: true }));
        await closeLedger(ctx, a.paths, a.name);
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
        await closeLedger(ctx, a.paths, a.name);
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

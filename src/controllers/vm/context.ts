// Where a VM's files live. The state directory keeps what must survive (launch.json: what was started,
// crash count); QEMU's own run directory (pidfile, QMP sockets, serial log) sits under a short root so
// its socket paths fit the 107 bytes of a unix socket whatever the state directory's path is, and is
// owned by the unprivileged VM user (QEMU writes and removes its pidfile there).
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { NetLayout } from '../../drivers/netns.ts';
import type { LedgerTarget } from '../../cluster/ledger.ts';
import type { ClusterVmView, FailoverRecord } from '../../cluster/view.ts';

export interface VmContext {
  layout: NetLayout;
  stateDir: string;
  imageRoot: string;
  stopTimeoutMs: number;
  tscKhz?: number;
  /** Root of QEMU's run directories (default /run/qwamos). */
  runRoot?: string;
  /** The cluster this node joined (--etcd): VMs run only where placed and claimed. Absent: one host. */
  cluster?: ClusterVmView;
  /** Where each VM start and stop is appended (QWAMOS_LEDGER). */
  ledger?: LedgerTarget;
  /**
   * Observe for plans only (`qwamos diff`): the host's QEMU, TSC and VM user are probed only when a VM
   * of the batch runs or is to run, the only VMs whose plan renders a launch. Status reports need them
   * for every VM, so the daemon and apply leave this off.
   */
  planOnly?: boolean;
}

export const DEFAULT_RUN_ROOT = '/run/qwamos';

export interface VmPaths {
  /** $STATE/vms/NAME (root, 0700): launch.json. */
  stateDir: string;
  launchRecord: string;
  /** RUN_ROOT/HASH (the VM user, 0700): qemu.pid, qmp.sock, qmp-watch.sock, serial.log, qemu.log. */
  runDir: string;
  /** IMAGE_ROOT/disks/NAME, relative to the image root. */
  diskDir: string;
}

/** A VM's paths. The run directory is named by a hash of the state run directory: unique per state dir and VM. */
export function vmPaths(ctx: Pick<VmContext, 'stateDir' | 'runRoot'>, name: string): VmPaths {
  const stateDir = path.join(path.resolve(ctx.stateDir), 'vms', name);
  const hash = createHash('sha256').update(stateDir).digest('hex').slice(0, 16);
  return {
    stateDir,
    launchRecord: path.join(stateDir, 'launch.json'),
    runDir: path.join(ctx.runRoot ?? DEFAULT_RUN_ROOT, hash),
    diskDir: path.join('disks', name),
  };
}

/** What was launched, kept in the state directory: to tell a clean exit from a crash and see spec changes. */
export interface LaunchRecord {
  specHash: string;
  generation: number;
  startedAt: string;
  crashes: number;
  lastCrashAt?: string;
  /** Set when the controller stopped it, so RerunOnFailure does not mistake that for the guest's exit. */
  stoppedByController?: boolean;
  /** The QEMU process started (or adopted). */
  pid?: number;
  /** A ledger `start` was written and no `stop` yet. */
  ledgerOpen?: boolean;
  /** In a cluster: the fencing token it was started under, and the failover that started it here. */
  token?: string;
  failedOver?: FailoverRecord;
}

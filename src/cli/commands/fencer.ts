// qwamos fencer: runs beside `qwamos controller --node NAME --etcd URL` (which starts and supervises it)
// and kills this node's VMs when the node may no longer hold them (its lease deadline passed, its node key
// vanished). One per state dir: it records itself in <state>/cluster/fencer.pid, and a second one exits at
// once. Runs until SIGTERM, or until the lease file is gone and no VM process of the state dir remains
// (nothing left to guard).
import type { Command } from '../commander.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { Fencer, qemuVmProcesses } from '../../cluster/fencer.ts';
import { fencerPidPath } from '../../cluster/fencer-supervisor.ts';
import { readLeaseFile } from '../../cluster/membership.ts';
import { ensureDir } from '../../store/atomic.ts';
import { liveHolder, release, tryAcquire } from '../../store/lock.ts';
import path from 'node:path';
import { parseEndpoints } from '../../cluster/node.ts';
import { loadConfig, stateDir } from '../../config.ts';
import { EtcdClient } from '../../drivers/etcd.ts';
import { printable } from '../../errors.ts';
import type { CliCommand } from '../command.ts';
import { EXIT } from '../exit.ts';
import { survivePipeClose } from './controller.ts';

export const fencerCommand: CliCommand = {
  name: 'fencer',
  define: (cmd: Command) =>
    cmd
      .description("kill this node's VMs when its cluster lease deadline passes or its node key vanishes (run beside the controller)")
      .option('--etcd <urls>', "etcd client URLs (default: those of the controller's lease file)"),

  async run(flags: { etcd?: string }) {
    const dir = stateDir();
    const stdoutOpen = survivePipeClose(process.stdout);
    survivePipeClose(process.stderr);
    const log = (line: string) => {
      if (stdoutOpen()) process.stdout.write(`${new Date().toISOString()} ${printable(line)}\n`);
    };
    let stopping = false;
    const stopSignal = new Promise<void>((resolve) => {
      const stop = () => {
        stopping = true;
        resolve();
      };
      // `on`, not `once` (see the controller command: execa's signal-exit).
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
    });
    const pidFile = fencerPidPath(dir);
    await ensureDir(path.dirname(pidFile));
    const me = await tryAcquire(pidFile);
    if (!me) {
      log(`a fencer already runs for ${dir} (pid ${(await liveHolder(pidFile))?.pid ?? '?'}); exiting`);
      return EXIT.ok;
    }
    let endpoints = flags.etcd !== undefined ? parseEndpoints(flags.etcd) : undefined;
    while (!endpoints && !stopping) {
      // The controller has not joined yet: nothing can run under a claim before it has.
      endpoints = (await readLeaseFile(dir).catch(() => undefined))?.endpoints;
      if (!endpoints) await Promise.race([sleep(200), stopSignal]);
    }
    if (!endpoints) {
      await release(pidFile, me);
      return EXIT.ok;
    }
    const client = new EtcdClient(endpoints, { callTimeoutMs: 1000 });
    const ledger = loadConfig().ledger;
    const vms = () => qemuVmProcesses(dir);
    const fencer = new Fencer({ stateDir: dir, client, vms, log, ...(ledger ? { ledger } : {}) });
    fencer.start();
    log(`fencer started (pid ${process.pid}), guarding ${dir}`);
    // Nothing left to guard: the node left (its lease file is gone; the fencer has fenced what ran under
    // it) and no VM process of this state dir remains. A controller started later starts a new fencer.
    const idle = (async () => {
      while (!stopping) {
        await Promise.race([sleep(1000), stopSignal]);
        if (stopping) return;
        if ((await readLeaseFile(dir).catch(() => 'unreadable')) === undefined && (await vms().catch(() => [1])).length === 0) {
          log('the lease file is gone and no VM of this state dir runs: nothing left to guard');
          return;
        }
      }
    })();
    await Promise.race([stopSignal, idle]);
    await fencer.stop();
    client.close();
    await release(pidFile, me);
    log('fencer stopped');
    return EXIT.ok;
  },
};

// qwamos fencer: runs beside `qwamos controller --node NAME --etcd URL` and kills this node's VMs when the
// node may no longer hold them (its lease deadline passed, its node key vanished). Runs until SIGTERM.
import type { Command } from '../commander.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { Fencer, qemuVmProcesses } from '../../cluster/fencer.ts';
import { readLeaseFile } from '../../cluster/membership.ts';
import { parseEndpoints } from '../../cluster/node.ts';
import { stateDir } from '../../config.ts';
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
    let endpoints = flags.etcd !== undefined ? parseEndpoints(flags.etcd) : undefined;
    while (!endpoints && !stopping) {
      // The controller has not joined yet: nothing can run under a claim before it has.
      endpoints = (await readLeaseFile(dir).catch(() => undefined))?.endpoints;
      if (!endpoints) await Promise.race([sleep(200), stopSignal]);
    }
    if (!endpoints) return EXIT.ok;
    const client = new EtcdClient(endpoints, { callTimeoutMs: 1000 });
    const fencer = new Fencer({ stateDir: dir, client, vms: () => qemuVmProcesses(dir), log });
    fencer.start();
    log(`fencer started (pid ${process.pid}), guarding ${dir}`);
    await stopSignal;
    await fencer.stop();
    client.close();
    log('fencer stopped');
    return EXIT.ok;
  },
};

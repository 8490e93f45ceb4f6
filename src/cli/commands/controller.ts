// qwamos controller: the daemon. Runs until SIGTERM or SIGINT.
import type { Command } from '../commander.ts';
import { runDaemon } from '../../daemon.ts';
import { resyncDefault } from '../../config.ts';
import { UsageError, printable } from '../../errors.ts';
import { parseClusterFlags } from '../../cluster/node.ts';
import type { CliCommand } from '../command.ts';
import { parseDuration } from '../duration.ts';
import { EXIT } from '../exit.ts';

/**
 * Whoever read the daemon's output may go away (`qwamos controller | head -1`, a closed terminal). A write
 * to the closed pipe then fails with EPIPE, which Node raises as an 'error' event that would kill the
 * daemon: the host would no longer be reconciled because nobody reads a log. Such a stream is dropped
 * instead; returns whether the stream can still be written.
 */
export function survivePipeClose(stream: NodeJS.WriteStream): () => boolean {
  let open = true;
  // EPIPE, or any other write error (EIO on a hung-up terminal): no reason to stop reconciling.
  stream.on('error', () => {
    open = false;
  });
  return () => open && !stream.destroyed && stream.writable;
}

export const controllerCommand: CliCommand = {
  name: 'controller',
  define: (cmd: Command) =>
    cmd
      .description('run the controller daemon: reconcile continuously, follow the store and the host, report drift')
      .option('--resync <duration>', 'periodic full resync interval', resyncDefault())
      .option('--webhook-port <port>', 'serve git source webhooks on 127.0.0.1:PORT (POST /hooks/gitsource/NAME, X-Hub-Signature-256)')
      .option('--webhook-secret-file <file>', 'the webhooks\' shared HMAC secret (a 0600 file); needed with --webhook-port')
      .option('--node <name>', 'join the cluster as this node (with --etcd)')
      .option('--etcd <urls>', 'etcd client URLs, comma-separated: join that cluster (without it: one host, as before)')
      .option('--gpu-levels <names>', 'GPU trust levels this node can provide, comma-separated (with --etcd)'),

  async run(flags: { resync: string; webhookPort?: string; webhookSecretFile?: string; node?: string; etcd?: string; gpuLevels?: string }) {
    const resyncMs = parseDuration(flags.resync);
    if ((flags.webhookPort === undefined) !== (flags.webhookSecretFile === undefined)) {
      throw new UsageError('--webhook-port and --webhook-secret-file go together');
    }
    const port = flags.webhookPort === undefined ? undefined : Number(flags.webhookPort);
    if (port !== undefined && (!/^\d+$/.test(flags.webhookPort!) || port < 1 || port > 65535)) {
      throw new UsageError(`--webhook-port must be a TCP port 1-65535 (got ${JSON.stringify(flags.webhookPort)})`);
    }
    const cluster = parseClusterFlags(flags);
    const stdoutOpen = survivePipeClose(process.stdout);
    survivePipeClose(process.stderr);
    // `on`, not `once`: execa's signal-exit re-raises a signal it finds no other listener for, and a
    // `once` listener is already removed when signal-exit looks (the daemon then died of its own SIGTERM
    // whenever a host tool was running at that moment).
    const stopSignal = new Promise<void>((resolve) => {
      process.on('SIGTERM', () => resolve());
      process.on('SIGINT', () => resolve());
    });
    await runDaemon({
      resyncMs,
      ...(port !== undefined ? { webhook: { port, secretFile: flags.webhookSecretFile! } } : {}),
      stopSignal,
      // The fencer runs as this same program: `qwamos fencer` (bin/qwamos.js, its Node flags included).
      ...(cluster ? { cluster: { ...cluster, fencerCommand: [process.execPath, ...process.execArgv, process.argv[1]!, 'fencer'] } } : {}),
      // Log lines can quote state files and host output: escape them.
      log: (line) => {
        if (stdoutOpen()) process.stdout.write(`${new Date().toISOString()} ${printable(line)}\n`);
      },
    });
    // Everything is stopped and released; a client library's idle handles (gRPC channels) kept the process
    // alive ~2 s more, which a restart within the lease TTL cannot spare. Exit once the output is flushed.
    setTimeout(() => process.exit(), 100).unref();
    return EXIT.ok;
  },
};

// qwamos reconcile [KIND/NAME...]: observe the host now and heal what differs (all resources by default).
import { keyOf } from '../../resources/keys.ts';
import type { Command } from '../commander.ts';
import { printable } from '../../errors.ts';
import { DAEMON_LEASE, openStore } from '../../runtime.ts';
import type { CliCommand } from '../command.ts';
import { parseDuration } from '../duration.ts';
import { EXIT } from '../exit.ts';
import { reconcileNow } from '../reconcile-now.ts';
import { parseRefs } from '../refs.ts';

export const reconcileCommand: CliCommand = {
  name: 'reconcile [refs...]',
  define: (cmd: Command) =>
    cmd
      .description('reconcile now: observe the host and heal what differs (all resources, or the ones named)')
      .option('--wait', 'retry failures until converged or --timeout')
      .option('--timeout <duration>', 'how long to reconcile or wait', '120s'),

  async run(refs: string[], flags: { wait?: boolean; timeout: string }) {
    const timeoutMs = parseDuration(flags.timeout);
    const store = await openStore();
    const keys = refs.length ? parseRefs(refs) : (await store.listResources()).map((r) => keyOf(r));
    if ((await store.leaseHolder(DAEMON_LEASE)) !== null) await store.requestReconcile(refs.length ? keys : []);
    const report = await reconcileNow(store, keys, { wait: Boolean(flags.wait), timeoutMs });
    let failed = report.timedOut;
    for (const o of report.outcomes.values()) {
      if (o.phase === 'Failed' || o.phase === 'Stalled') failed = true;
      process.stdout.write(`${o.key} ${o.phase}${o.phase === 'Ready' ? '' : `: ${printable(o.message)}`}\n`);
    }
    return failed ? EXIT.failed : EXIT.ok;
  },
};

// qwamos notify [gitsource/NAME]: ask the running controller for a git source pass now, through its
// notification socket (what a post-receive hook calls). Without a name: every git source.
import net from 'node:net';
import type { Command } from '../commander.ts';
import { UsageError, UserError } from '../../errors.ts';
import { loadConfig } from '../../config.ts';
import { notifySocketPath } from '../../git/notify.ts';
import type { CliCommand } from '../command.ts';
import { EXIT } from '../exit.ts';

export const notifyCommand: CliCommand = {
  name: 'notify [source]',
  define: (cmd: Command) => cmd.description('ask the running controller to fetch a git source now (gitsource/NAME; all by default)'),

  async run(source: string | undefined) {
    let line = 'reconcile gitsources\n';
    if (source !== undefined) {
      const m = /^(?:gitsource|gitsources|gs|GitSource)\/([a-z0-9]([-a-z0-9]*[a-z0-9])?)$/.exec(source);
      if (!m) throw new UsageError(`expected gitsource/NAME, got ${JSON.stringify(source)}`);
      line = `reconcile gitsource/${m[1]}\n`;
    }
    const file = notifySocketPath(loadConfig().stateDir);
    const reply = await new Promise<string>((resolve, reject) => {
      const conn = net.createConnection(file);
      let data = '';
      conn.setEncoding('utf8');
      conn.setTimeout(5000, () => conn.destroy(new Error('no answer within 5 s')));
      conn.on('connect', () => conn.write(line));
      conn.on('data', (chunk: string) => (data += chunk));
      conn.on('end', () => resolve(data.trim()));
      conn.on('error', reject);
    }).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        throw new UserError(`no qwamos controller is listening on ${file}; run \`qwamos reconcile ${source ?? 'gitsources'}\` instead`);
      }
      throw new UserError(`${file}: ${err.message}`);
    });
    process.stdout.write(`${reply}\n`);
    return EXIT.ok;
  },
};

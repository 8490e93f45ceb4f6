// qwamos keygen NAME: make an ML-DSA key pair for signing manifests.
import { realpath } from 'node:fs/promises';
import path from 'node:path';
import { Option } from '../commander.ts';
import { stateDir, trustDir } from '../../config.ts';
import { UsageError, printable } from '../../errors.ts';
import { ALGS, DEFAULT_ALG, generateKey, type Alg } from '../../trust/keys.ts';
import type { CliCommand } from '../command.ts';

export const keygenCommand: CliCommand = {
  name: 'keygen <name>',
  define: (cmd) =>
    cmd
      .description('generate a manifest signing key pair: NAME.key (secret, 0600) and NAME.pub (public)')
      .addOption(new Option('--alg <alg>', 'signature algorithm').choices([...ALGS]).default(DEFAULT_ALG))
      .option('--out <dir>', 'directory for the key files (default: $QWAMOS_STATE_DIR/keys)')
      .option('--force', 'replace an existing key of that name'),

  async run(name: string, opts: { alg: Alg; out?: string; force?: boolean }) {
    const outDir = path.resolve(opts.out ?? path.join(stateDir(), 'keys'));
    // The trust store holds public keys only: a secret key there is readable by whatever reads trust.
    if ((await realOrResolved(outDir)) === (await realOrResolved(trustDir()))) {
      throw new UsageError(`refusing to write a secret key into the trust store ${printable(trustDir())}: use another --out and copy only ${name}.pub there`);
    }
    const { keyId, secretPath, publicPath } = await generateKey(name, opts.alg, outDir, { force: opts.force });
    // Paths and id only: the secret itself never goes to the terminal.
    process.stdout.write(
      `key id:     ${keyId} (${opts.alg})\n` +
        `secret key: ${printable(secretPath)}\n` +
        `public key: ${printable(publicPath)}\n` +
        `to trust it, copy the public key into ${printable(trustDir())}/\n`,
    );
    return 0;
  },
};

/** The real path of a directory, or the resolved path while it does not exist. */
async function realOrResolved(dir: string): Promise<string> {
  return realpath(dir).catch(() => path.resolve(dir));
}

// qwamos sign -k KEY FILE...: write a detached signature FILE.sig beside each file.
import { UserError, printable } from '../../errors.ts';
import { fsReason, readSecretKey, writeFileAtomic } from '../../trust/keys.ts';
import { readSignedFiles, signBytes } from '../../trust/signature.ts';
import type { CliCommand } from '../command.ts';

export const signCommand: CliCommand = {
  name: 'sign <files...>',
  define: (cmd) =>
    cmd
      .description('sign files with an ML-DSA secret key, writing FILE.sig beside each')
      .requiredOption('-k, --key <keyfile>', 'secret key file (from qwamos keygen)'),

  async run(files: string[], opts: { key: string }) {
    const key = await readSecretKey(opts.key);
    const contents = await readSignedFiles(files);
    for (const [i, file] of files.entries()) {
      // Temp file + rename: a reader never sees a half-written signature.
      try {
        await writeFileAtomic(`${file}.sig`, signBytes(contents[i]!, key), 0o644, true);
      } catch (err) {
        throw new UserError(`cannot write ${printable(file)}.sig: ${fsReason(err)}`);
      }
      process.stdout.write(`${printable(file)}: signed (key ${key.name} ${key.keyId}) -> ${printable(file)}.sig\n`);
    }
    return 0;
  },
};

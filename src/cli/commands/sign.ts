// qwamos sign -k KEY FILE...: write a detached signature FILE.sig beside each file.
// qwamos sign -k KEY --index DIR: write DIR/qwamos-index.yaml (every manifest with its SHA-256 and a serial
// that only grows) and sign it, after signing any FILEs given.
import { UsageError, UserError, printable } from '../../errors.ts';
import { writeIndex } from '../../trust/index-file.ts';
import { fsReason, readSecretKey, writeFileAtomic } from '../../trust/keys.ts';
import { readSignedFiles, signBytes } from '../../trust/signature.ts';
import type { CliCommand } from '../command.ts';

export const signCommand: CliCommand = {
  name: 'sign [files...]',
  define: (cmd) =>
    cmd
      .description('sign files with an ML-DSA secret key, writing FILE.sig beside each')
      .requiredOption('-k, --key <keyfile>', 'secret key file (from qwamos keygen)')
      .option('--index <dir>', 'also write and sign DIR/qwamos-index.yaml: every manifest under DIR with its SHA-256')
      .option('--serial <n>', 'serial of the new index (default: the previous index serial + 1)'),

  async run(files: string[], opts: { key: string; index?: string; serial?: string }) {
    if (files.length === 0 && opts.index === undefined) throw new UsageError('nothing to sign: give FILEs or --index DIR');
    if (opts.serial !== undefined && opts.index === undefined) throw new UsageError('--serial needs --index DIR');
    const serial = opts.serial === undefined ? undefined : Number(opts.serial);
    if (serial !== undefined && (!/^\d+$/.test(opts.serial!) || !Number.isSafeInteger(serial))) {
      throw new UsageError(`--serial must be a non-negative integer (got ${JSON.stringify(opts.serial)})`);
    }
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
    if (opts.index !== undefined) {
      const written = await writeIndex(opts.index, key, serial);
      process.stdout.write(`${printable(written.file)}: serial ${written.serial}, ${written.count} manifest${written.count === 1 ? '' : 's'}, signed (key ${key.name} ${key.keyId}) -> ${printable(written.file)}.sig\n`);
    }
    return 0;
  },
};

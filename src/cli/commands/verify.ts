// qwamos verify FILE...: check each file's detached signature against the trust store.
// Exit 0 only if every file is verified; 1 if any is not; 2 for bad usage or a missing file.
import path from 'node:path';
import { Option } from '../commander.ts';
import { trustDir } from '../../config.ts';
import { printable } from '../../errors.ts';
import { readSignedFiles, verifyFile, type VerifyOutcome } from '../../trust/signature.ts';
import { loadTrustStore } from '../../trust/truststore.ts';
import type { CliCommand } from '../command.ts';

export const verifyCommand: CliCommand = {
  name: 'verify <files...>',
  define: (cmd) =>
    cmd
      .description('verify the signatures (FILE.sig) of files against the trusted public keys')
      .option('--trust <dir>', 'trust store directory of *.pub files (default: $QWAMOS_STATE_DIR/trust)')
      .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text')),

  async run(files: string[], opts: { trust?: string; output: 'text' | 'json' }) {
    const contents = await readSignedFiles(files);
    const store = await loadTrustStore(path.resolve(opts.trust ?? trustDir()));
    for (const warning of store.warnings) process.stderr.write(`warning: ${warning}\n`);

    const results: Array<{ file: string } & VerifyOutcome> = [];
    for (const [i, file] of files.entries()) {
      results.push({ file, ...(await verifyFile(file, store, contents[i])) });
    }
    if (opts.output === 'json') {
      process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
    } else {
      for (const r of results) {
        const line = r.status === 'verified' ? `verified (key ${r.keyName} ${r.keyId})` : r.message;
        process.stdout.write(`${printable(r.file)}: ${line}\n`);
      }
    }
    return results.every((r) => r.status === 'verified') ? 0 : 1;
  },
};

// Repositories the git tests build with the git CLI (always async: a test's http server runs in this
// process, and a synchronous git call against it would hang).
import { execa } from 'execa';
import fs from 'node:fs/promises';
import path from 'node:path';

export class TestRepo {
  constructor(readonly dir: string) {}

  static async create(dir: string, branch = 'main'): Promise<TestRepo> {
    await fs.mkdir(dir, { recursive: true });
    const repo = new TestRepo(dir);
    await repo.git('init', '-q', '-b', branch);
    return repo;
  }

  async git(...args: string[]): Promise<string> {
    const { stdout } = await execa('git', ['-c', 'user.name=test', '-c', 'user.email=test@example.invalid', '-c', 'commit.gpgsign=false', ...args], {
      cwd: this.dir,
      env: { GIT_CONFIG_NOSYSTEM: '1', HOME: this.dir },
    });
    return stdout.trim();
  }

  async write(file: string, content: string | Uint8Array): Promise<void> {
    const full = path.join(this.dir, file);
    await fs.mkdir(path.dirname(full), { recursive: true });
    await fs.writeFile(full, content);
  }

  async remove(file: string): Promise<void> {
    await fs.rm(path.join(this.dir, file), { recursive: true, force: true });
  }

  /** Stages everything and commits; returns the new commit id. */
  async commit(message: string): Promise<string> {
    await this.git('add', '-A');
    await this.git('commit', '-q', '--allow-empty', '-m', message);
    return this.head();
  }

  head(): Promise<string> {
    return this.git('rev-parse', 'HEAD');
  }
}

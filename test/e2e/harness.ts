// End-to-end harness: a private test host (netns), a state dir, a trusted signing key, and the real
// qwamos bin run with the environment that points it at all of them.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, readdir, readFile, rm, writeFile, copyFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { createTestHost, type TestHost } from '../helpers/hostns.ts';
import { killQemusIn } from '../helpers/leftovers.ts';
import { processAlive } from '../../src/proc.ts';
import { liveFencer } from '../../src/cluster/fencer-supervisor.ts';

export const repo = fileURLToPath(new URL('../../', import.meta.url));
const bin = path.join(repo, 'bin/qwamos.js');

export interface Sandbox {
  host: TestHost;
  dir: string;
  stateDir: string;
  manifests: string;
  env: NodeJS.ProcessEnv;
  /** Runs `qwamos ARGS`; never throws. */
  qwamos(args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  /** Writes and signs a manifest in the manifests dir; returns its path. */
  manifest(name: string, text: string, opts?: { sign?: boolean }): Promise<string>;
  /** Writes many manifests and signs them with one `qwamos sign`. */
  manifests_(files: Record<string, string>): Promise<string[]>;
  /** Starts `qwamos controller ...args` and resolves once it logged that it started. */
  startDaemon(args?: string[]): Promise<ChildProcess>;
  cleanup(): Promise<void>;
}

export async function createSandbox(): Promise<Sandbox> {
  const host = await createTestHost();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-e2e-'));
  const stateDir = path.join(dir, 'state');
  const manifests = path.join(dir, 'manifests');
  await mkdir(manifests);
  const env = {
    ...process.env,
    QWAMOS_STATE_DIR: stateDir,
    QWAMOS_PREFIX: host.prefix,
    QWAMOS_HOST_NETNS: host.hostNs,
    QWAMOS_RESYNC: '30s',
    QWAMOS_IMAGE_ROOT: path.join(dir, 'images'),
    QWAMOS_STOP_TIMEOUT_MS: '1500',
  };
  const daemons: ChildProcess[] = [];
  const qwamos = async (args: string[]) => {
    const r = await execa('node', [bin, ...args], { env, reject: false, cwd: dir, timeout: 120_000 });
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
  };
  const key = await qwamos(['keygen', 'e2e', '--out', path.join(dir, 'keys')]);
  if (key.exitCode !== 0) throw new Error(`keygen failed: ${key.stderr}`);
  await mkdir(path.join(stateDir, 'trust'), { recursive: true });
  await copyFile(path.join(dir, 'keys/e2e.pub'), path.join(stateDir, 'trust/e2e.pub'));

  return {
    host,
    dir,
    stateDir,
    manifests,
    env,
    qwamos,
    async manifest(name, text, opts = {}) {
      const file = path.join(manifests, name);
      await writeFile(file, text);
      if (opts.sign !== false) {
        const r = await qwamos(['sign', '-k', path.join(dir, 'keys/e2e.key'), file]);
        if (r.exitCode !== 0) throw new Error(`sign failed: ${r.stderr}`);
      }
      return file;
    },
    async manifests_(files) {
      const paths = [];
      for (const [name, text] of Object.entries(files)) {
        const file = path.join(manifests, name);
        await writeFile(file, text);
        paths.push(file);
      }
      const r = await qwamos(['sign', '-k', path.join(dir, 'keys/e2e.key'), ...paths]);
      if (r.exitCode !== 0) throw new Error(`sign failed: ${r.stderr}`);
      return paths;
    },
    startDaemon(args: string[] = []) {
      const child = spawn('node', [bin, 'controller', ...args], { env, cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
      daemons.push(child);
      return new Promise((resolve, reject) => {
        let out = '';
        const timer = setTimeout(() => reject(new Error(`daemon did not start: ${out}`)), 20_000);
        child.stdout!.setEncoding('utf8');
        (child as ChildProcess & { output: () => string }).output = () => out;
        child.stdout!.on('data', (chunk: string) => {
          out += chunk;
          if (out.includes('controller started')) {
            clearTimeout(timer);
            resolve(child);
          }
        });
        child.stderr!.on('data', (c) => (out += String(c)));
        child.on('exit', () => {
          clearTimeout(timer);
          reject(new Error(`daemon exited: ${out}`));
        });
      });
    },
    async cleanup() {
      for (const d of daemons) if (d.exitCode === null && d.signalCode === null && d.pid) d.kill('SIGKILL');
      // The fencer a cluster daemon started outlives it by design: end it by its recorded pid.
      const fencer = await liveFencer(stateDir);
      if (fencer) process.kill(fencer.pid, 'SIGKILL');
      await killQemusIn(stateDir); // QEMUs a failed test left running
      await host.cleanup();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export function route(name: string, mode: string, address: string, extra = ''): string {
  const gateway = address.replace(/\.\d+\/\d+$/, '.1');
  const net = mode === 'isolated' ? '' : `  address: ${address}\n  gateway: ${gateway}\n`;
  return `apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata:\n  name: ${name}\nspec:\n  vm: ${name}\n  mode: ${mode}\n${net}${extra}`;
}

export { until } from '../helpers/poll.ts';

/** The tiny guest (kernel + initramfs), built once per machine and linked into the sandbox's image root. */
export const GUEST_CACHE = '/tmp/qwamos-guest-cache';

export async function installGuest(sb: Sandbox): Promise<void> {
  const r = await execa('bash', [path.join(repo, 'scripts/build-guest.sh'), GUEST_CACHE], { reject: false, timeout: 300_000 });
  if (r.exitCode !== 0) throw new Error(`build-guest.sh failed: ${r.stderr}`);
  const dest = path.join(sb.env.QWAMOS_IMAGE_ROOT!, 'guest');
  await mkdir(dest, { recursive: true });
  const { link } = await import('node:fs/promises');
  for (const f of ['vmlinux', 'initrd.cpio']) {
    await link(path.join(GUEST_CACHE, f), path.join(dest, f)).catch(() => copyFile(path.join(GUEST_CACHE, f), path.join(dest, f)));
  }
}

export function vm(name: string, extra: string): string {
  return `apiVersion: qwamos.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: ${name}\nspec:\n  memory: 192Mi\n  boot:\n    kernel: guest/vmlinux\n    initrd: guest/initrd.cpio\n    cmdline: console=ttyS0 quiet panic=-1\n${extra}`;
}

/**
 * Kills, by PID, the tor/i2pd gateways the controller started for this sandbox (their pid files under
 * the state dir): a test's cleanup, also when it failed before the controller stopped them.
 */
export async function killGateways(sb: Sandbox): Promise<void> {
  const root = path.join(sb.stateDir, 'gateways');
  for (const r of await readdir(root).catch(() => [] as string[])) {
    for (const f of ['tor.pid', 'i2pd.pid']) {
      const pid = Number((await readFile(path.join(root, r, f), 'utf8').catch(() => '')).trim());
      if (Number.isInteger(pid) && pid > 0 && processAlive(pid)) process.kill(pid, 'SIGKILL');
    }
  }
}

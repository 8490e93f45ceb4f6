// A qwamos cluster on one machine, for the cluster tests and the cluster demo:
//
//   etcd netns  <cp>_host: bridge <cp>br 10.99.0.1/24, etcd (1 or 3 members) listening there
//      | veth <cp>eK (bridge port) <-> eth0 10.99.0.1K/24
//   node netns  <cp>_nK: the node's daemon and fencer run here (nsenter --net), so a firewall drop in
//               this namespace cuts the node from etcd without touching anything else
//   host netns  <pK>_host: the node's sandbox host side (QWAMOS_HOST_NETNS, QWAMOS_PREFIX=pK), one per node
//
// Every node has its own state dir; all share one signing key, one image root (the tiny guest) and one
// ledger file (QWAMOS_LEDGER). The test process reaches etcd through the relay of test/helpers/etcd.ts.
// Everything is ended by PID (daemons, fencers, etcd, the QEMUs of the nodes' state dirs, found by
// command line) and every netns removed, on cleanup() and also when the process exits without it.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { appendFile, copyFile, link, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { vmPaths } from '../../src/controllers/vm/context.ts';
import { qemuVmProcesses, type VmProcess } from '../../src/cluster/fencer.ts';
import { fencerLogPath, liveFencer } from '../../src/cluster/fencer-supervisor.ts';
import { readLeaseFile, type LeaseFile } from '../../src/cluster/membership.ts';
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { qmpOnce } from '../../src/drivers/qmp.ts';
import { startEtcd, type EtcdCluster } from './etcd.ts';
import { createTestHost, type TestHost } from './hostns.ts';
import { CopyObserver } from './cluster-ledger.ts';
import { until } from './poll.ts';

export const repo = fileURLToPath(new URL('../../', import.meta.url));
const bin = path.join(repo, 'bin/qwamos.js');
export const GUEST_CACHE = '/tmp/qwamos-guest-cache';
const ETCD_ADDR = '10.99.0.1';
const CUT_TABLE = 'qwcut';

/** A process of a node (daemon, fencer), with its output. */
export interface Proc {
  /** Undefined for a process the harness did not spawn itself (the fencer the daemon started). */
  child?: ChildProcess;
  pid: number;
  output(): string;
  exited: Promise<number | null>;
  alive(): boolean;
  /** Resolves once the output matches (or rejects when it exits first / after timeoutMs). */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
}

export interface ClusterNodeHandle {
  name: string;
  /** The netns the daemon and fencer run in (their only way to etcd). */
  netns: string;
  address: string;
  host: TestHost;
  stateDir: string;
  env: NodeJS.ProcessEnv;
  gpuLevels: string[];
  daemon: Proc | undefined;
  fencer: Proc | undefined;
  /** Every daemon and fencer started for this node, in order. */
  started: Array<{ what: 'daemon' | 'fencer'; proc: Proc }>;
  startDaemon(extra?: string[]): Promise<Proc>;
  startFencer(): Promise<Proc>;
  /** SIGTERM and wait (a clean stop keeps the lease for a restart within the TTL). */
  stopDaemon(): Promise<void>;
  stopFencer(): Promise<void>;
  /** Drops all traffic to and from etcd inside the node's netns. */
  cut(): Promise<void>;
  heal(): Promise<void>;
  /** `qwamos ARGS` with this node's environment, inside its netns. Never throws. */
  qwamos(args: string[], opts?: { timeoutMs?: number }): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  /** This node's live QEMUs (by command line). */
  qemus(): Promise<VmProcess[]>;
  /** QMP's status of this node's copy of `vm` ('running', 'paused', ...), undefined when none answers. */
  qmpStatus(vm: string): Promise<string | undefined>;
  leaseFile(): Promise<LeaseFile | undefined>;
}

export interface ClusterOptions {
  nodes?: number;
  etcdMembers?: 1 | 3;
  /** GPU levels per node name (--gpu-levels). */
  gpuLevels?: Record<string, string[]>;
  /** Install the tiny guest into the shared image root. */
  guest?: boolean;
  /** Extra environment for every node (QWAMOS_*). */
  env?: Record<string, string>;
  /** Where the daemons' and fencers' output also goes, line by line (the demo prints some of it). */
  onLine?: (node: string, what: 'daemon' | 'fencer', line: string) => void;
}

export interface TestCluster {
  dir: string;
  etcd: EtcdCluster;
  /** An etcd client of the test process (through the relay). */
  client: EtcdClient;
  nodes: ClusterNodeHandle[];
  node(name: string): ClusterNodeHandle;
  ledger: string;
  observer: CopyObserver;
  /** Writes and signs manifests once, then applies them to every node's store. */
  applyAll(files: Record<string, string>, opts?: { wait?: boolean }): Promise<void>;
  /** Deletes resources from every node's store. */
  deleteAll(refs: string[]): Promise<void>;
  /** Appends a stop to the ledger for a copy the test itself killed (after it is confirmed gone). */
  recordKilled(node: string, vm: string, pid: number): Promise<void>;
  /** Kills the node whole: daemon, fencer and its QEMUs, by PID (the QEMUs recorded in the ledger). */
  killNode(name: string): Promise<Array<{ vm: string; pid: number }>>;
  cleanup(): Promise<void>;
}

// Processes and namespaces to end if the test process exits without cleanup().
const exitPids = new Set<number>();
const exitStateDirs = new Set<string>();
const exitPrefixes = new Set<string>();
process.on('exit', () => {
  for (const pid of exitPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  for (const dir of exitStateDirs) {
    killFencerSync(dir);
    killQemusSync(dir);
  }
  const doomed = (() => {
    try {
      return readdirSync('/run/netns').filter((n) => [...exitPrefixes].some((p) => n === p || n.startsWith(`${p}_`) || n.startsWith(`${p}-`)));
    } catch {
      return [];
    }
  })();
  if (doomed.length) {
    try {
      execFileSync('ip', ['-force', '-batch', '-'], { input: doomed.map((n) => `netns del ${n}`).join('\n') + '\n', stdio: ['pipe', 'ignore', 'ignore'] });
    } catch {
      // best effort
    }
  }
});

/** Sync: SIGKILL the fencer recorded in the state dir's cluster/fencer.pid (when /proc says it is one). */
function killFencerSync(stateDir: string): void {
  try {
    const { pid } = JSON.parse(readFileSync(path.join(stateDir, 'cluster', 'fencer.pid'), 'utf8')) as { pid: number };
    if (Number.isInteger(pid) && pid > 0 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes('fencer')) process.kill(pid, 'SIGKILL');
  } catch {
    // none, or gone
  }
}

/** Sync: SIGKILL the QEMUs of a state dir (by command line: QMP socket of the VM's run dir and its name). */
function killQemusSync(stateDir: string): void {
  let vms: string[] = [];
  try {
    vms = readdirSync(path.join(stateDir, 'vms'));
  } catch {
    return;
  }
  const runDirs = new Map(vms.map((vm) => [`${vmPaths({ stateDir }, vm).runDir}/`, vm]));
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (!/qemu-system/.test(path.basename(argv[0] ?? ''))) continue;
    const qmp = argv.filter((_, i) => argv[i - 1] === '-qmp').join(' ');
    if ([...runDirs.keys()].some((d) => qmp.includes(d))) {
      try {
        process.kill(Number(entry), 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
}

async function sh(argv: string[], input?: string): Promise<string> {
  const r = await execa(argv[0]!, argv.slice(1), { input: input ?? '', reject: false });
  if (r.exitCode !== 0) throw new Error(`${argv.join(' ')}: ${String(r.stderr).split('\n')[0] || `exit ${r.exitCode}`}`);
  return String(r.stdout);
}

function startProc(argv: string[], env: NodeJS.ProcessEnv, cwd: string, onLine?: (line: string) => void): Proc {
  const child = spawn(argv[0]!, argv.slice(1), { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  exitPids.add(child.pid!);
  let out = '';
  let partial = '';
  const waiters = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    const text = chunk.toString();
    out += text;
    if (out.length > 2_000_000) out = out.slice(-1_000_000);
    if (onLine) {
      partial += text;
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const l of lines) onLine(l);
    }
    for (const w of waiters) w();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      exitPids.delete(child.pid!);
      for (const w of waiters) w();
      resolve(code);
    }),
  );
  const proc: Proc = {
    child,
    pid: child.pid!,
    output: () => out,
    exited,
    alive: () => child.exitCode === null && child.signalCode === null,
    waitFor(re, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const m = re.exec(out);
          if (m) {
            done();
            resolve(m);
          } else if (!proc.alive()) {
            done();
            reject(new Error(`${argv.slice(0, 6).join(' ')} exited before ${re}: ${out.slice(-3000)}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`timed out waiting for ${re} from ${argv.slice(3, 6).join(' ')}: ${out.slice(-3000)}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
  };
  return proc;
}

async function stopProc(p: Proc | undefined, signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 15_000): Promise<void> {
  if (!p || !p.alive()) return;
  try {
    process.kill(p.pid, 'SIGCONT'); // a stopped process cannot handle SIGTERM
    process.kill(p.pid, signal);
  } catch {
    return;
  }
  const timer = setTimeout(() => {
    if (p.alive()) process.kill(p.pid, 'SIGKILL');
  }, timeoutMs);
  await p.exited;
  clearTimeout(timer);
}

/**
 * A process the harness did not spawn (the fencer the controller starts and supervises, detached, logging
 * to <state>/cluster/fencer.log): followed by PID and its log file.
 */
function attachProc(pid: number, logFile: string): Proc {
  exitPids.add(pid);
  const output = () => {
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  const exited = (async () => {
    while (pidLive(pid)) await new Promise((r) => setTimeout(r, 50));
    exitPids.delete(pid);
    return null;
  })();
  const proc: Proc = {
    pid,
    output,
    exited,
    alive: () => pidLive(pid),
    async waitFor(re, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const m = re.exec(output());
        if (m) return m;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${re} in ${logFile}: ${output().slice(-3000)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
  };
  return proc;
}

/** Alive and not a zombie. */
export function pidLive(pid: number): boolean {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export async function startCluster(opts: ClusterOptions = {}): Promise<TestCluster> {
  const count = opts.nodes ?? 3;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-cluster-'));
  const netHost = await createTestHost(); // its prefix, registry and cleanup; <cp>_host plays the etcd network
  exitPrefixes.add(netHost.prefix);
  const cp = netHost.prefix;
  const etcdNs = netHost.hostNs;
  const hosts: TestHost[] = [];
  let etcd: EtcdCluster | undefined;
  let client: EtcdClient | undefined;
  const nodes: ClusterNodeHandle[] = [];
  const observer = new CopyObserver(() => nodes.map((n) => ({ name: n.name, stateDir: n.stateDir })));
  const ledger = path.join(dir, 'ledger.jsonl');
  const keysDir = path.join(dir, 'keys');
  const manifests = path.join(dir, 'manifests');
  const imageRoot = path.join(dir, 'images');

  const cleanup = async () => {
    await observer.stop();
    // QWAMOS_TEST_LOGS=DIR keeps every daemon's and fencer's output there (for a failing run).
    if (process.env.QWAMOS_TEST_LOGS) {
      // One subdir per cluster: several test files may run with the same QWAMOS_TEST_LOGS.
      const logs = path.join(process.env.QWAMOS_TEST_LOGS, path.basename(dir));
      await mkdir(logs, { recursive: true });
      for (const n of nodes) {
        for (const what of ['daemon', 'fencer'] as const) {
          const procs = n.started.filter((s) => s.what === what);
          // The fencers of a node share one log file.
          const text = (what === 'fencer' ? procs.slice(-1) : procs).map((s) => `--- pid ${s.proc.pid}\n${s.proc.output()}`).join('');
          if (text) await writeFile(path.join(logs, `${n.name}-${what}.log`), text);
        }
      }
      await copyFile(ledger, path.join(logs, 'ledger.jsonl')).catch(() => {});
      for (const [m, text] of etcd?.logs() ?? []) await writeFile(path.join(logs, `etcd-${m}.log`), text);
    }
    // Daemons first: a live daemon would start its fencer again.
    for (const n of nodes) await stopProc(n.daemon, 'SIGKILL');
    for (const n of nodes) {
      await stopProc(n.fencer, 'SIGKILL');
      const f = await liveFencer(n.stateDir).catch(() => undefined);
      if (f) {
        try {
          process.kill(f.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    for (const n of nodes) {
      for (const q of await qemuVmProcesses(n.stateDir).catch(() => [])) {
        try {
          process.kill(q.pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      exitStateDirs.delete(n.stateDir);
      // QEMU's run dirs live under /run/qwamos, outside the temp dir.
      for (const vm of await readdir(path.join(n.stateDir, 'vms')).catch(() => [] as string[])) {
        await rm(vmPaths({ stateDir: n.stateDir }, vm).runDir, { recursive: true, force: true }).catch(() => {});
      }
    }
    client?.close();
    await etcd?.stop();
    for (const h of hosts) {
      await h.cleanup();
      exitPrefixes.delete(h.prefix);
    }
    await netHost.cleanup();
    exitPrefixes.delete(cp);
    await rm(dir, { recursive: true, force: true });
  };

  try {
    // The etcd network: a bridge in <cp>_host, one veth per node netns.
    const nodeNs = (i: number) => `${cp}_n${i}`;
    const addrOf = (i: number) => `10.99.0.${10 + i}`;
    await sh(['ip', '-batch', '-'], Array.from({ length: count }, (_, k) => `netns add ${nodeNs(k + 1)}`).join('\n') + '\n');
    await sh(
      ['ip', '-n', etcdNs, '-batch', '-'],
      [
        `link add ${cp}br type bridge`,
        `addr add ${ETCD_ADDR}/24 dev ${cp}br`,
        `link set ${cp}br up`,
        ...Array.from({ length: count }, (_, k) => [`link add ${cp}e${k + 1} type veth peer name eth0 netns ${nodeNs(k + 1)}`, `link set ${cp}e${k + 1} master ${cp}br up`]).flat(),
      ].join('\n') + '\n',
    );
    for (let i = 1; i <= count; i++) {
      await sh(['ip', '-n', nodeNs(i), '-batch', '-'], ['link set lo up', `addr add ${addrOf(i)}/24 dev eth0`, 'link set eth0 up'].join('\n') + '\n');
    }
    etcd = await startEtcd({ members: opts.etcdMembers ?? 1, netns: etcdNs, address: ETCD_ADDR });
    client = new EtcdClient(etcd.localEndpoints);

    // One key, one image root, one ledger.
    await mkdir(manifests, { recursive: true });
    await mkdir(imageRoot, { recursive: true });
    const baseEnv: NodeJS.ProcessEnv = {
      ...process.env,
      QWAMOS_RESYNC: '30s',
      QWAMOS_IMAGE_ROOT: imageRoot,
      QWAMOS_STOP_TIMEOUT_MS: '1500',
      QWAMOS_LEDGER: ledger,
      ...opts.env,
    };
    const key = await execa('node', [bin, 'keygen', 'e2e', '--out', keysDir], { env: baseEnv, reject: false });
    if (key.exitCode !== 0) throw new Error(`keygen failed: ${key.stderr}`);
    if (opts.guest) {
      const r = await execa('bash', [path.join(repo, 'scripts/build-guest.sh'), GUEST_CACHE], { reject: false, timeout: 300_000 });
      if (r.exitCode !== 0) throw new Error(`build-guest.sh failed: ${r.stderr}`);
      await mkdir(path.join(imageRoot, 'guest'), { recursive: true });
      for (const f of ['vmlinux', 'initrd.cpio']) {
        await link(path.join(GUEST_CACHE, f), path.join(imageRoot, 'guest', f)).catch(() => copyFile(path.join(GUEST_CACHE, f), path.join(imageRoot, 'guest', f)));
      }
    }

    for (let i = 1; i <= count; i++) {
      const name = `n${i}`;
      const host = await createTestHost();
      hosts.push(host);
      exitPrefixes.add(host.prefix);
      const stateDir = path.join(dir, name, 'state');
      exitStateDirs.add(stateDir);
      await mkdir(path.join(stateDir, 'trust'), { recursive: true });
      await copyFile(path.join(keysDir, 'e2e.pub'), path.join(stateDir, 'trust/e2e.pub'));
      const env: NodeJS.ProcessEnv = { ...baseEnv, QWAMOS_STATE_DIR: stateDir, QWAMOS_PREFIX: host.prefix, QWAMOS_HOST_NETNS: host.hostNs };
      const ns = nodeNs(i);
      const inNs = (argv: string[]) => ['nsenter', `--net=/run/netns/${ns}`, ...argv];
      const gpuLevels = opts.gpuLevels?.[name] ?? [];
      const cwd = path.join(dir, name);
      const handle: ClusterNodeHandle = {
        name,
        netns: ns,
        address: addrOf(i),
        host,
        stateDir,
        env,
        gpuLevels,
        daemon: undefined,
        fencer: undefined,
        started: [],
        async startDaemon(extra = []) {
          if (handle.daemon?.alive()) throw new Error(`the daemon of ${name} is running`);
          const args = ['controller', '--node', name, '--etcd', etcd!.endpoints.join(','), ...(gpuLevels.length ? ['--gpu-levels', gpuLevels.join(',')] : []), ...extra];
          const p = startProc(inNs([process.execPath, bin, ...args]), env, cwd, opts.onLine && ((l) => opts.onLine!(name, 'daemon', l)));
          handle.daemon = p;
          handle.started.push({ what: 'daemon', proc: p });
          await p.waitFor(/controller started/, 60_000);
          return p;
        },
        async startFencer() {
          // The controller starts its fencer (detached, recorded in cluster/fencer.pid, inheriting the
          // node's netns) and supervises it: follow that one by its PID.
          let pid: number | undefined;
          await until(`the fencer of ${name} (cluster/fencer.pid)`, async () => (pid = (await liveFencer(stateDir))?.pid) !== undefined, { timeoutMs: 60_000, intervalMs: 100 });
          if (handle.fencer?.pid === pid) return handle.fencer!;
          const p = attachProc(pid!, fencerLogPath(stateDir));
          handle.fencer = p;
          handle.started.push({ what: 'fencer', proc: p });
          await p.waitFor(/fencer started/, 60_000);
          return p;
        },
        stopDaemon: () => stopProc(handle.daemon),
        stopFencer: () => stopProc(handle.fencer),
        async cut() {
          await sh(inNs(['nft', '-f', '-']), `table inet ${CUT_TABLE} {\n  chain out { type filter hook output priority 0; policy accept; ip daddr 10.99.0.0/24 drop; }\n  chain in { type filter hook input priority 0; policy accept; ip saddr 10.99.0.0/24 drop; }\n}\n`);
        },
        async heal() {
          await sh(inNs(['nft', 'delete', 'table', 'inet', CUT_TABLE]));
        },
        async qwamos(args, o = {}) {
          const argv = inNs([process.execPath, bin, ...args]);
          const r = await execa(argv[0]!, argv.slice(1), { env, cwd, reject: false, timeout: o.timeoutMs ?? 120_000 });
          return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
        },
        qemus: () => qemuVmProcesses(stateDir),
        async qmpStatus(vm) {
          const sock = path.join(vmPaths({ stateDir }, vm).runDir, 'qmp.sock');
          return qmpOnce<{ status: string }>(sock, 'query-status', undefined, { timeoutMs: 1000 }).then((s) => s.status, () => undefined);
        },
        leaseFile: () => readLeaseFile(stateDir).catch(() => undefined),
      };
      nodes.push(handle);
    }
  } catch (err) {
    await cleanup().catch(() => {});
    throw err;
  }

  const signAndApply = async (files: Record<string, string>, wait: boolean) => {
    // `qwamos apply` with no daemon running reconciles in its own process, as one host: it would start the
    // VMs there without claims. (Found by these tests; the harness never does it.)
    const down = nodes.filter((n) => !n.daemon?.alive()).map((n) => n.name);
    if (down.length && Object.values(files).some((t) => /^kind: VirtualMachine$/m.test(t))) {
      throw new Error(`applyAll: the daemon of ${down.join(', ')} is not running; an apply there would start VMs outside the cluster`);
    }
    const paths: string[] = [];
    for (const [name, text] of Object.entries(files)) {
      const file = path.join(manifests, name);
      await writeFile(file, text);
      paths.push(file);
    }
    const s = await execa('node', [bin, 'sign', '-k', path.join(keysDir, 'e2e.key'), ...paths], { reject: false });
    if (s.exitCode !== 0) throw new Error(`sign failed: ${s.stderr}`);
    await Promise.all(
      nodes.map(async (n) => {
        const r = await n.qwamos(['apply', ...(wait ? ['--wait'] : []), ...paths.flatMap((p) => ['-f', p])]);
        if (r.exitCode !== 0) throw new Error(`apply on ${n.name} failed: ${r.stderr}`);
      }),
    );
  };
  const recordKilled = async (node: string, vm: string, pid: number) => {
    await appendFile(ledger, `${JSON.stringify({ vm, node, event: 'stop', pid, at: new Date().toISOString(), by: 'test' })}\n`);
  };

  return {
    dir,
    etcd: etcd!,
    client: client!,
    nodes,
    node(name) {
      const n = nodes.find((x) => x.name === name);
      if (!n) throw new Error(`no node ${name}`);
      return n;
    },
    ledger,
    observer,
    applyAll: (files, o = {}) => signAndApply(files, o.wait ?? false),
    async deleteAll(refs) {
      await Promise.all(
        nodes.map(async (n) => {
          const r = await n.qwamos(['delete', ...refs]);
          if (r.exitCode !== 0) throw new Error(`delete on ${n.name} failed: ${r.stderr}`);
        }),
      );
    },
    recordKilled,
    async killNode(name) {
      const n = nodes.find((x) => x.name === name)!;
      const qemus = await n.qemus();
      // The daemon first (it would restart its fencer), then the fencer, then the VMs.
      const victims = [n.daemon?.pid, (await liveFencer(n.stateDir))?.pid ?? n.fencer?.pid, ...qemus.map((q) => q.pid)].filter((p): p is number => p !== undefined);
      for (const pid of victims) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      await until(`node ${name}'s processes gone`, () => victims.every((p) => !pidLive(p)), { timeoutMs: 10_000, intervalMs: 10 });
      for (const q of qemus) await recordKilled(name, q.vm, q.pid);
      return qemus.map((q) => ({ vm: q.vm, pid: q.pid }));
    },
    cleanup,
  };
}

/** Whether the tiny guest of `vm` in this state dir has booted (its serial console says so). */
export async function guestBooted(stateDir: string, vm: string): Promise<boolean> {
  const serial = await readFile(path.join(vmPaths({ stateDir }, vm).runDir, 'serial.log'), 'utf8').catch(() => '');
  return serial.includes('QWAMOS-GUEST-READY');
}

/** A VirtualMachine manifest for the tiny guest (no NIC). */
export function vmManifest(name: string, extra = ''): string {
  return `apiVersion: qwamos.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: ${name}\nspec:\n  memory: 128Mi\n  boot:\n    kernel: guest/vmlinux\n    initrd: guest/initrd.cpio\n    cmdline: console=ttyS0 quiet panic=-1\n${extra}`;
}

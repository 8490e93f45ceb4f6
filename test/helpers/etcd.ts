// A real etcd for tests (Debian's /usr/bin/etcd): one member or three, on free 127.0.0.1 ports, with its
// data in a temp dir. Every member is ended by its PID on stop(), and also when the test process exits
// (a failing test that never reaches stop() leaves nothing running).
//
// With `netns` the members run inside that network namespace (entered with nsenter, so the PID is etcd's)
// on `address`, the address other namespaces reach them at (the cluster tests: nodes reach etcd over a veth
// and can be cut from it by a firewall drop in their own namespace). The test process, in the machine's own
// namespace, reaches them through a relay: a small process inside the namespace listens on unix sockets and
// connects to the members; the test process listens on 127.0.0.1 and pipes to those sockets. Nothing is
// added to the machine's own network.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { until } from './poll.ts';

export interface EtcdMember {
  name: string;
  /** What the nodes use (inside the netns when there is one). */
  clientUrl: string;
  /** What the test process uses: clientUrl, or the relay's 127.0.0.1 URL when etcd runs in a netns. */
  localUrl: string;
  peerUrl: string;
  dataDir: string;
  /** PID of the running etcd, undefined once killed. */
  pid: number | undefined;
}

export interface EtcdCluster {
  /** Client URLs of every member, in member order (as the nodes reach them). */
  endpoints: string[];
  /** The same, reachable from the test process (equal to endpoints without a netns). */
  localEndpoints: string[];
  members: EtcdMember[];
  dir: string;
  /** SIGKILLs one member (by PID) and waits for it to exit. */
  kill(member: EtcdMember): Promise<void>;
  /** Starts a killed member again on its data dir (it rejoins the cluster) and waits until it is healthy. */
  restart(member: EtcdMember): Promise<void>;
  /** The member that is leader now (each live member is asked through the v3 JSON gateway). */
  leader(): Promise<EtcdMember>;
  /** Kills every member still running and removes the temp dir. */
  stop(): Promise<void>;
  /** The tail of each member's log (stderr). */
  logs(): Map<string, string>;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) {
    try {
      if (child.pid) process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** A free TCP port on 127.0.0.1 (the kernel picks it; released at once for etcd to bind). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface EtcdOptions {
  members?: 1 | 3;
  /** Run the members inside this netns (it must exist), listening on `address`. */
  netns?: string;
  /** The members' address inside `netns` (required with it). */
  address?: string;
}

// The relay's half inside the netns: argv is pairs of (unix socket path, host:port).
const RELAY_SCRIPT = `
const net = require('node:net');
const fs = require('node:fs');
const args = process.argv.slice(1);
for (let i = 0; i < args.length; i += 2) {
  const sock = args[i], [host, port] = args[i + 1].split(':');
  try { fs.unlinkSync(sock); } catch {}
  net.createServer((c) => {
    const u = net.connect(Number(port), host);
    c.pipe(u).pipe(c);
    c.on('error', () => u.destroy());
    u.on('error', () => c.destroy());
  }).listen(sock);
}
process.stdout.write('relay ready\\n');
`;

export async function startEtcd(opts: EtcdOptions = {}): Promise<EtcdCluster> {
  const count = opts.members ?? 1;
  if (opts.netns !== undefined && !opts.address) throw new Error('startEtcd: netns needs an address');
  const host = opts.netns ? opts.address! : '127.0.0.1';
  // Data in memory when the machine has /dev/shm: on a loaded machine etcd's WAL fsyncs to disk stalled
  // raft long enough for lease keepalives to miss their deadline (cluster tests, 2 cores shared).
  const dir = await mkdtemp(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'qwamos-etcd-'));
  const members: EtcdMember[] = [];
  // Inside a fresh netns every port is free; on loopback the kernel picks free ones.
  let nextPort = 2379;
  const port = async () => (opts.netns ? nextPort++ : freePort());
  for (let i = 1; i <= count; i++) {
    const name = `m${i}`;
    const clientUrl = `http://${host}:${await port()}`;
    members.push({
      name,
      clientUrl,
      localUrl: clientUrl,
      peerUrl: `http://${host}:${await port()}`,
      dataDir: path.join(dir, name),
      pid: undefined,
    });
  }
  const relayServers: net.Server[] = [];
  let relay: ChildProcess | undefined;
  const initialCluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(',');
  const children = new Map<EtcdMember, ChildProcess>();
  const logs = new Map<EtcdMember, string>();

  const kill = async (member: EtcdMember) => {
    const child = children.get(member);
    if (!child || member.pid === undefined) return;
    const exited = new Promise<void>((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
    try {
      process.kill(member.pid, 'SIGKILL');
    } catch {
      // already gone
    }
    await exited;
    member.pid = undefined;
    running.delete(child);
  };
  const stop = async () => {
    for (const m of members) await kill(m);
    for (const s of relayServers) s.close();
    if (relay?.pid && relay.exitCode === null && relay.signalCode === null) {
      const gone = new Promise((r) => relay!.once('exit', r));
      relay.kill('SIGKILL');
      await gone;
    }
    await rm(dir, { recursive: true, force: true });
  };

  const spawnMember = (m: EtcdMember, state: 'new' | 'existing') => {
    const etcdArgv = [
      '/usr/bin/etcd',
      '--name', m.name,
      '--data-dir', m.dataDir,
      '--listen-client-urls', m.clientUrl,
      '--advertise-client-urls', m.clientUrl,
      '--listen-peer-urls', m.peerUrl,
      '--initial-advertise-peer-urls', m.peerUrl,
      '--initial-cluster', initialCluster,
      '--initial-cluster-state', state,
      '--initial-cluster-token', path.basename(dir),
      // Quick leader elections on loopback (defaults: 100 ms heartbeat, 1000 ms election).
      '--heartbeat-interval', '100',
      '--election-timeout', '1000',
    ];
    const argv = opts.netns ? ['nsenter', `--net=/run/netns/${opts.netns}`, ...etcdArgv] : etcdArgv;
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    running.add(child);
    children.set(m, child);
    m.pid = child.pid;
    logs.set(m, (logs.get(m) ?? '') + (logs.has(m) ? '\n--- restarted\n' : ''));
    child.stderr?.on('data', (chunk: Buffer) => {
      // Keep the tail for the error message when it does not come up.
      logs.set(m, ((logs.get(m) ?? '') + chunk.toString()).slice(-4000));
    });
    child.once('exit', () => running.delete(child));
  };
  const waitHealthy = (m: EtcdMember) =>
    until(`etcd member ${m.name} healthy at ${m.clientUrl}`, async () => {
      if (children.get(m)?.exitCode !== null) throw new Error(`etcd ${m.name} exited: ${logs.get(m)}`);
      return healthy(m.localUrl);
    }, { timeoutMs: 20_000, intervalMs: 100 });

  try {
    for (const m of members) spawnMember(m, 'new');
    if (opts.netns) {
      const pairs = members.flatMap((m) => [path.join(dir, `${m.name}.relay.sock`), new URL(m.clientUrl).host]);
      relay = spawn('nsenter', [`--net=/run/netns/${opts.netns}`, process.execPath, '-e', RELAY_SCRIPT, ...pairs], { stdio: ['ignore', 'pipe', 'ignore'] });
      running.add(relay);
      relay.once('exit', () => running.delete(relay!));
      await new Promise<void>((resolve, reject) => {
        relay!.stdout!.once('data', () => resolve());
        relay!.once('exit', (code) => reject(new Error(`the etcd relay in ${opts.netns} exited (${code})`)));
      });
      for (const m of members) {
        const sock = path.join(dir, `${m.name}.relay.sock`);
        const server = net.createServer((c) => {
          const u = net.connect(sock);
          c.pipe(u).pipe(c);
          c.on('error', () => u.destroy());
          u.on('error', () => c.destroy());
        });
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        server.unref();
        relayServers.push(server);
        m.localUrl = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
      }
    }
    for (const m of members) await waitHealthy(m);
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    endpoints: members.map((m) => m.clientUrl),
    localEndpoints: members.map((m) => m.localUrl),
    members,
    dir,
    kill,
    async restart(member) {
      if (member.pid !== undefined) throw new Error(`etcd member ${member.name} is running`);
      spawnMember(member, 'existing');
      await waitHealthy(member);
    },
    async leader() {
      for (const m of members) {
        if (m.pid === undefined) continue;
        const status = await postJson(`${m.localUrl}/v3/maintenance/status`);
        if (status && status.leader !== undefined && status.header?.member_id === status.leader) return m;
      }
      throw new Error('no etcd member reports itself leader');
    },
    stop,
    logs: () => new Map([...logs].map(([m, text]) => [m.name, text])),
  };
}

async function healthy(clientUrl: string): Promise<boolean> {
  try {
    const res = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
    const body = (await res.json()) as { health?: string };
    return body.health === 'true';
  } catch {
    return false;
  }
}

async function postJson(url: string): Promise<{ leader?: string; header?: { member_id?: string } } | undefined> {
  try {
    const res = await fetch(url, { method: 'POST', body: '{}', signal: AbortSignal.timeout(1000) });
    return (await res.json()) as { leader?: string; header?: { member_id?: string } };
  } catch {
    return undefined;
  }
}

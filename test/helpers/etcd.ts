// A real etcd for tests (Debian's /usr/bin/etcd): one member or three, on free 127.0.0.1 ports, with its
// data in a temp dir. Every member is ended by its PID on stop(), and also when the test process exits
// (a failing test that never reaches stop() leaves nothing running).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { until } from './poll.ts';

export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  /** PID of the running etcd, undefined once killed. */
  pid: number | undefined;
}

export interface EtcdCluster {
  /** Client URLs of every member, in member order. */
  endpoints: string[];
  members: EtcdMember[];
  dir: string;
  /** SIGKILLs one member (by PID) and waits for it to exit. */
  kill(member: EtcdMember): Promise<void>;
  /** The member that is leader now (each live member is asked through the v3 JSON gateway). */
  leader(): Promise<EtcdMember>;
  /** Kills every member still running and removes the temp dir. */
  stop(): Promise<void>;
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

export async function startEtcd(opts: { members?: 1 | 3 } = {}): Promise<EtcdCluster> {
  const count = opts.members ?? 1;
  const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-etcd-'));
  const members: EtcdMember[] = [];
  for (let i = 1; i <= count; i++) {
    const name = `m${i}`;
    members.push({
      name,
      clientUrl: `http://127.0.0.1:${await freePort()}`,
      peerUrl: `http://127.0.0.1:${await freePort()}`,
      dataDir: path.join(dir, name),
      pid: undefined,
    });
  }
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
    await rm(dir, { recursive: true, force: true });
  };

  try {
    for (const m of members) {
      const child = spawn(
        '/usr/bin/etcd',
        [
          '--name', m.name,
          '--data-dir', m.dataDir,
          '--listen-client-urls', m.clientUrl,
          '--advertise-client-urls', m.clientUrl,
          '--listen-peer-urls', m.peerUrl,
          '--initial-advertise-peer-urls', m.peerUrl,
          '--initial-cluster', initialCluster,
          '--initial-cluster-state', 'new',
          '--initial-cluster-token', path.basename(dir),
          // Quick leader elections on loopback (defaults: 100 ms heartbeat, 1000 ms election).
          '--heartbeat-interval', '100',
          '--election-timeout', '1000',
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      running.add(child);
      children.set(m, child);
      m.pid = child.pid;
      logs.set(m, '');
      child.stderr?.on('data', (chunk: Buffer) => {
        // Keep the tail for the error message when it does not come up.
        logs.set(m, ((logs.get(m) ?? '') + chunk.toString()).slice(-4000));
      });
      child.once('exit', () => running.delete(child));
    }
    for (const m of members) {
      await until(`etcd member ${m.name} healthy at ${m.clientUrl}`, async () => {
        if (children.get(m)?.exitCode !== null) throw new Error(`etcd ${m.name} exited: ${logs.get(m)}`);
        return healthy(m.clientUrl);
      }, { timeoutMs: 20_000, intervalMs: 100 });
    }
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    endpoints: members.map((m) => m.clientUrl),
    members,
    dir,
    kill,
    async leader() {
      for (const m of members) {
        if (m.pid === undefined) continue;
        const status = await postJson(`${m.clientUrl}/v3/maintenance/status`);
        if (status && status.leader !== undefined && status.header?.member_id === status.leader) return m;
      }
      throw new Error('no etcd member reports itself leader');
    },
    stop,
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

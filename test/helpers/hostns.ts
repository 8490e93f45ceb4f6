// Test harness: a private "host" network namespace that plays the machine's side of qwamos, and an
// "internet" namespace behind it (TEST-NET-3, 203.0.113.0/24). The machine's own network is never touched.
//
//   internet netns  <prefix>_inet   <prefix>in 203.0.113.1/24
//        |  veth
//   host netns      <prefix>_host   <prefix>up 203.0.113.2/24, default via 203.0.113.1
//        |  veths created by the code under test
//   VM netns        <prefix>-<vm>   bridge <prefix>b-<vm>, no address (the Route's "cable")
//        |  veth <prefix>t-<vm> (bridge port, the VM's tap name) <-> eth0, made by attachFakeGuest()
//   guest netns     <prefix>_g<vm>  eth0 = the VM's address, default via the gateway: plays the guest
//
// Every name starts with a prefix unique to the call ('t' + 3 base36 chars); cleanup() deletes every
// netns named `<prefix>`, `<prefix>-*` or `<prefix>_*` (VM netns the code created included). A registry
// in /tmp records which process owns which prefix, so sweepDeadTestHosts() can remove what crashed runs
// left behind without touching the namespaces of tests running right now.
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

export interface TestHost {
  /** Unique per call, valid as QWAMOS_PREFIX. */
  prefix: string;
  /** The netns playing the host side. */
  hostNs: string;
  /** The netns playing the internet. */
  internetNs: string;
  /** Uplink interface name inside hostNs (its default route). */
  uplink: string;
  /** hostNs' address on the uplink. */
  uplinkAddr: string;
  /** The internet netns' address (reachable from hostNs, and from VMs only through NAT). */
  internetAddr: string;
  /** Interface in the internet netns. */
  internetIf: string;
  /** Remove every netns with this prefix. Idempotent; never throws. */
  cleanup(): Promise<void>;
}

const NETNS_DIR = '/run/netns';
const REGISTRY = '/tmp/qwamos-testhosts';

// The harness's own processes go through execa directly so they do not count as driver spawns.
async function sh(argv: string[], input?: string): Promise<string> {
  const r = await execa(argv[0]!, argv.slice(1), { input: input ?? '', reject: false });
  if (r.exitCode !== 0) {
    throw new Error(`${argv.join(' ')}: ${String(r.stderr).split('\n')[0] || `exit ${r.exitCode}`}`);
  }
  return String(r.stdout);
}

async function netnsNames(): Promise<string[]> {
  try {
    return await readdir(NETNS_DIR);
  } catch {
    return [];
  }
}

function owned(prefix: string, name: string): boolean {
  return name === prefix || name.startsWith(`${prefix}-`) || name.startsWith(`${prefix}_`);
}

function checkPrefix(prefix: string): void {
  if (!/^[a-z][a-z0-9]{1,3}$/.test(prefix)) throw new Error(`invalid test prefix ${JSON.stringify(prefix)}`);
}

/** Delete every netns owned by `prefix` (see owned()); returns their names. */
export async function sweepStale(prefix: string): Promise<string[]> {
  checkPrefix(prefix);
  const victims = (await netnsNames()).filter((n) => owned(prefix, n));
  if (victims.length) {
    await execa('ip', ['-force', '-batch', '-'], { input: victims.map((n) => `netns del ${n}`).join('\n') + '\n', reject: false });
  }
  return victims;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Remove the namespaces of test hosts whose creating process is gone (crashed runs). */
export async function sweepDeadTestHosts(): Promise<string[]> {
  let entries: string[] = [];
  try {
    entries = await readdir(REGISTRY);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const prefix of entries) {
    if (!/^[a-z][a-z0-9]{1,3}$/.test(prefix)) continue;
    const pid = Number((await readFile(path.join(REGISTRY, prefix), 'utf8').catch(() => '')).trim());
    if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) continue;
    removed.push(...(await sweepStale(prefix)));
    await rm(path.join(REGISTRY, prefix), { force: true });
  }
  return removed;
}

async function freshPrefix(): Promise<string> {
  const existing = await netnsNames();
  await mkdir(REGISTRY, { recursive: true });
  const registered = new Set(await readdir(REGISTRY));
  for (let i = 0; i < 100; i++) {
    const n = randomBytes(4).readUInt32BE(0) % 36 ** 3;
    const prefix = 't' + n.toString(36).padStart(3, '0');
    if (registered.has(prefix) || existing.some((x) => owned(prefix, x))) continue;
    return prefix;
  }
  throw new Error('could not find a free test prefix');
}

export const INTERNET_ADDR = '203.0.113.1';
export const UPLINK_ADDR = '203.0.113.2';

/** Create a host netns and an internet netns behind it. Call cleanup() in `after`/`finally`. */
export async function createTestHost(): Promise<TestHost> {
  await sweepDeadTestHosts();
  const prefix = await freshPrefix();
  await writeFile(path.join(REGISTRY, prefix), `${process.pid}\n`);
  const hostNs = `${prefix}_host`;
  const internetNs = `${prefix}_inet`;
  const uplink = `${prefix}up`;
  const internetIf = `${prefix}in`;
  const cleanup = async () => {
    try {
      await sweepStale(prefix);
    } finally {
      await rm(path.join(REGISTRY, prefix), { force: true });
    }
  };
  try {
    await sh(['ip', '-batch', '-'], `netns add ${hostNs}\nnetns add ${internetNs}\n`);
    await sh(
      ['ip', '-n', hostNs, '-batch', '-'],
      [
        'link set lo up',
        `link add ${uplink} type veth peer name ${internetIf} netns ${internetNs}`,
        `addr add ${UPLINK_ADDR}/24 dev ${uplink}`,
        `link set ${uplink} up`,
        `route add default via ${INTERNET_ADDR} dev ${uplink}`,
      ].join('\n') + '\n',
    );
    await sh(['ip', '-n', internetNs, '-batch', '-'], ['link set lo up', `addr add ${INTERNET_ADDR}/24 dev ${internetIf}`, `link set ${internetIf} up`].join('\n') + '\n');
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { prefix, hostNs, internetNs, uplink, uplinkAddr: UPLINK_ADDR, internetAddr: INTERNET_ADDR, internetIf, cleanup };
}

/** Run a command (optionally in a netns) for test checks; returns exit code and output, never throws. */
export async function tryIn(netns: string | undefined, argv: string[], input?: string): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const full = netns ? ['ip', 'netns', 'exec', netns, ...argv] : argv;
  const r = await execa(full[0]!, full.slice(1), { input: input ?? '', reject: false, timeout: 20_000 });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** `ip -j [-n NS] ARGS...` parsed, for checks independent of the driver. */
export async function ipJson<T = any>(netns: string | undefined, args: string[]): Promise<T[]> {
  const out = await sh(['ip', '-j', ...(netns ? ['-n', netns] : []), ...args]);
  return out.trim() ? (JSON.parse(out) as T[]) : [];
}

/**
 * Plays a VM's guest: netns `<prefix>_g<vm>` (removed by cleanup(); not `<prefix>-*`, so qwamos never
 * takes it for a VM netns) with `eth0` = `cidr`, default route via `gateway`, cabled by a veth to the
 * Route's bridge `<prefix>b-<vm>` in the VM netns. Its port there is named like the VM's tap
 * (`<prefix>t-<vm>`): it plays QEMU's tap, the one port besides the Route's veth the Route accepts.
 * Replaces an earlier fake guest of the same VM (e.g. after the VM netns was recreated). Returns the
 * guest netns name.
 */
export async function attachFakeGuest(prefix: string, vm: string, cidr: string, gateway: string): Promise<string> {
  checkPrefix(prefix);
  if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(vm)) throw new Error(`invalid VM name ${JSON.stringify(vm)}`);
  if (!/^[0-9.]+\/\d+$/.test(cidr) || !/^[0-9.]+$/.test(gateway)) throw new Error(`invalid guest address ${cidr} via ${gateway}`);
  const guestNs = `${prefix}_g${vm}`;
  const vmNs = `${prefix}-${vm}`;
  const port = `${prefix}t-${vm}`;
  if (Buffer.byteLength(port) > 15) throw new Error(`fake guest port name ${port} is too long`);
  if ((await netnsNames()).includes(guestNs)) await sh(['ip', 'netns', 'del', guestNs]);
  await sh(['ip', 'netns', 'add', guestNs]);
  try {
    // Deleting the old guest netns took its veth pair along; this is only for a half-made earlier attempt.
    await execa('ip', ['-n', vmNs, 'link', 'del', port], { reject: false });
    await sh(['ip', '-n', vmNs, '-batch', '-'], `link add ${port} type veth peer name eth0 netns ${guestNs}\nlink set ${port} master ${prefix}b-${vm} up\n`);
    await sh(
      ['ip', '-n', guestNs, '-batch', '-'],
      ['link set lo up', `addr add ${cidr} dev eth0`, 'link set eth0 up', `route add default via ${gateway} dev eth0`].join('\n') + '\n',
    );
  } catch (err) {
    await execa('ip', ['netns', 'del', guestNs], { reject: false });
    throw err;
  }
  return guestNs;
}

/** Names of all netns right now. */
export async function listAllNetns(): Promise<string[]> {
  return netnsNames();
}

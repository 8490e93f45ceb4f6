// The Tor gateway driver: a generated torrc (TransPort and DNSPort on the gateway address only, no SOCKS,
// no ControlPort, private DataDirectory, log to a file), run inside the host-side netns as a supervised
// process (./process.ts). Health = both listeners are up on the gateway address.
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ensureStarted, listeners, runningPid, stopProcess, type ProcessSpec } from './process.ts';

export interface TorGateway {
  /** The host-side netns (tests); undefined = the machine's own. */
  netns?: string;
  /** Private directory for torrc, data, log and pid file (created 0700). */
  dir: string;
  gateway: string;
  transPort: number;
  dnsPort: number;
  /** Tor's virtual range for AutomapHostsOnResolve (default 10.192.0.0/10). */
  virtualNetwork?: string;
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

function paths(g: TorGateway) {
  return { torrc: path.join(g.dir, 'torrc'), data: path.join(g.dir, 'data'), log: path.join(g.dir, 'tor.log'), pid: path.join(g.dir, 'tor.pid') };
}

function check(g: TorGateway): void {
  if (!IPV4_RE.test(g.gateway)) throw new Error(`tor gateway: not an IPv4 address: ${JSON.stringify(g.gateway)}`);
  for (const p of [g.transPort, g.dnsPort]) if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`tor gateway: invalid port ${p}`);
  if (!path.isAbsolute(g.dir) || /[\s"\\]/.test(g.dir)) throw new Error(`tor gateway: directory must be an absolute path without spaces: ${g.dir}`);
  if (g.virtualNetwork !== undefined && !/^[0-9.]+\/\d{1,2}$/.test(g.virtualNetwork)) throw new Error(`tor gateway: invalid VirtualAddrNetworkIPv4 ${g.virtualNetwork}`);
}

/** Pure: the torrc. Used with `--defaults-torrc /dev/null` so no distro default adds a listener. */
export function renderTorrc(g: TorGateway): string {
  check(g);
  const p = paths(g);
  return [
    `DataDirectory ${p.data}`,
    'DataDirectoryGroupReadable 0',
    `Log notice file ${p.log}`,
    'SocksPort 0',
    'ControlPort 0',
    `TransPort ${g.gateway}:${g.transPort}`,
    `DNSPort ${g.gateway}:${g.dnsPort}`,
    `VirtualAddrNetworkIPv4 ${g.virtualNetwork ?? '10.192.0.0/10'}`,
    'AutomapHostsOnResolve 1',
    'ClientOnly 1',
    'RunAsDaemon 0',
    '',
  ].join('\n');
}

function spec(g: TorGateway): ProcessSpec {
  const p = paths(g);
  return { ...(g.netns ? { netns: g.netns } : {}), argv: ['tor', '-f', p.torrc, '--defaults-torrc', '/dev/null'], pidFile: p.pid, logFile: p.log, marker: p.torrc };
}

/** Write the config and start tor unless it already runs (restart-safe); returns the PID. */
export async function startTor(g: TorGateway): Promise<number> {
  check(g);
  const p = paths(g);
  await mkdir(p.data, { recursive: true, mode: 0o700 });
  await chmod(g.dir, 0o700);
  await chmod(p.data, 0o700);
  await writeFile(p.torrc, renderTorrc(g), { mode: 0o600 });
  return ensureStarted(spec(g));
}

export interface TorHealth {
  pid?: number;
  transPort: boolean;
  dnsPort: boolean;
  healthy: boolean;
}

/** Running, and TransPort (tcp) and DNSPort (udp) listen on the gateway address. */
export async function torHealth(g: TorGateway): Promise<TorHealth> {
  const pid = await runningPid(spec(g));
  const ls = pid ? await listeners(g.netns) : [];
  const transPort = ls.some((l) => l.proto === 'tcp' && l.address === g.gateway && l.port === g.transPort);
  const dnsPort = ls.some((l) => l.proto === 'udp' && l.address === g.gateway && l.port === g.dnsPort);
  return { ...(pid ? { pid } : {}), transPort, dnsPort, healthy: !!pid && transPort && dnsPort };
}

/** Its PID when running (pid file + command line; no process spawned). */
export function torPid(g: TorGateway): Promise<number | undefined> {
  return runningPid(spec(g));
}

export async function stopTor(g: TorGateway): Promise<void> {
  await stopProcess(spec(g));
}

/** Stop the tor whose files are in `dir` (pid file + its torrc in the command line), whatever its Route was. */
export async function stopTorIn(dir: string): Promise<void> {
  await stopProcess({ pidFile: path.join(dir, 'tor.pid'), marker: path.join(dir, 'torrc') });
}

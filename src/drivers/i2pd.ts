// The I2P gateway driver: i2pd with a private datadir and a generated config: HTTP and SOCKS proxies on
// the gateway address only, no outproxy, SAM/BOB/I2CP/i2pcontrol/UPnP and the web console off, the
// addressbook off, reseed URLs empty (the empty value is only accepted in the config file). Its NTCP2
// transport binds 0.0.0.0 (disabling both transports aborts i2pd): the firewall keeps VMs away from it.
// i2pd keeps running when a bind fails, so health is the listening sockets, not the process.
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ensureStarted, listeners, runningPid, stopProcess, type ProcessSpec } from './process.ts';

export interface I2pGateway {
  /** The host-side netns (tests); undefined = the machine's own. */
  netns?: string;
  dir: string;
  gateway: string;
  httpProxyPort: number;
  socksProxyPort: number;
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

function paths(g: I2pGateway) {
  return { conf: path.join(g.dir, 'i2pd.conf'), tunconf: path.join(g.dir, 'tunnels.conf'), data: path.join(g.dir, 'data'), log: path.join(g.dir, 'i2pd.log'), pid: path.join(g.dir, 'i2pd.pid') };
}

function check(g: I2pGateway): void {
  if (!IPV4_RE.test(g.gateway)) throw new Error(`i2p gateway: not an IPv4 address: ${JSON.stringify(g.gateway)}`);
  for (const p of [g.httpProxyPort, g.socksProxyPort]) if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`i2p gateway: invalid port ${p}`);
  if (!path.isAbsolute(g.dir) || /[\s"\\]/.test(g.dir)) throw new Error(`i2p gateway: directory must be an absolute path without spaces: ${g.dir}`);
}

/** Pure: i2pd.conf. */
export function renderI2pdConf(g: I2pGateway): string {
  check(g);
  const p = paths(g);
  return [
    `log = file`,
    `logfile = ${p.log}`,
    'loglevel = warn',
    'daemon = false',
    'ipv4 = true',
    'ipv6 = false',
    'nat = true',
    `address4 = ${g.gateway}`,
    '[ntcp2]',
    'enabled = true',
    'published = false',
    '[ssu2]',
    'enabled = false',
    '[http]',
    'enabled = false',
    '[httpproxy]',
    'enabled = true',
    `address = ${g.gateway}`,
    `port = ${g.httpProxyPort}`,
    'outproxy =',
    '[socksproxy]',
    'enabled = true',
    `address = ${g.gateway}`,
    `port = ${g.socksProxyPort}`,
    'outproxy.enabled = false',
    '[sam]',
    'enabled = false',
    '[bob]',
    'enabled = false',
    '[i2cp]',
    'enabled = false',
    '[i2pcontrol]',
    'enabled = false',
    '[upnp]',
    'enabled = false',
    '[addressbook]',
    'enabled = false',
    '[reseed]',
    'verify = true',
    'urls =',
    '',
  ].join('\n');
}

function spec(g: I2pGateway): ProcessSpec {
  const p = paths(g);
  return { ...(g.netns ? { netns: g.netns } : {}), argv: ['i2pd', `--conf=${p.conf}`, `--tunconf=${p.tunconf}`, `--datadir=${p.data}`], pidFile: p.pid, logFile: path.join(g.dir, 'i2pd.out'), marker: p.conf };
}

export async function startI2pd(g: I2pGateway): Promise<number> {
  check(g);
  const p = paths(g);
  await mkdir(p.data, { recursive: true, mode: 0o700 });
  await chmod(g.dir, 0o700);
  await chmod(p.data, 0o700);
  await writeFile(p.conf, renderI2pdConf(g), { mode: 0o600 });
  await writeFile(p.tunconf, '', { mode: 0o600 });
  return ensureStarted(spec(g));
}

export interface I2pHealth {
  pid?: number;
  httpProxy: boolean;
  socksProxy: boolean;
  healthy: boolean;
}

export async function i2pdHealth(g: I2pGateway): Promise<I2pHealth> {
  const pid = await runningPid(spec(g));
  const ls = pid ? await listeners(g.netns) : [];
  const on = (port: number) => ls.some((l) => l.proto === 'tcp' && l.address === g.gateway && l.port === port);
  const httpProxy = on(g.httpProxyPort);
  const socksProxy = on(g.socksProxyPort);
  return { ...(pid ? { pid } : {}), httpProxy, socksProxy, healthy: !!pid && httpProxy && socksProxy };
}

/** Its PID when running (pid file + command line; no process spawned). */
export function i2pdPid(g: I2pGateway): Promise<number | undefined> {
  return runningPid(spec(g));
}

export async function stopI2pd(g: I2pGateway): Promise<void> {
  await stopProcess(spec(g));
}

/** Stop the i2pd whose files are in `dir` (pid file + its config in the command line), whatever its Route was. */
export async function stopI2pdIn(dir: string): Promise<void> {
  await stopProcess({ pidFile: path.join(dir, 'i2pd.pid'), marker: path.join(dir, 'i2pd.conf') });
}

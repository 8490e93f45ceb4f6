// A namespace with no way out for gateway tests: lo and a veth pair whose both ends stay inside (no dummy module here), one holding the gateway address, no
// default route, no uplink. Named <prefix>_gw so the test host's cleanup() removes it.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createTestHost, ipJson, tryIn, type TestHost } from '../helpers/hostns.ts';

export interface GatewayNs {
  host: TestHost;
  netns: string;
  gateway: string;
  dir: string;
  cleanup(): Promise<void>;
}

export async function createGatewayNs(): Promise<GatewayNs> {
  const host = await createTestHost();
  const netns = `${host.prefix}_gw`;
  const gateway = '10.66.0.1';
  const dir = await mkdtemp(path.join(tmpdir(), 'qwamos-gw-'));
  const cleanup = async () => {
    await host.cleanup();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    for (const argv of [
      ['ip', 'netns', 'add', netns],
      ['ip', '-n', netns, 'link', 'set', 'lo', 'up'],
      ['ip', '-n', netns, 'link', 'add', 'gw0', 'type', 'veth', 'peer', 'name', 'gw1'],
      ['ip', '-n', netns, 'link', 'set', 'gw1', 'up'],
      ['ip', '-n', netns, 'addr', 'add', `${gateway}/32`, 'dev', 'gw0'],
      ['ip', '-n', netns, 'link', 'set', 'gw0', 'up'],
    ]) {
      const r = await tryIn(undefined, argv);
      if (r.exitCode !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr.trim()}`);
    }
    const routes = await ipJson(netns, ['route', 'show', 'default']);
    if (routes.length !== 0) throw new Error('gateway netns must have no default route');
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { host, netns, gateway, dir, cleanup };
}

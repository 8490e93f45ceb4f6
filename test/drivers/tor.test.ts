// The Tor gateway driver against the real tor, inside a netns with no way out (it cannot bootstrap;
// its listeners open anyway).
import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { listeners } from '../../src/drivers/process.ts';
import { renderTorrc, startTor, stopTor, torHealth, type TorGateway } from '../../src/drivers/tor.ts';
import { until } from '../helpers/poll.ts';
import { createGatewayNs, type GatewayNs } from './gateway-ns.ts';

describe('tor gateway (real tor, no way out)', () => {
  let ns: GatewayNs;
  let g: TorGateway;
  before(async () => {
    ns = await createGatewayNs();
    g = { netns: ns.netns, dir: ns.dir, gateway: ns.gateway, transPort: 9040, dnsPort: 5353 };
  });
  after(async () => {
    if (g) await stopTor(g).catch(() => {});
    await ns?.cleanup();
  });

  test('torrc binds TransPort and DNSPort to the gateway only, no SOCKS, no ControlPort', () => {
    const t = renderTorrc(g);
    assert.match(t, /^TransPort 10\.66\.0\.1:9040$/m);
    assert.match(t, /^DNSPort 10\.66\.0\.1:5353$/m);
    assert.match(t, /^SocksPort 0$/m);
    assert.match(t, /^ControlPort 0$/m);
    assert.match(t, /^AutomapHostsOnResolve 1$/m);
    assert.match(t, /^VirtualAddrNetworkIPv4 10\.192\.0\.0\/10$/m);
    assert.throws(() => renderTorrc({ ...g, gateway: '0.0.0.0; x' }), /not an IPv4/);
  });

  test('starts, listens on the gateway address only, is found again after a restart, stops by PID', async () => {
    const pid = await startTor(g);
    await until('tor listeners', async () => (await torHealth(g)).healthy, 20_000);
    const ls = await listeners(ns.netns);
    assert.ok(ls.every((l) => l.address === ns.gateway), `every listener on the gateway: ${JSON.stringify(ls)}`);
    assert.equal((await stat(`${ns.dir}/data`)).mode & 0o777, 0o700);
    // A second start (controller restart) finds the same process instead of starting another.
    assert.equal(await startTor(g), pid);
    await stopTor(g);
    assert.equal((await torHealth(g)).healthy, false);
    assert.deepEqual(await listeners(ns.netns), []);
  });
});

// The I2P gateway driver against the real i2pd, inside a netns with no way out.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { i2pdHealth, renderI2pdConf, startI2pd, stopI2pd, type I2pGateway } from '../../src/drivers/i2pd.ts';
import { listeners } from '../../src/drivers/process.ts';
import { until } from '../helpers/poll.ts';
import { createGatewayNs, type GatewayNs } from './gateway-ns.ts';

describe('i2pd gateway (real i2pd, no way out)', () => {
  let ns: GatewayNs;
  let g: I2pGateway;
  before(async () => {
    ns = await createGatewayNs();
    g = { netns: ns.netns, dir: ns.dir, gateway: ns.gateway, httpProxyPort: 4444, socksProxyPort: 4447 };
  });
  after(async () => {
    if (g) await stopI2pd(g).catch(() => {});
    await ns?.cleanup();
  });

  test('config: proxies on the gateway, everything else off, reseed URLs empty', () => {
    const c = renderI2pdConf(g);
    for (const section of ['sam', 'bob', 'i2cp', 'i2pcontrol', 'upnp', 'http', 'addressbook', 'ssu2']) assert.match(c, new RegExp(`\\[${section}\\]\\nenabled = false`), section);
    assert.match(c, /\[httpproxy\]\nenabled = true\naddress = 10\.66\.0\.1\nport = 4444\noutproxy =\n/);
    assert.match(c, /\[socksproxy\]\nenabled = true\naddress = 10\.66\.0\.1\nport = 4447\noutproxy\.enabled = false/);
    assert.match(c, /\[reseed\]\nverify = true\nurls =\n/);
  });

  test('starts, proxies listen on the gateway; only its NTCP2 transport binds a wildcard; stops by PID', async () => {
    const pid = await startI2pd(g);
    await until('i2pd proxies', async () => (await i2pdHealth(g)).healthy, 30_000);
    const ls = await listeners(ns.netns);
    const elsewhere = ls.filter((l) => l.address !== ns.gateway);
    // The transport (a random port) is the one wildcard listener; the firewall keeps VMs away from it.
    assert.ok(elsewhere.every((l) => l.proto === 'tcp' && (l.address === '0.0.0.0' || l.address === '*')), `only the transport elsewhere: ${JSON.stringify(ls)}`);
    assert.ok(!ls.some((l) => [7656, 2827, 7654, 7650, 7070].includes(l.port)), 'SAM, BOB, I2CP, i2pcontrol and the console are closed');
    assert.equal(await startI2pd(g), pid);
    await stopI2pd(g);
    assert.equal((await i2pdHealth(g)).healthy, false);
  });
});

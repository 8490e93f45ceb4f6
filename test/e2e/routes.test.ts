// Routes end to end: the real bin, real ip/nft, inside a private test host. Checks use the test's own
// `ip -j` / `nft -j` calls, not the driver's.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { attachFakeGuest, createTestHost, ipJson, listAllNetns, tryIn, type TestHost } from '../helpers/hostns.ts';
import { RouteController } from '../../src/controllers/route/index.ts';
import { makeWorld } from '../../src/engine/contract.ts';
import type { StoredResource } from '../../src/store/store.ts';
import { Store } from '../../src/store/store.ts';
import { createSandbox, route, until, type Sandbox } from './harness.ts';

const netnsOf = async (sb: Sandbox) => (await listAllNetns()).filter((n) => n.startsWith(`${sb.host.prefix}-`)).sort();
const hostLinks = async (sb: Sandbox) => (await ipJson<{ ifname: string }>(sb.host.hostNs, ['link', 'show'])).map((l) => l.ifname).filter((n) => n.startsWith(`${sb.host.prefix}h-`)).sort();
type IpLink = { ifname: string; flags: string[]; master?: string; linkinfo?: { info_kind?: string }; addr_info: { family: string; local: string }[] };
/** The VM netns is the guest's cable: bridge `Pb-vm` up with exactly `ports` (names without the prefix
 * letter: 'v' = the veth), no address anywhere but lo's 127.0.0.1, no route. */
async function assertCable(sb: Sandbox, vm: string, ports: string[]): Promise<void> {
  const p = sb.host.prefix;
  const ns = `${p}-${vm}`;
  const links = await ipJson<IpLink>(ns, ['-d', 'addr', 'show']);
  const br = links.find((l) => l.ifname === `${p}b-${vm}`);
  assert.equal(br?.linkinfo?.info_kind, 'bridge', `bridge in ${ns}`);
  assert.ok(br!.flags.includes('UP'));
  assert.deepEqual(links.filter((l) => l.master === br!.ifname).map((l) => l.ifname).sort(), ports.map((x) => `${p}${x}-${vm}`).sort());
  const addrs = links.flatMap((l) => l.addr_info.filter((a) => a.family === 'inet' || a.family === 'inet6').map((a) => `${l.ifname} ${a.local}`));
  assert.deepEqual(addrs, ['lo 127.0.0.1'], `no address in ${ns}`);
  assert.deepEqual(await ipJson(ns, ['route', 'show']), [], `no route in ${ns}`);
}
const ping = (ns: string, addr: string, wait = 2) => tryIn(ns, ['busybox', 'ping', '-c1', `-W${wait}`, addr]);

async function natRules(sb: Sandbox): Promise<string[]> {
  const r = await tryIn(sb.host.hostNs, ['nft', '-j', 'list', 'table', 'ip', `${sb.host.prefix}_qwamos`]);
  if (r.exitCode !== 0) return [];
  const items = JSON.parse(r.stdout).nftables as { rule?: { comment?: string } }[];
  return items.filter((i) => i.rule).map((i) => i.rule!.comment ?? '').sort();
}

/** Each test makes what it needs: Route dev (direct, 10.8.0.4) applied and converged; idempotent. */
async function applyDev(sb: Sandbox): Promise<string> {
  const dev = await sb.manifest('dev.yaml', route('dev', 'direct', '10.8.0.4/24'));
  const r = await sb.qwamos(['apply', '-f', dev, '--wait', '--timeout', '60s']);
  assert.equal(r.exitCode, 0, r.stderr);
  return dev;
}

describe('apply, dry-run, diff and delete', () => {
  let sb: Sandbox;
  before(async () => (sb = await createSandbox()));
  after(async () => sb?.cleanup());

  test('--dry-run changes nothing', async () => {
    const file = await sb.manifest('dev.yaml', route('dev', 'direct', '10.8.0.4/24'));
    const r = await sb.qwamos(['apply', '--dry-run', '-f', file]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /^Route\/dev created \(dry run\)$/m);
    assert.deepEqual(await netnsOf(sb), []);
    assert.deepEqual(await hostLinks(sb), []);
    const store = await Store.open(sb.stateDir);
    assert.equal(await store.getResource('Route', 'dev'), undefined);
  });

  test('apply creates the netns, bridge, veth, host address and route, and NAT the host shows', async () => {
    const dev = await sb.manifest('dev.yaml', route('dev', 'direct', '10.8.0.4/24'));
    const iso = await sb.manifest('sandbox.yaml', route('sandbox', 'isolated', '10.8.0.5/24'));
    const r = await sb.qwamos(['apply', '-f', dev, '-f', iso]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /^Route\/dev created$/m);
    assert.match(r.stdout, /^Route\/sandbox created$/m);
    const p = sb.host.prefix;
    assert.deepEqual(await netnsOf(sb), [`${p}-dev`, `${p}-sandbox`]);
    // The VM netns holds no address: the veth's VM end is a port of the bridge the guest's tap joins.
    await assertCable(sb, 'dev', ['v']);
    const hostSide = await ipJson<IpLink>(sb.host.hostNs, ['addr', 'show', `${p}h-dev`]);
    assert.deepEqual(hostSide[0]!.addr_info.filter((a) => a.family === 'inet').map((a) => a.local), ['10.8.0.1']);
    const hostRoutes = await ipJson<{ dst: string; dev: string }>(sb.host.hostNs, ['route', 'show', 'dev', `${p}h-dev`]);
    assert.deepEqual(hostRoutes.map((r) => r.dst), ['10.8.0.4']);
    assert.deepEqual(await hostLinks(sb), [`${p}h-dev`], 'isolated routes get no veth');
    const sandboxLinks = (await ipJson<{ ifname: string }>(`${p}-sandbox`, ['link', 'show'])).map((l) => l.ifname);
    assert.deepEqual(sandboxLinks, ['lo', `${p}b-sandbox`]);
    await assertCable(sb, 'sandbox', []);
    assert.deepEqual(await natRules(sb), ['Route/dev']);
    // Traffic, from fake guests on the bridges (they own the VM addresses, as QEMU's guest will): the
    // direct one reaches the "internet" and the host reaches it; the isolated one reaches nothing.
    const devGuest = await attachFakeGuest(p, 'dev', '10.8.0.4/24', '10.8.0.1');
    const sandboxGuest = await attachFakeGuest(p, 'sandbox', '10.8.0.5/24', '10.8.0.1');
    assert.equal((await ping(devGuest, sb.host.internetAddr)).exitCode, 0);
    assert.equal((await ping(sb.host.hostNs, '10.8.0.4')).exitCode, 0, 'host -> guest');
    assert.notEqual((await ping(sandboxGuest, sb.host.internetAddr, 1)).exitCode, 0);
    assert.notEqual((await ping(sandboxGuest, '10.8.0.1', 1)).exitCode, 0);
    assert.equal((await sb.qwamos(['diff', '-f', dev, '-f', iso])).exitCode, 0, 'the guests\' bridge ports are not drift');

    const again = await sb.qwamos(['apply', '-f', dev, '-f', iso]);
    assert.match(again.stdout, /^Route\/dev unchanged$/m);
  });

  test('diff exits 0 in sync, 1 with host drift or a changed manifest, 2 on invalid input', async () => {
    const dev = await applyDev(sb);
    assert.equal((await sb.qwamos(['diff', '-f', dev])).exitCode, 0);
    await tryIn(undefined, ['ip', 'netns', 'del', `${sb.host.prefix}-dev`]);
    const drift = await sb.qwamos(['diff', '-f', dev]);
    assert.equal(drift.exitCode, 1);
    assert.match(drift.stdout, /Route\/dev \(host differs\)/);
    assert.match(drift.stdout, /\+ create netns/);
    const changed = await sb.manifest('dev2.yaml', route('dev', 'direct', '10.8.0.9/24'));
    const d2 = await sb.qwamos(['diff', '-f', changed]);
    assert.equal(d2.exitCode, 1);
    assert.match(d2.stdout, /~ spec\.address: "10\.8\.0\.4\/24" -> "10\.8\.0\.9\/24"/);
    await rm(changed);
    await rm(`${changed}.sig`);
    const bad = await sb.manifest('bad.yaml', 'apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata: {name: x}\nspec: {vm: x, mode: teleport}\n');
    const d3 = await sb.qwamos(['diff', '-f', bad]);
    assert.equal(d3.exitCode, 2);
    assert.match(d3.stderr, /bad\.yaml:4:\d+: Route\/x: spec\.mode: must be one of/);
    await rm(bad);
    await rm(`${bad}.sig`);
    // Heal what the diff showed.
    assert.equal((await sb.qwamos(['reconcile', 'route/dev'])).exitCode, 0);
    assert.equal((await sb.qwamos(['diff', '-f', dev])).exitCode, 0);
  });

  test('unsigned, tampered or invalid manifests change nothing on the host', async () => {
    const before = await netnsOf(sb);
    const unsigned = await sb.manifest('u.yaml', route('unsig', 'direct', '10.8.0.20/24'), { sign: false });
    const r1 = await sb.qwamos(['apply', '-f', unsigned]);
    assert.equal(r1.exitCode, 1);
    assert.match(r1.stderr, /u\.yaml:1:1: signature: refused: unsigned/);
    const tampered = await sb.manifest('t.yaml', route('tamp', 'direct', '10.8.0.21/24'));
    const { appendFile } = await import('node:fs/promises');
    await appendFile(tampered, '  dns: host\n');
    const dev = await sb.manifest('dev.yaml', route('dev', 'direct', '10.8.0.4/24'));
    const r2 = await sb.qwamos(['apply', '-f', tampered, '-f', dev]);
    assert.equal(r2.exitCode, 1);
    assert.match(r2.stderr, /tampered/);
    assert.match(r2.stderr, /nothing was applied/);
    assert.deepEqual(await netnsOf(sb), before);
    await rm(unsigned);
    await rm(tampered);
    await rm(`${tampered}.sig`);
  });

  test('delete removes exactly what the route created', async () => {
    await applyDev(sb);
    const others = (await netnsOf(sb)).filter((n) => n !== `${sb.host.prefix}-dev`);
    const r = await sb.qwamos(['delete', 'route/dev']);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /^Route\/dev deleted$/m);
    assert.deepEqual(await netnsOf(sb), others);
    await until('host veth gone', async () => !(await hostLinks(sb)).includes(`${sb.host.prefix}h-dev`));
    assert.ok(!(await natRules(sb)).includes('Route/dev'));
    assert.equal((await sb.qwamos(['delete', 'route/dev'])).exitCode, 1, 'deleting twice: not found');
    const store = await Store.open(sb.stateDir);
    assert.equal(await store.getResource('Route', 'dev'), undefined);
  });
});

describe('prune', () => {
  let sb: Sandbox;
  before(async () => (sb = await createSandbox()));
  after(async () => sb?.cleanup());

  test('--prune deletes what left the applied directory, and nothing else', async () => {
    await sb.manifest('a.yaml', route('alpha', 'direct', '10.8.0.2/24'));
    const b = await sb.manifest('b.yaml', route('beta', 'direct', '10.8.0.3/24'));
    const other = await sb.manifest('../other.yaml', route('gamma', 'isolated', '10.8.0.9/24'));
    assert.equal((await sb.qwamos(['apply', '-f', sb.manifests])).exitCode, 0);
    assert.equal((await sb.qwamos(['apply', '-f', other])).exitCode, 0);
    await rm(b);
    await rm(`${b}.sig`);
    const r = await sb.qwamos(['apply', '--prune', '-f', sb.manifests]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.match(r.stdout, /^Route\/beta deleted$/m);
    const p = sb.host.prefix;
    assert.deepEqual(await netnsOf(sb), [`${p}-alpha`, `${p}-gamma`]);
    assert.deepEqual(await natRules(sb), ['Route/alpha']);
  });
});

describe('the controller daemon', () => {
  let sb: Sandbox;
  let daemon: import('node:child_process').ChildProcess;
  before(async () => (sb = await createSandbox()));
  after(async () => sb?.cleanup());

  test('a netns deleted by hand is detected, recorded as drift and healed', async () => {
    daemon = await sb.startDaemon();
    const dev = await sb.manifest('dev.yaml', route('dev', 'direct', '10.8.0.4/24'));
    const r = await sb.qwamos(['apply', '--wait', '-f', dev]);
    assert.equal(r.exitCode, 0, r.stderr);
    const ns = `${sb.host.prefix}-dev`;
    assert.ok((await netnsOf(sb)).includes(ns));
    await tryIn(undefined, ['ip', 'netns', 'del', ns]);
    const store = await Store.open(sb.stateDir);
    await until('drift healed', async () => (await store.listDrift({ state: 'healed', resource: 'Route/dev' })).some((d) => d.field === 'netns'));
    assert.ok((await netnsOf(sb)).includes(ns));
    const healed = (await store.listDrift({ resource: 'Route/dev' })).find((d) => d.field === 'netns')!;
    assert.equal(healed.desired, ns);
    assert.equal(healed.actual, '(none)');
    await assertCable(sb, 'dev', ['v']);
    const guest = await attachFakeGuest(sb.host.prefix, 'dev', '10.8.0.4/24', '10.8.0.1');
    assert.equal((await ping(guest, sb.host.internetAddr)).exitCode, 0, 'healed route works');
  });

  test('driftPolicy warn reports drift without healing it', async () => {
    const w = await sb.manifest('watch.yaml', route('watch', 'direct', '10.8.0.6/24', '  driftPolicy: warn\n'));
    assert.equal((await sb.qwamos(['apply', '--wait', '-f', w])).exitCode, 0);
    const vmIf = `${sb.host.prefix}v-watch`;
    await tryIn(`${sb.host.prefix}-watch`, ['ip', 'link', 'set', vmIf, 'down']);
    const store = await Store.open(sb.stateDir);
    await until('drift reported', async () => (await store.getStatus('Route', 'watch'))?.phase === 'Drifted');
    const open = await store.listDrift({ state: 'open', resource: 'Route/watch' });
    assert.ok(open.some((d) => d.field === 'vmIf.up' && d.actual === 'false'), JSON.stringify(open));
    await new Promise((r) => setTimeout(r, 500));
    const link = await ipJson<{ flags: string[] }>(`${sb.host.prefix}-watch`, ['link', 'show', vmIf]);
    assert.ok(!link[0]!.flags.includes('UP'), 'warn must not heal');
    const ready = (await store.getStatus('Route', 'watch'))!.conditions.find((c) => c.type === 'Ready')!;
    assert.equal(ready.status, 'False');
    assert.equal(ready.reason, 'DriftDetected');
  });

  test('one daemon at a time; SIGTERM stops it cleanly and leaves the host as it is', async () => {
    const before = await netnsOf(sb);
    const second = await sb.startDaemon().catch((e) => e as Error);
    assert.ok(second instanceof Error && /another qwamos controller runs/.test(second.message), String(second));
    const exited = new Promise<number | null>((r) => daemon.once('exit', (code) => r(code)));
    daemon.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.match((daemon as unknown as { output: () => string }).output(), /controller stopped/);
    assert.deepEqual(await netnsOf(sb), before, 'stopping touches nothing on the host');
    const store = await Store.open(sb.stateDir);
    assert.equal(await store.leaseHolder('controller'), null, 'lease released');
    assert.equal(await store.leaseHolder('reconciler'), null, 'lease released');
  });
});

describe('kill -9 of the daemon mid-apply', () => {
  let sb: Sandbox;
  before(async () => (sb = await createSandbox()));
  after(async () => sb?.cleanup());

  test('after a restart everything converges, with no duplicates and no leftovers', async () => {
    const names = Array.from({ length: 24 }, (_, i) => `r${i}`);
    await sb.manifests_(Object.fromEntries(names.map((n, i) => [`${n}.yaml`, route(n, i % 3 === 0 ? 'isolated' : 'direct', `10.9.${i}.2/24`)])));
    const daemon = await sb.startDaemon();
    const apply = await sb.qwamos(['apply', '-f', sb.manifests]);
    assert.equal(apply.exitCode, 0, apply.stderr);
    assert.match(apply.stderr, /handed to the qwamos controller/);
    // Kill it while it works (some namespaces exist, not all).
    await until('daemon started creating', async () => (await netnsOf(sb)).length > 0, 20_000);
    daemon.kill('SIGKILL');
    await new Promise((r) => daemon.once('exit', r));

    await sb.startDaemon();
    const store = await Store.open(sb.stateDir);
    await until(
      'all ready',
      async () => (await Promise.all(names.map((n) => store.getStatus('Route', n)))).every((s) => s?.phase === 'Ready'),
      60_000,
    );
    const p = sb.host.prefix;
    assert.deepEqual(await netnsOf(sb), names.map((n) => `${p}-${n}`).sort());
    const direct = names.filter((_, i) => i % 3 !== 0);
    assert.deepEqual(await hostLinks(sb), direct.map((n) => `${p}h-${n}`).sort());
    assert.deepEqual(await natRules(sb), direct.map((n) => `Route/${n}`).sort());
    for (const [i, n] of names.entries()) await assertCable(sb, n, i % 3 === 0 ? [] : ['v']);
    // One host address and one host route per direct route, none twice.
    const hostAddrs = await ipJson<IpLink>(sb.host.hostNs, ['addr', 'show']);
    for (const [i, n] of names.entries()) {
      if (i % 3 === 0) continue;
      const h = hostAddrs.find((l) => l.ifname === `${p}h-${n}`)!;
      assert.deepEqual(h.addr_info.filter((a) => a.family === 'inet').map((a) => a.local), [`10.9.${i}.1`], `one address on ${p}h-${n}`);
    }
  });
});

describe('suspend and resume', () => {
  let sb: Sandbox;
  before(async () => (sb = await createSandbox()));
  after(async () => sb?.cleanup());

  test('a suspended route is left as it is; resume heals it', async () => {
    const file = await sb.manifest('s.yaml', route('sus', 'isolated', '10.8.0.7/24'));
    assert.equal((await sb.qwamos(['apply', '-f', file])).exitCode, 0);
    const ns = `${sb.host.prefix}-sus`;
    assert.match((await sb.qwamos(['suspend', 'rt/sus'])).stdout, /Route\/sus suspended/);
    await tryIn(undefined, ['ip', 'netns', 'del', ns]);
    const r = await sb.qwamos(['reconcile', 'route/sus']);
    assert.match(r.stdout, /Route\/sus Suspended/);
    assert.ok(!(await netnsOf(sb)).includes(ns), 'suspended: not healed');
    assert.match((await sb.qwamos(['get', 'route', 'sus'])).stdout, /Suspended/);
    assert.equal((await sb.qwamos(['resume', 'route/sus'])).exitCode, 0);
    assert.ok((await netnsOf(sb)).includes(ns), 'resumed: healed');
  });
});

describe('drift inside qwamos\' nft table and on the bridge (each test makes what it needs)', () => {
  let sb: Sandbox;
  before(async () => (sb = await createSandbox()));
  after(async () => sb?.cleanup());
  const nftIn = (sb: Sandbox, cmd: string) => tryIn(sb.host.hostNs, ['nft', cmd]);
  const table = (sb: Sandbox) => `${sb.host.prefix}_qwamos`;
  async function applied(sb: Sandbox, name: string, mode: string, address: string): Promise<string> {
    const file = await sb.manifest(`${name}.yaml`, route(name, mode, address));
    const r = await sb.qwamos(['apply', '-f', file]);
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal((await sb.qwamos(['diff', '-f', file])).exitCode, 0, 'in sync after apply');
    return file;
  }
  /** diff sees drift, reconcile heals it and records it (field `field`), diff is clean again. */
  async function healed(sb: Sandbox, name: string, file: string, field: string): Promise<void> {
    const d = await sb.qwamos(['diff', '-f', file]);
    assert.equal(d.exitCode, 1, `drift seen: ${d.stdout}`);
    const r = await sb.qwamos(['reconcile', `route/${name}`]);
    assert.equal(r.exitCode, 0, r.stderr + r.stdout);
    assert.equal((await sb.qwamos(['diff', '-f', file])).exitCode, 0, 'in sync after the heal');
    const store = await Store.open(sb.stateDir);
    const drift = await store.listDrift({ resource: `Route/${name}` });
    assert.ok(drift.some((x) => x.field === field), `drift of ${field} recorded: ${JSON.stringify(drift)}`);
  }
  const chains = async (sb: Sandbox) => {
    const r = await tryIn(sb.host.hostNs, ['nft', '-j', 'list', 'table', 'ip', table(sb)]);
    const items = JSON.parse(r.stdout).nftables as { chain?: { name: string; policy?: string }; rule?: { expr: { match?: { right?: string } }[] } }[];
    return { chains: items.filter((i) => i.chain).map((i) => `${i.chain!.name}:${i.chain!.policy}`).sort(), rules: items.filter((i) => i.rule) };
  };

  test('forward chain policy drop, an extra masquerade, a foreign set: drift, healed', async () => {
    const file = await applied(sb, 'nat1', 'direct', '10.8.1.4/24');
    const guest = await attachFakeGuest(sb.host.prefix, 'nat1', '10.8.1.4/24', '10.8.1.1');
    assert.equal((await ping(guest, sb.host.internetAddr)).exitCode, 0);
    assert.equal((await nftIn(sb, `add chain ip ${table(sb)} forward { policy drop; }`)).exitCode, 0);
    assert.notEqual((await ping(guest, sb.host.internetAddr, 1)).exitCode, 0, 'the edit cut the VM off');
    await healed(sb, 'nat1', file, 'nat');
    assert.deepEqual((await chains(sb)).chains, ['forward:accept', 'postrouting:accept']);
    assert.equal((await ping(guest, sb.host.internetAddr)).exitCode, 0, 'forwarding is back');

    assert.equal((await nftIn(sb, `add rule ip ${table(sb)} postrouting ip saddr 10.8.1.99 masquerade`)).exitCode, 0);
    await healed(sb, 'nat1', file, 'nat');
    assert.deepEqual(await natRules(sb), ['Route/nat1']);

    assert.equal((await nftIn(sb, `add set ip ${table(sb)} allow { type ipv4_addr; }`)).exitCode, 0);
    await healed(sb, 'nat1', file, 'nat');
  });

  test('a changed uplink is drift: the masquerade moves to the new uplink', async () => {
    const file = await applied(sb, 'nat2', 'direct', '10.8.2.4/24');
    const up2 = `${sb.host.prefix}up2`;
    const r = await tryIn(undefined, ['ip', '-n', sb.host.hostNs, '-batch', '-'], `link add ${up2} type veth peer name ${sb.host.prefix}up3\nlink set ${sb.host.prefix}up3 up\nlink set ${up2} up\nroute replace default dev ${up2}\n`);
    assert.equal(r.exitCode, 0, r.stderr);
    await healed(sb, 'nat2', file, 'nat');
    const oifs = (await chains(sb)).rules.map((x) => x.rule!.expr[1]!.match!.right);
    assert.ok(oifs.length > 0 && oifs.every((o) => o === up2), JSON.stringify(oifs));
  });

  test('a foreign port on an isolated Route\'s bridge is drift and is released; the tap is not', async () => {
    const file = await applied(sb, 'iso', 'isolated', '10.8.3.4/24');
    const p = sb.host.prefix;
    const ns = `${p}-iso`;
    await attachFakeGuest(p, 'iso', '10.8.3.4/24', '10.8.3.1'); // plays the tap: legitimate
    assert.equal((await sb.qwamos(['diff', '-f', file])).exitCode, 0, 'the tap is not drift');
    const r = await tryIn(undefined, ['ip', '-n', ns, '-batch', '-'], `link add ${p}x-iso type veth peer name ${p}y-iso\nlink set ${p}x-iso master ${p}b-iso up\n`);
    assert.equal(r.exitCode, 0, r.stderr);
    await healed(sb, 'iso', file, 'bridge.ports');
    const links = await ipJson<IpLink>(ns, ['link', 'show']);
    assert.equal(links.find((l) => l.ifname === `${p}x-iso`)?.master, undefined, 'released');
    assert.equal(links.find((l) => l.ifname === `${p}t-iso`)?.master, `${p}b-iso`, 'the tap stays');
  });
});

describe('garbage collection of lost Routes', () => {
  let host: TestHost;
  before(async () => (host = await createTestHost()));
  after(async () => host?.cleanup());

  test('removes exactly the marked objects of a Route the world lost; a look-alike netns is left alone', async () => {
    const p = host.prefix;
    const controller = new RouteController({ prefix: p, hostNetns: host.hostNs });
    const res = (name: string, address: string): StoredResource<'Route'> => ({
      apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name }, spec: { vm: name, mode: 'direct', address, gateway: address.replace(/\.\d+\/\d+$/, '.1') },
      source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '',
    });
    const keep = res('keep', '10.8.5.2/24');
    const lost = res('lost', '10.8.6.2/24');
    const both = makeWorld([keep, lost]);
    const found = await controller.observe([keep, lost]);
    await controller.apply([keep, lost].flatMap((r) => controller.plan(r, found.get(`Route/${r.metadata.name}`), both).actions), both);
    // A foreign netns with a look-alike name and bridge, no mark.
    const r = await tryIn(undefined, ['sh', '-c', `ip netns add ${p}-foo && ip -n ${p}-foo link add ${p}b-foo type bridge && ip -n ${host.hostNs} link add ${p}h-foo type bridge`]);
    assert.equal(r.exitCode, 0, r.stderr);

    assert.deepEqual(await controller.collectGarbage(both), [], 'nothing lost yet');
    const removed = await controller.collectGarbage(makeWorld([keep]));
    assert.deepEqual(removed.map((l) => l.split(' ').slice(0, 3).join(' ')).sort(), [
      `deleted link ${p}h-lost`,
      `deleted netns ${p}-lost`,
      'removed nft rule',
    ]);
    await until('lost host veth gone', async () => !(await ipJson<{ ifname: string }>(host.hostNs, ['link', 'show'])).some((l) => l.ifname === `${p}h-lost`));
    const netns = await listAllNetns();
    assert.ok(netns.includes(`${p}-keep`) && netns.includes(`${p}-foo`) && !netns.includes(`${p}-lost`));
    assert.ok((await ipJson<{ ifname: string }>(host.hostNs, ['link', 'show'])).some((l) => l.ifname === `${p}h-foo`), 'foreign host link stays');
    const rules = JSON.parse((await tryIn(host.hostNs, ['nft', '-j', 'list', 'table', 'ip', `${p}_qwamos`])).stdout).nftables.filter((i: { rule?: unknown }) => i.rule);
    assert.deepEqual(rules.map((i: { rule: { comment: string } }) => i.rule.comment), ['Route/keep']);
    assert.deepEqual(await controller.collectGarbage(makeWorld([keep])), [], 'idempotent');
    // The last direct Route lost: its table goes too.
    const last = await controller.collectGarbage(makeWorld([]));
    assert.ok(last.includes(`deleted nft table ${p}_qwamos`), JSON.stringify(last));
  });
});

// Routes at scale, inside a private test host:
//  1. converge 200 Routes from empty, against one hand-written script doing the same changes with
//     `ip -batch` (the ratio is the controller's overhead);
//  2. a no-op resync of 200 Routes: processes spawned and time;
//  3. drift heal latency (a netns deleted by hand -> recreated), median and p95, with the daemon's
//     event sources (ip monitor, /run/netns) driving the engine.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { processesSpawned } from '../src/drivers/exec.ts';
import { observeRouteHost } from '../src/controllers/route/observe.ts';
import { planRouteNet, routeMark } from '../src/controllers/route/plan.ts';
import { watchHostNetwork } from '../src/drivers/monitor.ts';
import type { Engine } from '../src/engine/engine.ts';
import { createEngine } from '../src/runtime.ts';
import { Store } from '../src/store/store.ts';
import { createTestHost, listAllNetns, type TestHost } from '../test/helpers/hostns.ts';
import { median, percentile, printTable, time, writeResult } from './lib.ts';

const COUNT = Number(process.env.BENCH_ROUTES ?? 200);
const HEALS = Number(process.env.BENCH_HEALS ?? 15);

const addr = (i: number) => ({ ip: `10.${20 + (i >> 8)}.${i & 255}.2`, gw: `10.${20 + (i >> 8)}.${i & 255}.1` });

function handWrittenScript(host: TestHost, names: string[]): string {
  const p = host.prefix;
  const lines = [`ip -batch - <<'EOF'`, ...names.map((n) => `netns add ${p}-${n}`), 'EOF', `ip -n ${host.hostNs} -batch - <<'EOF'`];
  names.forEach((n, i) => {
    const { ip, gw } = addr(i);
    lines.push(`link add ${p}h-${n} type veth peer name ${p}v-${n} netns ${p}-${n}`, `link set ${p}h-${n} alias ${routeMark(p, `Route/${n}`)}`, `addr add ${gw}/32 dev ${p}h-${n}`, `link set ${p}h-${n} up`, `route add ${ip}/32 dev ${p}h-${n}`);
  });
  lines.push('EOF');
  // The VM netns is the guest's cable: IPv6 off, a bridge, the veth's VM end as its port, no address.
  names.forEach((n) => {
    const ns = `${p}-${n}`;
    lines.push(
      `ip netns exec ${ns} sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6'`,
      `ip -n ${ns} -batch - <<'EOF'`,
      'link set lo up',
      `link add ${p}b-${n} type bridge forward_delay 0`,
      `link set ${p}v-${n} master ${p}b-${n}`,
      `link set ${p}b-${n} alias ${routeMark(p, `Route/${n}`)}`,
      `link set ${p}b-${n} up`,
      `link set ${p}v-${n} up`,
      'EOF',
    );
  });
  lines.push(`ip netns exec ${host.hostNs} sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward && nft -f -' <<'EOF'`, `table ip ${p}_qwamos {`, '  chain postrouting { type nat hook postrouting priority srcnat; policy accept;');
  names.forEach((n, i) => lines.push(`    ip saddr ${addr(i).ip} oifname "${host.uplink}" masquerade comment "Route/${n}"`));
  lines.push('  }', '}', 'EOF');
  return lines.join('\n');
}

async function removeRouteNetns(host: TestHost): Promise<void> {
  const mine = (await listAllNetns()).filter((n) => n.startsWith(`${host.prefix}-`));
  if (mine.length) await execa('ip', ['-batch', '-'], { input: mine.map((n) => `netns del ${n}`).join('\n') });
  await execa('ip', ['netns', 'exec', host.hostNs, 'sh', '-c', `nft delete table ip ${host.prefix}_qwamos 2>/dev/null; true`]);
  // The kernel removes host-side veths shortly after their netns.
  for (let i = 0; i < 100; i++) {
    const { stdout } = await execa('ip', ['-n', host.hostNs, '-o', 'link', 'show']);
    if (!stdout.includes(`${host.prefix}h-`)) break;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function allReady(engine: Engine, keys: string[]): Promise<void> {
  const ok = await engine.settle(keys, { untilConverged: true, timeoutMs: 300_000, since: 0 });
  if (!ok) throw new Error('routes did not converge');
  const bad = keys.filter((k) => engine.last.get(k)?.phase !== 'Ready');
  if (bad.length) throw new Error(`not ready: ${bad.slice(0, 3).join(', ')}: ${engine.last.get(bad[0]!)?.message}`);
}

export async function benchRoutes(): Promise<void> {
  const host = await createTestHost();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-bench-routes-'));
  const env = { ...process.env, QWAMOS_PREFIX: host.prefix, QWAMOS_HOST_NETNS: host.hostNs, QWAMOS_STATE_DIR: dir };
  const names = Array.from({ length: COUNT }, (_, i) => `b${i}`);
  let engine: Engine | undefined;
  try {
    // Baseline: the same host changes, hand-written.
    const script = handWrittenScript(host, names);
    // From a file: with the marks the script is longer than one argument may be.
    const scriptFile = path.join(dir, 'baseline.sh');
    await writeFile(scriptFile, script);
    const baseline = await time(() => execa('bash', ['-e', scriptFile]));
    // The baseline must build exactly the controller's layout: its plan over the result is empty.
    const layout = { prefix: host.prefix, hostNetns: host.hostNs };
    const seen = (await observeRouteHost(layout, 'all')).nets;
    const left = names.flatMap((n, i) =>
      planRouteNet(layout.prefix, `Route/${n}`, { vm: n, mode: 'direct', address: `${addr(i).ip}/24`, gateway: addr(i).gw }, seen.get(n)).map((a) => a.describe),
    );
    if (left.length) throw new Error(`the hand-written baseline differs from the Route layout: ${left.slice(0, 3).join('; ')}`);
    await removeRouteNetns(host);

    const store = await Store.open(dir);
    await store.withLock(async () => {
      await Promise.all(
        names.map((n, i) =>
          store.putResource(
            { apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name: n }, spec: { vm: n, mode: 'direct', address: `${addr(i).ip}/24`, gateway: addr(i).gw } },
            { path: '/bench', digest: 'bench' },
          ),
        ),
      );
    });
    const keys = names.map((n) => `Route/${n}`);
    engine = createEngine(store, { env });
    await engine.sync();
    const converge = await time(async () => {
      engine!.enqueueAll();
      engine!.start();
      await allReady(engine!, keys);
    });

    // A no-op resync: everything in sync, count what it costs.
    const spawnedBefore = processesSpawned();
    const since = Date.now();
    const noop = await time(async () => {
      engine!.enqueueAll();
      await engine!.settle(keys, { untilConverged: true, timeoutMs: 120_000, since });
    });
    const noopProcesses = processesSpawned() - spawnedBefore;
    const applied = keys.filter((k) => engine!.last.get(k)!.applied.length > 0).length;
    if (applied) throw new Error(`no-op resync applied changes to ${applied} routes`);

    // Drift heal latency with the daemon's event sources.
    const monitor = watchHostNetwork({ prefix: host.prefix, hostNetns: host.hostNs }, (vms) => engine!.enqueue(vms === 'all' ? keys : [...vms].map((vm) => `Route/${vm}`)));
    const latencies: number[] = [];
    try {
      for (let i = 0; i < HEALS; i++) {
        const victim = `${host.prefix}-${names[(i * 7) % COUNT]}`;
        await new Promise((r) => setTimeout(r, 150));
        const start = process.hrtime.bigint();
        await execa('ip', ['netns', 'del', victim]);
        for (;;) {
          if ((await listAllNetns()).includes(victim)) break;
          await new Promise((r) => setTimeout(r, 5));
        }
        latencies.push(Number(process.hrtime.bigint() - start) / 1e6);
      }
    } finally {
      monitor.close();
    }

    const rows = [
      { measure: `converge ${COUNT} Routes from empty (controller)`, value: converge.ms, unit: 'ms' },
      { measure: `same changes, hand-written ip -batch script`, value: baseline.ms, unit: 'ms' },
      { measure: 'ratio controller / hand-written', value: converge.ms / baseline.ms, unit: 'x' },
      { measure: `no-op resync of ${COUNT} Routes`, value: noop.ms, unit: 'ms' },
      { measure: 'processes spawned by the no-op resync', value: noopProcesses, unit: '' },
      { measure: `drift heal latency, median of ${HEALS}`, value: median(latencies), unit: 'ms' },
      { measure: 'drift heal latency, p95', value: percentile(latencies, 95), unit: 'ms' },
    ];
    printTable(`Routes (${COUNT}, direct, in a private test host)`, rows);
    console.log(`wrote ${await writeResult('routes', {
      routes: COUNT,
      convergeMs: converge.ms,
      handWrittenMs: baseline.ms,
      ratio: converge.ms / baseline.ms,
      noopResyncMs: noop.ms,
      noopResyncProcesses: noopProcesses,
      healLatencyMs: { median: median(latencies), p95: percentile(latencies, 95), samples: latencies },
    })}`);
  } finally {
    await engine?.stop();
    await host.cleanup();
    await rm(dir, { recursive: true, force: true });
  }
}

// Established flows and a tightened FirewallPolicy, end to end on both backends: the real bin, real
// nft/iptables and conntrack, in a private test host. Two long-lived TCP flows go from a fake guest on a
// direct Route to the test's "internet" netns (ports 99 and 1000); a listener there counts what each
// connection delivers. A sync that still allows both keeps both; tightening to `tcp 80-443` cuts the
// flow to 1000 (its conntrack entry is gone and its next packets do not arrive) and keeps the one to 99
// (a string comparison of ports would judge 99 outside 80-443).
import { spawn, type ChildProcess } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { attachFakeGuest, tryIn } from '../helpers/hostns.ts';
import { Store } from '../../src/store/store.ts';
import { createSandbox, route, until, vm, type Sandbox } from './harness.ts';

const SERVER = `
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(4)
    while True:
        c, _ = s.accept()
        threading.Thread(target=drain, args=(c, port), daemon=True).start()
def drain(c, port):
    while True:
        d = c.recv(4096)
        if not d: return
        print(port, len(d), flush=True)
for p in (99, 1000): threading.Thread(target=serve, args=(p,), daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
`;
// One line every 100 ms on each connection, until killed.
const CLIENT = `
import socket, sys, time
conns = [socket.create_connection((sys.argv[1], p), timeout=5) for p in (99, 1000)]
for c in conns: c.setblocking(False)
print('connected', flush=True)
while True:
    for c in conns:
        try: c.send(b'x\\n')
        except BlockingIOError: pass
    time.sleep(0.1)
`;

function policy(ports: string): string {
  return `apiVersion: qwamos.io/v1alpha1\nkind: FirewallPolicy\nmetadata:\n  name: web\nspec:\n  vms: [dev]\n  defaultAction: drop\n  rules:\n  - action: accept\n    proto: tcp\n    dstPorts: "${ports}"\n`;
}

for (const backend of ['nftables', 'iptables'] as const) {
  describe(`established flows and a tightened policy (${backend})`, () => {
    let sb: Sandbox;
    let server: ChildProcess | undefined;
    let client: ChildProcess | undefined;
    const received = new Map<number, number>([
      [99, 0],
      [1000, 0],
    ]);
    const inet = '203.0.113.1';

    before(async () => {
      sb = await createSandbox();
      sb.env.QWAMOS_FIREWALL_BACKEND = backend;
      sb.env.QWAMOS_UPLINK = sb.host.uplink;
    });
    after(async () => {
      for (const c of [client, server]) if (c?.pid && c.exitCode === null) c.kill('SIGKILL');
      await sb?.cleanup();
    });

    const flowsTo = async (port: number) =>
      (await tryIn(sb.host.hostNs, ['conntrack', '-L', '-s', '10.8.1.2', '-p', 'tcp', '--dport', String(port)])).stdout.split('\n').filter((l) => l.includes('ESTABLISHED')).length;
    /** Bytes each flow delivers during `ms`. */
    async function deliveredDuring(ms: number): Promise<{ 99: number; 1000: number }> {
      const start = new Map(received);
      await new Promise((r) => setTimeout(r, ms));
      return { 99: received.get(99)! - start.get(99)!, 1000: received.get(1000)! - start.get(1000)! };
    }
    async function applyPolicy(ports: string): Promise<void> {
      const [file] = await sb.manifests_({ 'web.yaml': policy(ports) });
      const r = await sb.qwamos(['apply', '--wait', '-f', file!]);
      assert.equal(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
    }

    test('two established flows survive a sync that still allows them', async () => {
      const files = await sb.manifests_({
        'dev.yaml': route('dev', 'direct', '10.8.1.2/24'),
        // A stopped VM: the policy must name an existing VM (its controller leaves the fake guest's port alone once applied).
        'vm-dev.yaml': vm('dev', '  runStrategy: Stopped\n  network:\n    route: dev\n'),
        'web.yaml': policy('1-2000'),
      });
      const r = await sb.qwamos(['apply', '--wait', ...files.flatMap((f) => ['-f', f])]);
      assert.equal(r.exitCode, 0, `${r.stdout}\n${r.stderr}`);
      const guest = await attachFakeGuest(sb.host.prefix, 'dev', '10.8.1.2/24', '10.8.1.1');

      server = spawn('ip', ['netns', 'exec', sb.host.internetNs, 'python3', '-u', '-c', SERVER, inet], { stdio: ['ignore', 'pipe', 'inherit'] });
      let ready = false;
      server.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
        for (const line of chunk.split('\n')) {
          if (line === 'ready') ready = true;
          const m = /^(\d+) (\d+)$/.exec(line);
          if (m) received.set(Number(m[1]), received.get(Number(m[1]))! + Number(m[2]));
        }
      });
      await until('the listener', () => ready, 10_000);
      client = spawn('ip', ['netns', 'exec', guest, 'python3', '-u', '-c', CLIENT, inet], { stdio: ['ignore', 'pipe', 'inherit'] });
      await until('both flows deliver', () => received.get(99)! > 0 && received.get(1000)! > 0, 10_000);
      assert.equal(await flowsTo(99), 1);
      assert.equal(await flowsTo(1000), 1);

      // Still allowed by the new rule (1-1000): both flows stay.
      await applyPolicy('1-1000');
      assert.equal(await flowsTo(99), 1);
      assert.equal(await flowsTo(1000), 1);
      const d = await deliveredDuring(1_000);
      assert.ok(d[99] > 0 && d[1000] > 0, `both flows still deliver: ${JSON.stringify(d)}`);
    });

    test('tightened to tcp 80-443: the flow to 1000 is cut (entry gone, nothing more arrives); the flow to 99 stays', async () => {
      await applyPolicy('80-443');
      assert.equal(await flowsTo(1000), 0, 'the entry of the flow to 1000 is deleted');
      assert.equal(await flowsTo(99), 1, '99 lies inside 80-443 numerically');
      await new Promise((r) => setTimeout(r, 300)); // bytes already in flight
      const d = await deliveredDuring(1_500);
      assert.equal(d[1000], 0, 'nothing more arrives from the cut flow');
      assert.ok(d[99] > 0, `the flow to 99 still delivers: ${JSON.stringify(d)}`);
      const st = await (await Store.open(sb.stateDir)).getStatus('FirewallPolicy', 'web');
      assert.equal(st?.phase, 'Ready');
    });
  });
}

// Leak lab: proves what a VM can reach by counting every packet that arrives in the "internet".
//
//   internet netns <prefix>_inet  203.0.113.1/24 + fd00:99::1/64; table inet leak counts at prerouting
//                                 priority -300 (before conntrack, before anything can drop it), per
//                                 protocol: tcp, udp, icmp, other (raw IP protocols), v6; ND/MLD as noise
//   host netns     <prefix>_host  uplink 203.0.113.2 + fd00:99::2, default routes v4+v6, forwarding v4+v6 ON
//                                 hostIf <prefix>h-leak = 10.77.0.1/32 + fd00:77::1/64, route 10.77.0.2/32
//   VM netns       <prefix>_vm    eth0 10.77.0.2/24 + fd00:77::2/64, default routes via the gateway
//
// probeAll() sends TCP (several ports, DNS over TCP), UDP (DNS to several resolvers, other ports), ICMP,
// raw IP protocols (253 and 254, RFC 3692 experimental, via python3 raw sockets: conntrack tracks them generically, where a bogus GRE or SCTP header would be dropped as invalid and never test anything) and IPv6 (ICMPv6, TCP, UDP, raw) from the VM side.
// Only addresses inside these namespaces are used (TEST-NET and ULA), so nothing can reach a real network.
// standIn() plays Tor on the gateway: a TCP listener that reports each connection's original
// destination (SO_ORIGINAL_DST) and a UDP listener that reports datagrams.
import { spawn, type ChildProcess } from 'node:child_process';
import { createTestHost, tryIn, type TestHost } from './hostns.ts';
import { until } from './poll.ts';

export interface LeakCounters {
  tcp: number;
  udp: number;
  icmp: number;
  other: number;
  v6: number;
  noise: number;
}

export interface StandIn {
  /** Lines seen so far: `tcp SRC ORIGDST:PORT` or `udp SRC LEN`. */
  events: string[];
  stop(): Promise<void>;
}

export interface LeakLab {
  host: TestHost;
  vmNs: string;
  vm: string;
  hostIf: string;
  vmAddress: string;
  gateway: string;
  counters(): Promise<LeakCounters>;
  resetCounters(): Promise<void>;
  /** Send every probe from the VM side; resolves when all have finished or timed out. */
  probeAll(): Promise<void>;
  standIn(transPort: number, dnsPort: number): Promise<StandIn>;
  /** In the host netns: run argv (for iptables, nft, ip), fail on a non-zero exit. */
  inHost(argv: string[]): Promise<string>;
  cleanup(): Promise<void>;
}

export const LEAK_TARGETS = { v4: '203.0.113.1', dns: ['203.0.113.1', '203.0.113.53', '198.51.100.53'], v6: 'fd00:99::1' };

async function must(netns: string, argv: string[], input?: string): Promise<string> {
  const r = await tryIn(netns, argv, input);
  if (r.exitCode !== 0) throw new Error(`${netns}: ${argv.join(' ')}: ${r.stderr.split('\n')[0] || `exit ${r.exitCode}`}`);
  return r.stdout;
}

export const COUNTER_TABLE = (internetIf: string) => `
table inet leak {
  counter n_tcp {}
  counter n_udp {}
  counter n_icmp {}
  counter n_other {}
  counter n_v6 {}
  counter n_noise {}
  chain pre {
    type filter hook prerouting priority -300; policy accept;
    iifname != "${internetIf}" return
    icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query, mld-listener-report, mld2-listener-report } counter name n_noise return
    meta nfproto ipv6 counter name n_v6 return
    meta l4proto tcp counter name n_tcp return
    meta l4proto udp counter name n_udp return
    meta l4proto icmp counter name n_icmp return
    counter name n_other
  }
}
`;

// Every probe is bounded by `timeout`, and all run in parallel; failures are expected and ignored.
export const PROBES = `
t=${LEAK_TARGETS.v4}; v6=${LEAK_TARGETS.v6}
p() { timeout 5 "$@" >/dev/null 2>&1 & }
for port in 80 443 22 9040; do p bash -c "exec 3<>/dev/tcp/$t/$port"; done
for r in ${LEAK_TARGETS.dns.join(' ')}; do
  p bash -c "printf 'dnsprobe' >/dev/udp/$r/53"
  p bash -c "exec 3<>/dev/tcp/$r/53"
done
p bash -c "printf 'udpprobe' >/dev/udp/$t/9999"
p bash -c "printf 'udpprobe' >/dev/udp/$t/123"
p busybox ping -c 2 -W 1 $t
p busybox ping6 -c 2 -W 1 $v6
p bash -c "exec 3<>/dev/tcp/$v6/80"
p bash -c "printf 'udp6probe' >/dev/udp/$v6/53"
timeout 20 python3 -S -c '
import socket
for proto in (253, 254):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto); s.sendto(b"rawprobe" * 4, ("'$t'", 0))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 253); s6.sendto(b"rawprobe" * 4, ("'$v6'", 0))
' >/dev/null 2>&1 &
wait
`;

const STAND_IN = `
import select, socket, struct, sys
gw, tport, dport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((gw, tport)); t.listen(64)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((gw, dport))
print("ready", flush=True)
while True:
    for s in select.select([t, u], [], [])[0]:
        if s is t:
            c, a = t.accept()
            od = c.getsockopt(socket.SOL_IP, 80, 16)
            port, ip = struct.unpack("!2xH4s8x", od)
            print("tcp %s %s:%d" % (a[0], socket.inet_ntoa(ip), port), flush=True)
            c.close()
        else:
            data, a = u.recvfrom(4096)
            print("udp %s %d" % (a[0], len(data)), flush=True)
`;

/** Count every packet arriving in an "internet" netns (see COUNTER_TABLE); returns read and reset. */
export async function installCounters(internetNs: string, internetIf: string): Promise<{ read(): Promise<LeakCounters>; reset(): Promise<void> }> {
  await must(internetNs, ['nft', '-f', '-'], COUNTER_TABLE(internetIf));
  return {
    async read() {
      const doc = JSON.parse(await must(internetNs, ['nft', '-j', 'list', 'counters', 'table', 'inet', 'leak']));
      const out: LeakCounters = { tcp: 0, udp: 0, icmp: 0, other: 0, v6: 0, noise: 0 };
      for (const item of doc.nftables) {
        const name = String(item.counter?.name ?? '').replace(/^n_/, '');
        if (item.counter && name in out) out[name as keyof LeakCounters] = item.counter.packets;
      }
      return out;
    },
    reset: async () => void (await must(internetNs, ['nft', 'reset', 'counters', 'table', 'inet', 'leak'])),
  };
}

/** Send every probe of PROBES from a netns (a fake guest). */
export async function probeFrom(ns: string): Promise<void> {
  await tryIn(ns, ['bash', '-c', PROBES]);
}

export async function createLeakLab(): Promise<LeakLab> {
  const host = await createTestHost();
  const p = host.prefix;
  const vm = 'leak';
  const vmNs = `${p}_vm`;
  const hostIf = `${p}h-${vm}`;
  const vmAddress = '10.77.0.2';
  const gateway = '10.77.0.1';
  const children: ChildProcess[] = [];
  const cleanup = async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null && c.pid) process.kill(c.pid, 'SIGKILL');
    await host.cleanup();
  };
  try {
    await must(host.internetNs, ['sh', '-c', `ip -6 addr add fd00:99::1/64 dev ${host.internetIf} nodad && ip route add 10.77.0.0/24 via ${host.uplinkAddr} && ip -6 route add fd00:77::/64 via fd00:99::2 && nft -f -`], COUNTER_TABLE(host.internetIf));
    const add = await tryIn(undefined, ['ip', 'netns', 'add', vmNs]);
    if (add.exitCode !== 0) throw new Error(`ip netns add ${vmNs}: ${add.stderr.trim()}`);
    await must(host.hostNs, [
      'sh',
      '-c',
      [
        `ip -6 addr add fd00:99::2/64 dev ${host.uplink} nodad`,
        `ip -6 route add default via fd00:99::1 dev ${host.uplink}`,
        `ip link add ${hostIf} type veth peer name eth0 netns ${vmNs}`,
        `ip addr add ${gateway}/32 dev ${hostIf}`,
        `ip -6 addr add fd00:77::1/64 dev ${hostIf} nodad`,
        `ip link set ${hostIf} up`,
        `ip route add ${vmAddress}/32 dev ${hostIf}`,
        'sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1',
      ].join(' && '),
    ]);
    await must(vmNs, [
      'sh',
      '-c',
      [
        'ip link set lo up',
        `ip addr add ${vmAddress}/24 dev eth0`,
        'ip -6 addr add fd00:77::2/64 dev eth0 nodad',
        'ip link set eth0 up',
        `ip route add default via ${gateway} dev eth0`,
        'ip -6 route add default via fd00:77::1 dev eth0',
      ].join(' && '),
    ]);
    // Permanent neighbours on every hop: no probe waits in (or is dropped from) an ARP/ND queue, so
    // the positive control counts every probe, and no ND noise is caused by the probes.
    const mac = async (ns: string, dev: string) => (await must(ns, ['cat', `/sys/class/net/${dev}/address`])).trim();
    const [inetMac, uplinkMac, hostIfMac, vmMac] = await Promise.all([mac(host.internetNs, host.internetIf), mac(host.hostNs, host.uplink), mac(host.hostNs, hostIf), mac(vmNs, 'eth0')]);
    await must(host.hostNs, ['sh', '-c', [
      `ip neigh replace ${host.internetAddr} lladdr ${inetMac} dev ${host.uplink} nud permanent`,
      `ip -6 neigh replace fd00:99::1 lladdr ${inetMac} dev ${host.uplink} nud permanent`,
      `ip neigh replace ${vmAddress} lladdr ${vmMac} dev ${hostIf} nud permanent`,
      `ip -6 neigh replace fd00:77::2 lladdr ${vmMac} dev ${hostIf} nud permanent`,
    ].join(' && ')]);
    await must(vmNs, ['sh', '-c', `ip neigh replace ${gateway} lladdr ${hostIfMac} dev eth0 nud permanent && ip -6 neigh replace fd00:77::1 lladdr ${hostIfMac} dev eth0 nud permanent`]);
    await must(host.internetNs, ['sh', '-c', `ip neigh replace ${host.uplinkAddr} lladdr ${uplinkMac} dev ${host.internetIf} nud permanent && ip -6 neigh replace fd00:99::2 lladdr ${uplinkMac} dev ${host.internetIf} nud permanent`]);
  } catch (err) {
    await cleanup();
    throw err;
  }

  const counters = async (): Promise<LeakCounters> => {
    const doc = JSON.parse(await must(host.internetNs, ['nft', '-j', 'list', 'counters', 'table', 'inet', 'leak']));
    const out: LeakCounters = { tcp: 0, udp: 0, icmp: 0, other: 0, v6: 0, noise: 0 };
    for (const item of doc.nftables) {
      const name = String(item.counter?.name ?? '').replace(/^n_/, '');
      if (item.counter && name in out) out[name as keyof LeakCounters] = item.counter.packets;
    }
    return out;
  };

  return {
    host,
    vmNs,
    vm,
    hostIf,
    vmAddress,
    gateway,
    counters,
    async resetCounters() {
      await must(host.internetNs, ['nft', 'reset', 'counters', 'table', 'inet', 'leak']);
    },
    async probeAll() {
      await tryIn(vmNs, ['bash', '-c', PROBES]);
    },
    async standIn(transPort, dnsPort) {
      const child = spawn('ip', ['netns', 'exec', host.hostNs, 'python3', '-c', STAND_IN, gateway, String(transPort), String(dnsPort)], { stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(child);
      const events: string[] = [];
      let ready = false;
      let buf = '';
      child.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        const lines = buf.split('\n');
        buf = lines.pop()!;
        for (const l of lines) if (l === 'ready') ready = true;
        else if (l) events.push(l);
      });
      await until('the stand-in listeners', () => ready || child.exitCode !== null, 10_000);
      if (!ready) throw new Error('stand-in listener did not start');
      return {
        events,
        async stop() {
          if (child.exitCode === null && child.signalCode === null && child.pid) {
            process.kill(child.pid, 'SIGTERM');
            await until('the stand-in to exit', () => child.exitCode !== null || child.signalCode !== null, 5_000);
          }
        },
      };
    },
    inHost: (argv) => must(host.hostNs, argv),
    cleanup,
  };
}

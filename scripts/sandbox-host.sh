#!/usr/bin/env bash
# A sandbox for the demo: a "host" network namespace that plays the machine's side of qwamos, and an
# "internet" namespace behind it (TEST-NET-3). The machine's own network namespace is never touched.
#   sandbox-host.sh create PREFIX   -> PREFIX_host, PREFIX_inet (203.0.113.1), uplink PREFIXup
#   sandbox-host.sh guest PREFIX VM CIDR GATEWAY
#                                   -> PREFIX_gVM: a fake guest owning the VM's address, cabled by a veth
#                                      (port PREFIXg-VM) to the Route's bridge PREFIXb-VM in netns PREFIX-VM,
#                                      as QEMU's guest will be through its tap
#   sandbox-host.sh destroy PREFIX  -> removes every netns named PREFIX_* or PREFIX-*
set -euo pipefail
cmd=${1:?create|guest|destroy}
p=${2:?prefix}
case "$cmd" in
  create)
    ip netns add "${p}_host"
    ip netns add "${p}_inet"
    ip -n "${p}_host" link set lo up
    ip -n "${p}_inet" link set lo up
    ip -n "${p}_host" link add "${p}up" type veth peer name "${p}in" netns "${p}_inet"
    ip -n "${p}_host" addr add 203.0.113.2/24 dev "${p}up"
    ip -n "${p}_inet" addr add 203.0.113.1/24 dev "${p}in"
    ip -n "${p}_host" link set "${p}up" up
    ip -n "${p}_inet" link set "${p}in" up
    ip -n "${p}_host" route add default via 203.0.113.1
    ;;
  guest)
    vm=${3:?vm} cidr=${4:?cidr} gw=${5:?gateway}
    g="${p}_g${vm}"
    ip netns del "$g" 2>/dev/null || true
    ip netns add "$g"
    ip -n "${p}-${vm}" link add "${p}g-${vm}" type veth peer name eth0 netns "$g"
    ip -n "${p}-${vm}" link set "${p}g-${vm}" master "${p}b-${vm}" up
    ip -n "$g" link set lo up
    ip -n "$g" addr add "$cidr" dev eth0
    ip -n "$g" link set eth0 up
    ip -n "$g" route add default via "$gw" dev eth0
    ;;
  destroy)
    for ns in $(ip netns list | awk '{print $1}'); do
      case "$ns" in "${p}_"*|"${p}-"*) ip netns del "$ns" 2>/dev/null || true ;; esac
    done
    ;;
  *) echo "usage: $0 create|destroy PREFIX | guest PREFIX VM CIDR GATEWAY" >&2; exit 2 ;;
esac

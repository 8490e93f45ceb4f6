#!/usr/bin/env bash
# The cluster demo: three qwamos nodes on this machine (one etcd, three controller daemons each with its
# fencer, each node in its own network namespaces), six tiny VMs placed over them, one node killed whole
# and its VMs coming up elsewhere, with the timings. Run as root on Debian. It uses the cluster tests'
# harness (test/helpers/cluster.ts); everything it creates is removed at the end, also on an error or ^C.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"

runner_pid=""
cleanup() {
  # The runner ends what it started (by PID) and removes its namespaces on SIGTERM.
  if [ -n "$runner_pid" ] && kill -0 "$runner_pid" 2>/dev/null; then
    kill -TERM "$runner_pid"
    wait "$runner_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$repo"
node --import tsx test/helpers/cluster-demo.ts &
runner_pid=$!
wait "$runner_pid"

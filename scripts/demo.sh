#!/usr/bin/env bash
# The qwamos demo: what works today, end to end, on this machine. Run as root on Debian.
# Everything it creates lives in a temporary directory that is removed at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"

work=$(mktemp -d /tmp/qwamos-demo.XXXXXX)
chmod 700 "$work"
# The host side of the demo runs in a sandbox network namespace: the machine's own network is never touched.
prefix="qd$(od -An -N1 -tx1 /dev/urandom | tr -d ' \n')"
daemon_pid=""
cleanup() {
  [ -n "$daemon_pid" ] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  bash "$repo/scripts/sandbox-host.sh" destroy "$prefix"
  cd /
  rm -rf "$work"
}
trap cleanup EXIT
export QWAMOS_STATE_DIR="$work/state"
qwamos() { node "$repo/bin/qwamos.js" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ qwamos %s\n' "$*"; qwamos "$@"; }

step "1. A signing key (ML-DSA-65); the secret stays 0600 and is never printed"
cd "$work"
run keygen demo --out keys
mkdir -p "$QWAMOS_STATE_DIR/trust" && cp keys/demo.pub "$QWAMOS_STATE_DIR/trust/"
ls -l keys

step "2. Sign the example manifests (detached FILE.sig over the exact bytes)"
cp -r "$repo/examples" "$work/manifests"
run sign -k keys/demo.key manifests/*.yaml

step "3. Verify the signatures against the trust store, then validate everything"
run verify manifests/*.yaml
run validate -f manifests

step "4. Someone edits a signed manifest: the route of the Tor VM now goes out directly"
sed -i 's/mode: tor/mode: direct/' manifests/route-browser.yaml
echo "(changed route-browser.yaml after signing)"
run verify manifests/route-browser.yaml || echo "-> exit $?: refused"
run validate -f manifests || echo "-> exit $?: nothing of it is accepted"
cp "$repo/examples/route-browser.yaml" manifests/   # put the signed original back

step "5. A broken manifest is reported with file, line and resource"
cat > broken.yaml <<'YAML'
apiVersion: qwamos.io/v1alpha1
kind: VirtualMachine
metadata:
  name: web
spec:
  cpus: two
  memroy: 512Mi
  boot:
    kernel: guest/../../../etc/shadow
YAML
run validate --allow-unsigned -f broken.yaml || echo "-> exit $?"

step "6. Routes made real: the dev VM's direct route and the malware VM's isolated one"
bash "$repo/scripts/sandbox-host.sh" create "$prefix"
export QWAMOS_PREFIX="$prefix" QWAMOS_HOST_NETNS="${prefix}_host"
echo "(host side: netns ${prefix}_host with an uplink to a fake internet, netns ${prefix}_inet at 203.0.113.1)"
run apply -f manifests/route-dev.yaml -f manifests/route-malware.yaml
run get routes -o wide
echo "\$ ip netns list | grep ${prefix}-"
ip netns list | grep "^${prefix}-" || true
echo "\$ ip -n ${prefix}-dev -br addr    # the VM's netns is its cable: a bridge, the veth's end, no address"
ip -n "${prefix}-dev" -br addr
# No VM runs in this demo: a fake guest on each Route's bridge owns the VM's address, as QEMU's guest will.
bash "$repo/scripts/sandbox-host.sh" guest "$prefix" dev 10.8.0.4/24 10.8.0.1
bash "$repo/scripts/sandbox-host.sh" guest "$prefix" malware 10.8.0.5/24 10.8.0.1
echo "\$ ip netns exec ${prefix}_gdev busybox ping -c1 203.0.113.1    # direct: NATed out of the uplink"
ip netns exec "${prefix}_gdev" busybox ping -c1 -W2 203.0.113.1 | tail -2
echo "\$ ip netns exec ${prefix}_gmalware busybox ping -c1 203.0.113.1    # isolated: no way out"
ip netns exec "${prefix}_gmalware" busybox ping -c1 -W1 203.0.113.1 2>&1 | tail -1 || true
run apply -f manifests/route-browser.yaml || echo "-> exit $?: tor routes are refused until the Tor gateway exists (fail closed)"

step "7. The controller daemon heals drift: someone deletes the dev VM's namespace"
node "$repo/bin/qwamos.js" controller > controller.log 2>&1 &
daemon_pid=$!
for _ in $(seq 50); do grep -q 'controller started' controller.log 2>/dev/null && break; sleep 0.1; done
echo "\$ ip netns del ${prefix}-dev"
ip netns del "${prefix}-dev"
for _ in $(seq 100); do ip netns list | grep -q "^${prefix}-dev" && break; sleep 0.05; done
sleep 0.3
run drift --all
run get route dev
echo "--- controller log"
cat controller.log
kill -TERM "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""

printf '\nDemo done.\n'

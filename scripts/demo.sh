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
  # VMs the demo started and did not delete (on an error): end them by the PIDs in their pidfiles.
  if [ -f "$work/rundirs" ]; then
    while read -r d; do [ -f "$d/qemu.pid" ] && kill -9 "$(cat "$d/qemu.pid")" 2>/dev/null; done < "$work/rundirs"
  fi
  bash "$repo/scripts/sandbox-host.sh" destroy "$prefix"
  cd /
  rm -rf "$work"
}
trap cleanup EXIT
export QWAMOS_STATE_DIR="$work/state"
qwamos() { node "$repo/bin/qwamos.js" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ qwamos %s\n' "$*"; qwamos "$@"; }
# One status field of a VM (pid, runDir, serialLog, ...), read from `qwamos get vm NAME -o json`.
vmfield() {
  qwamos get vm "$1" -o json | node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => process.stdout.write(String(JSON.parse(s).status?.fields?.[process.argv[1]] ?? "")))' "$2"
}

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

step "6. Routes and VMs made real: the dev VM (q35, direct route) and the malware VM (microvm, isolated)"
bash "$repo/scripts/sandbox-host.sh" create "$prefix"
export QWAMOS_PREFIX="$prefix" QWAMOS_HOST_NETNS="${prefix}_host" QWAMOS_IMAGE_ROOT="$work/images"
echo "(host side: netns ${prefix}_host with an uplink to a fake internet, netns ${prefix}_inet at 203.0.113.1)"
echo "(building the tiny guest: Debian's cloud kernel + a busybox initramfs; cached after the first run)"
bash "$repo/scripts/build-guest.sh" /tmp/qwamos-guest-cache
mkdir -p "$QWAMOS_IMAGE_ROOT/guest"
ln -f /tmp/qwamos-guest-cache/vmlinux /tmp/qwamos-guest-cache/initrd.cpio "$QWAMOS_IMAGE_ROOT/guest/" 2>/dev/null \
  || cp /tmp/qwamos-guest-cache/vmlinux /tmp/qwamos-guest-cache/initrd.cpio "$QWAMOS_IMAGE_ROOT/guest/"
run apply --wait -f manifests/cluster.yaml -f manifests/gpu-levels.yaml -f manifests/route-dev.yaml \
  -f manifests/route-malware.yaml -f manifests/vm-dev.yaml -f manifests/vm-malware.yaml
run get vm -o wide
run get routes
for vm in dev malware; do
  vmfield "$vm" runDir >> "$work/rundirs"; echo >> "$work/rundirs"
  serial=$(vmfield "$vm" serialLog)
  for _ in $(seq 300); do grep -q QWAMOS-GUEST-READY "$serial" 2>/dev/null && break; sleep 0.1; done
done
echo "\$ qwamos describe vm/dev | tail -4    # the serial console (QEMU runs unprivileged, its run dir under /run/qwamos)"
node "$repo/bin/qwamos.js" describe vm/dev | grep -A3 'Serial console'
echo "\$ ip netns exec ${prefix}_host busybox wget -qO- http://10.8.0.4/    # the gateway reaches the dev guest"
ip netns exec "${prefix}_host" timeout 5 busybox wget -qO- http://10.8.0.4/ || true
echo "\$ ip netns exec ${prefix}_host busybox ping -c1 10.8.0.5    # the isolated guest is unreachable"
ip netns exec "${prefix}_host" busybox ping -c1 -W1 10.8.0.5 2>&1 | tail -1 || true
run apply -f manifests/route-browser.yaml || echo "-> exit $?: tor routes are refused until the Tor gateway exists (fail closed)"

step "7. The controller daemon heals drift: QEMU killed, a VM's namespace deleted"
node "$repo/bin/qwamos.js" controller > controller.log 2>&1 &
daemon_pid=$!
for _ in $(seq 50); do grep -q 'controller started' controller.log 2>/dev/null && break; sleep 0.1; done
rundir=$(vmfield dev runDir)
pid=$(cat "$rundir/qemu.pid")
echo "\$ kill -9 $pid    # the dev VM's QEMU"
kill -9 "$pid"
for _ in $(seq 100); do new=$(cat "$rundir/qemu.pid" 2>/dev/null || true); [ -n "$new" ] && [ "$new" != "$pid" ] && break; sleep 0.1; done
echo "(dev runs again as pid $(cat "$rundir/qemu.pid"))"
echo "\$ ip netns del ${prefix}-malware"
ip netns del "${prefix}-malware"
sleep 2
run drift --all
run get all -o wide
echo "--- controller log"
cat controller.log
kill -TERM "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
run delete vm/dev vm/malware

printf '\nDemo done.\n'

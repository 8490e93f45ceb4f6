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
  # Tor and i2pd gateways left the same way: by the PIDs in their pid files.
  for f in "$work"/state/gateways/*/tor.pid "$work"/state/gateways/*/i2pd.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
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

step "6. The seeds' routing table made real: browser via Tor, messaging via I2P, dev direct, malware isolated"
bash "$repo/scripts/sandbox-host.sh" create "$prefix"
export QWAMOS_PREFIX="$prefix" QWAMOS_HOST_NETNS="${prefix}_host" QWAMOS_IMAGE_ROOT="$work/images"
echo "(host side: netns ${prefix}_host with an uplink to a fake internet, netns ${prefix}_inet at 203.0.113.1;"
echo " Tor and i2pd run there and cannot bootstrap: nothing leaves these namespaces)"
echo "(building the tiny guest: Debian's cloud kernel + a busybox initramfs; cached after the first run)"
bash "$repo/scripts/build-guest.sh" /tmp/qwamos-guest-cache
mkdir -p "$QWAMOS_IMAGE_ROOT/guest"
ln -f /tmp/qwamos-guest-cache/vmlinux /tmp/qwamos-guest-cache/initrd.cpio "$QWAMOS_IMAGE_ROOT/guest/" 2>/dev/null \
  || cp /tmp/qwamos-guest-cache/vmlinux /tmp/qwamos-guest-cache/initrd.cpio "$QWAMOS_IMAGE_ROOT/guest/"
run apply --wait --timeout 300s -f manifests || echo "-> exit $?"
for vm in browser message dev malware; do vmfield "$vm" runDir >> "$work/rundirs"; echo >> "$work/rundirs"; done
run get all -o wide
for vm in dev malware; do
  serial=$(vmfield "$vm" serialLog)
  for _ in $(seq 300); do grep -q QWAMOS-GUEST-READY "$serial" 2>/dev/null && break; sleep 0.1; done
done
echo "\$ qwamos describe vm/dev | grep -A3 'Serial console'    # QEMU runs unprivileged; its run dir is under /run/qwamos"
node "$repo/bin/qwamos.js" describe vm/dev | grep -A3 'Serial console' || true
echo "\$ ip netns exec ${prefix}_host busybox wget -qO- http://10.8.0.4/    # the gateway reaches the dev guest"
ip netns exec "${prefix}_host" timeout 5 busybox wget -qO- http://10.8.0.4/ || true
echo "\$ ip netns exec ${prefix}_host busybox ping -c1 10.8.0.5    # the isolated guest is unreachable"
ip netns exec "${prefix}_host" busybox ping -c1 -W1 10.8.0.5 2>&1 | tail -1 || true
echo "\$ ip netns exec ${prefix}_host ss -ltn    # Tor (TransPort, DNSPort) and i2pd (HTTP, SOCKS proxies) on the gateway address only"
ip netns exec "${prefix}_host" ss -ltn | grep -E '10\.8\.0\.1|State' || true
echo "\$ ip rule (in ${prefix}_host)    # the routing backstop: a tor/i2p VM stays closed even without the firewall table"
ip -n "${prefix}_host" rule show | grep -E "${prefix}h-(browser|message)" || true
# Probes from a fake guest that borrows a running VM's address (scripts/sandbox-host.sh guest): while it
# probes, the host's neighbour entry for that address points at the fake guest; then both are removed.
probe_as() {
  bash "$repo/scripts/sandbox-host.sh" guest "$prefix" "$1" "$2" 10.8.0.1
  local mac; mac=$(ip -n "${prefix}_g$1" -br link show eth0 | awk '{print $3}')
  ip -n "${prefix}_host" neigh replace "${2%/*}" lladdr "$mac" dev "${prefix}h-$1" nud permanent
}
probe_done() { ip -n "${prefix}_host" neigh del "${2%/*}" dev "${prefix}h-$1" 2>/dev/null || true; ip netns del "${prefix}_g$1"; }
tcp() {
  if ip netns exec "${prefix}_g$1" timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; then echo "   $1 -> tcp $2:$3: connected"; else echo "   $1 -> tcp $2:$3: refused"; fi
}
others() {
  ip netns exec "${prefix}_g$1" sh -c 'echo probe > /dev/udp/203.0.113.1/9999; echo probe > /dev/udp/203.0.113.1/53' 2>/dev/null || true
  if ip netns exec "${prefix}_g$1" busybox ping -c1 -W1 203.0.113.1 >/dev/null 2>&1; then echo "   $1 -> ping 203.0.113.1: answered"; else echo "   $1 -> ping 203.0.113.1: no answer"; fi
}
# What the host netns forwards from a VM's link to the uplink (counted after every filter and route
# decision; the uplink is the only way to the fake internet).
ip netns exec "${prefix}_host" nft -f - <<NFT
table inet ${prefix}_demo {
  chain post { type filter hook postrouting priority 300; policy accept;
    iifname "${prefix}h-browser" oifname "${prefix}up" counter comment "browser"
    iifname "${prefix}h-message" oifname "${prefix}up" counter comment "message"
  }
}
NFT
left() { ip netns exec "${prefix}_host" nft list chain inet "${prefix}_demo" post | grep "comment \"$1\"" | grep -o 'packets [0-9]*' | tr -d '\n'; }
echo "\$ probes from the Tor VM's address (10.8.0.2); nothing listens on 203.0.113.1:9999"
probe_as browser 10.8.0.2/24
tcp browser 203.0.113.1 9999; others browser
echo "   -> the handshake is Tor's TransPort; forwarded from ${prefix}h-browser to the uplink: $(left browser)"
probe_done browser 10.8.0.2/24
echo "\$ probes from the I2P VM's address (10.8.0.3)"
probe_as message 10.8.0.3/24
tcp message 10.8.0.1 4444; tcp message 10.8.0.1 4447; tcp message 10.8.0.1 9040; tcp message 203.0.113.1 9999; others message
echo "   -> only i2pd's HTTP and SOCKS proxies; forwarded from ${prefix}h-message to the uplink: $(left message)"
probe_done message 10.8.0.3/24
ip netns exec "${prefix}_host" nft delete table inet "${prefix}_demo"

echo "(a FirewallPolicy for dev allowing HTTPS and refusing the rest; web servers on 203.0.113.1:443 and :80)"
cat > https-only.yaml <<'YAML'
apiVersion: qwamos.io/v1alpha1
kind: FirewallPolicy
metadata:
  name: dev
spec:
  vms: [dev]
  defaultAction: reject
  rules:
    - action: accept
      proto: tcp
      dstPorts: "443"
      comment: HTTPS
YAML
qwamos sign -k keys/demo.key https-only.yaml > /dev/null
run apply --wait -f https-only.yaml
for port in 443 80; do ip netns exec "${prefix}_inet" timeout 120 python3 -m http.server --bind 203.0.113.1 "$port" > /dev/null 2>&1 & done
for _ in $(seq 100); do [ "$(ip netns exec "${prefix}_inet" ss -ltnH | grep -cE '203\.0\.113\.1:(443|80) ')" = 2 ] && break; sleep 0.1; done
echo "\$ ip netns exec ${prefix}_inet ss -ltn    # both web servers listen"
ip netns exec "${prefix}_inet" ss -ltn | grep -E '203\.0\.113\.1|State' || true
probe_as dev 10.8.0.4/24
tcp dev 203.0.113.1 443; tcp dev 203.0.113.1 80
handle=$(ip netns exec "${prefix}_host" nft -a list chain inet "${prefix}_fw" out_dev | awk '/comment "rule 1"/ {print $NF}')
echo "\$ nft delete rule inet ${prefix}_fw out_dev handle $handle    # someone deletes the HTTPS accept by hand"
ip netns exec "${prefix}_host" nft delete rule inet "${prefix}_fw" out_dev handle "$handle"
tcp dev 203.0.113.1 443
echo "\$ qwamos reconcile firewallpolicy/dev"
qwamos reconcile firewallpolicy/dev > /dev/null || true
echo "\$ qwamos drift --all | grep FirewallPolicy/dev"
qwamos drift --all | grep -E "FirewallPolicy/dev" || true
echo "(that pass also unplugged the fake guest from dev's bridge: a foreign port on a VM's cable is drift; plugged in again)"
probe_done dev 10.8.0.4/24
probe_as dev 10.8.0.4/24
tcp dev 203.0.113.1 443
probe_done dev 10.8.0.4/24
run apply --wait -f manifests/firewall.yaml > /dev/null

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
echo "\$ nft flush chain inet ${prefix}_fw out_dev    # someone empties the dev VM's firewall chain by hand"
ip netns exec "${prefix}_host" nft flush chain inet "${prefix}_fw" out_dev || true
echo "\$ qwamos reconcile    # (the periodic resync would find it too)"
qwamos reconcile > /dev/null || true
sleep 2
run drift --all
run get all -o wide
echo "--- controller log"
cat controller.log
kill -TERM "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
run delete -f manifests

step "8. Git as the source of truth: the daemon follows a repository of signed manifests"
node "$repo/bin/qwamos.js" controller > controller2.log 2>&1 &
daemon_pid=$!
for _ in $(seq 50); do grep -q 'controller started' controller2.log 2>/dev/null && break; sleep 0.1; done
gitc() { git -C "$work/fleet" -c user.name=demo -c user.email=demo@localhost "$@"; }
route_yaml() { printf 'apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata:\n  name: %s\nspec:\n  vm: %s\n  mode: isolated\n' "$1" "$1"; }
mkdir -p "$work/fleet/routes" && git init -q -b main "$work/fleet"
route_yaml web > "$work/fleet/routes/web.yaml"
qwamos sign -k keys/demo.key "$work/fleet/routes/web.yaml" > /dev/null
gitc add -A && gitc commit -q -m "web"
first=$(gitc rev-parse HEAD)
echo "(a local repository $work/fleet with one signed Route, committed)"
cat > gitsource.yaml <<YAML
apiVersion: qwamos.io/v1alpha1
kind: GitSource
metadata:
  name: fleet
spec:
  url: $work/fleet
  ref:
    branch: main
  path: routes
  interval: 1h
YAML
qwamos sign -k keys/demo.key gitsource.yaml > /dev/null
run apply --wait -f gitsource.yaml
for _ in $(seq 100); do qwamos get route web > /dev/null 2>&1 && break; sleep 0.1; done
run get gitsources
route_yaml mail > "$work/fleet/routes/mail.yaml"
qwamos sign -k keys/demo.key "$work/fleet/routes/mail.yaml" > /dev/null
gitc add -A && gitc commit -q -m "mail"
echo "\$ git commit -m mail && qwamos notify gitsource/fleet    # what a post-receive hook does"
start=$(date +%s%N)
qwamos notify gitsource/fleet
for _ in $(seq 500); do [ -e "/run/netns/$prefix-mail" ] && break; sleep 0.02; done
echo "(Route/mail made on the host, netns $prefix-mail, $(( ($(date +%s%N) - start) / 1000000 )) ms after the commit)"
run get routes
echo "\$ sed -i 's/isolated/direct/' routes/web.yaml && git commit    # someone with push access but no key"
sed -i 's/mode: isolated/mode: direct/' "$work/fleet/routes/web.yaml"
gitc commit -q -am "web goes direct"
qwamos notify gitsource/fleet > /dev/null
sleep 2
run get gitsources
echo "\$ qwamos get route web -o yaml | grep 'mode:'    # the last good revision stays in force"
qwamos get route web -o yaml | grep 'mode:' || true
echo "\$ git reset --hard ${first:0:12}    # a force-push back to an older, validly signed commit"
gitc reset -q --hard "$first"
qwamos notify gitsource/fleet > /dev/null
for _ in $(seq 50); do qwamos get gitsources | grep -q 'RollbackRefused\|not a descendant' && break; sleep 0.1; done
run get gitsources
qwamos describe gitsource/fleet | grep -m1 -E 'RollbackRefused +True' || true
echo "(the host keeps the newer revision: netns $prefix-mail $([ -e "/run/netns/$prefix-mail" ] && echo 'still there' || echo 'gone'))"
echo "\$ spec.acceptRevision: ${first:0:12}...    # the operator accepts that commit, once"
printf '  acceptRevision: "%s"\n' "$first" >> gitsource.yaml
qwamos sign -k keys/demo.key gitsource.yaml > /dev/null
qwamos apply -f gitsource.yaml > /dev/null 2>&1
for _ in $(seq 150); do [ -e "/run/netns/$prefix-mail" ] || break; sleep 0.1; done
run get gitsources
echo "(accepted once: the host follows the older revision, netns $prefix-mail $([ -e "/run/netns/$prefix-mail" ] && echo 'still there' || echo 'pruned'))"
kill -TERM "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
run delete gitsource/fleet

printf '\nDemo done.\n'

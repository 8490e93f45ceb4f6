#!/usr/bin/env bash
# The qwamos demo: what works today, end to end, on this machine. Run as root on Debian.
# Everything it creates lives in a temporary directory that is removed at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"

work=$(mktemp -d /tmp/qwamos-demo.XXXXXX)
chmod 700 "$work"
cleanup() { cd /; rm -rf "$work"; }
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

printf '\nDemo done.\n'

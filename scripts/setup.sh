#!/usr/bin/env bash
# Installs what qwamos needs on a Debian machine (as root): host tools from Debian, npm packages.
# Quick when everything is already there, so the demo and the tests can both call it.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(qemu-system-x86 qemu-utils iptables nftables iproute2 tor i2pd busybox-static procps conntrack etcd-server)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU runs as this unprivileged system user (no capabilities, full seccomp sandbox). Without it the
# controller falls back to the fixed uid/gid 64055.
if ! getent passwd qwamos-vm >/dev/null; then
  echo "setup: adding system user qwamos-vm" >&2
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin qwamos-vm
fi

# npm ci only when the lockfile changed since the last install.
stamp=node_modules/.qwamos-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -L node_modules ]; then
  # A work tree sharing another checkout's install: npm ci would empty that one through the link.
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] || echo "setup: node_modules is a link to a shared install older than package-lock.json; not touching it" >&2
elif [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$want" > "$stamp"
fi

# The installed command runs compiled JavaScript: build when the sources changed since the last build.
if [ ! -f dist/.built ] || [ -n "$(find src -newer dist/.built -print -quit)" ]; then
  echo "setup: npm run build" >&2
  npm run -s build >/dev/null
fi

#!/usr/bin/env bash
# Builds the tiny guest that the demo and the tests boot:
#   OUTDIR/vmlinux      uncompressed kernel (ELF, boots via PVH with -kernel, no TCG decompression)
#   OUTDIR/initrd.cpio  uncompressed newc initramfs: busybox-static, virtio modules, /init
# The kernel is Debian's linux-image-cloud-amd64 (its versioned dependency). If the kernel cannot be
# unpacked, OUTDIR/vmlinuz (the bzImage) is written instead, with a warning.
#
# Guest kernel command line read by /init:
#   qwamos.ip=ADDR[/PREFIX]  address of eth0 (no prefix: /32); absent: no network configuration
#   qwamos.gw=ADDR           default route via ADDR (only with qwamos.ip)
#   qwamos.name=NAME         hostname and web page text (default 'guest'; [A-Za-z0-9._-] only)
# The guest serves `qwamos guest NAME` on http://ADDR/ (busybox httpd), answers ping, then prints
#   QWAMOS-GUEST-READY name=NAME ip=ADDR      (ip=none without qwamos.ip)
# once on the console. On a fatal error it prints `QWAMOS-GUEST-ERROR ...` and powers off.
#
# Cached: with OUTDIR/.stamp matching (kernel package + version + hash of this script) nothing is
# done. Downloads are kept in ${QWAMOS_CACHE:-/var/cache/qwamos}/guest-build. Needs root (apt, mknod).
set -Eeuo pipefail

me=build-guest
die() { echo "$me: $*" >&2; exit 1; }
# Safety net for anything not checked explicitly: one line, from the top-level shell only.
trap 'rc=$?; [ "$BASHPID" = "$$" ] && echo "$me: failed (exit $rc) at line $LINENO: $BASH_COMMAND" >&2; exit $rc' ERR

[ $# -eq 1 ] && [ -n "$1" ] || die "usage: scripts/build-guest.sh OUTDIR"
out=$1
meta=linux-image-cloud-amd64
cache=${QWAMOS_CACHE:-/var/cache/qwamos}/guest-build
self=$(readlink -f "${BASH_SOURCE[0]}")
script_hash=$(sha256sum "$self" | cut -d' ' -f1)

# --- fast path: stamp matches and nothing new in the apt lists since it was written ---------------
stamp_ok() { # $1: expected first line, or "" to check only the script hash
  [ -f "$out/.stamp" ] && [ -f "$out/initrd.cpio" ] || return 1
  local line1 kfile
  { IFS= read -r line1 && IFS= read -r kfile; } <"$out/.stamp" || return 1
  kfile=${kfile#kernel=}
  { [ "$kfile" = vmlinux ] || [ "$kfile" = vmlinuz ]; } && [ -f "$out/$kfile" ] || return 1
  if [ -n "$1" ]; then [ "$line1" = "$1" ]; else [[ $line1 == *" script=$script_hash" ]]; fi
}
lists_newer_than_stamp() {
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -type f -newer "$out/.stamp" -print -quit 2>/dev/null)" ]
}
if stamp_ok "" && ! lists_newer_than_stamp; then exit 0; fi

# --- slow path ----------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, mknod)"
mkdir -p "$out" "$cache" 2>/dev/null || die "cannot create $out or $cache"
out=$(cd "$out" && pwd)
exec 9>"$out/.lock"
flock -w 900 9 || die "timed out waiting for another build into $out"

work=$(mktemp -d "$out/.build.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
log=$work/log
: >"$log"
# die, with the last line of the tool log as the reason
die_log() { local last; last=$(grep -v '^\s*$' "$log" | tail -n1 || true); die "$1${last:+: $last}"; }

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update() {
  [ "$apt_updated" = 1 ] && return 0
  apt-get update -qq >>"$log" 2>&1 || die_log "apt-get update failed"
  apt_updated=1
}
# need_cmd CMD PACKAGE: install PACKAGE if CMD is missing
need_cmd() {
  command -v "$1" >/dev/null 2>&1 && return 0
  install_pkg "$2"
  command -v "$1" >/dev/null 2>&1 || die "installed $2 but '$1' is still missing"
}
install_pkg() {
  apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1 && return 0
  apt_update
  apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1 || die_log "apt-get install $* failed"
}

# Resolve the versioned kernel package and its .deb (name, size, sha256) without downloading.
resolve_kernel() {
  kpkg=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ <>]*\)$/\1/p' | head -n1 || true)
  if [ -z "$kpkg" ]; then
    apt_update
    kpkg=$(apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ <>]*\)$/\1/p' | head -n1 || true)
  fi
  [ -n "$kpkg" ] || return 1
  local line
  # 'URI' FILE SIZE SHA256:HEX (printed only if FILE is not in the current directory: use an empty one)
  line=$(cd "$work" && apt-get download --print-uris "$kpkg" 2>>"$log" | head -n1) || true
  read -r _ deb_file deb_size deb_hash <<<"$line" || true
  [ -n "${deb_file:-}" ] && [[ ${deb_hash:-} == SHA256:* ]] || return 1
  deb_hash=${deb_hash#SHA256:}
  kver=${deb_file#"${kpkg}"_}
  kver=${kver%_*.deb}
  kver=${kver//%3a/:}
}
kpkg="" kver="" deb_file="" deb_size="" deb_hash=""
if ! resolve_kernel; then
  # Offline and apt knows nothing: keep a previous build, or use the newest cached package.
  if stamp_ok ""; then touch "$out/.stamp"; exit 0; fi
  deb_file=$(cd "$cache" && ls -1 linux-image-*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -n1 || true)
  [ -n "$deb_file" ] || die_log "cannot resolve $meta with apt-cache depends / apt-get download --print-uris, and no cached kernel package in $cache"
  kpkg=${deb_file%%_*}
  kver=${deb_file#"${kpkg}"_}; kver=${kver%_*.deb}; kver=${kver//%3a/:}
  echo "$me: warning: apt cannot resolve $meta; using cached $deb_file" >&2
fi
want_line1="package=$kpkg version=$kver script=$script_hash"
if stamp_ok "$want_line1"; then touch "$out/.stamp"; exit 0; fi

# --- download (cached, verified) ------------------------------------------------------------------
deb=$cache/$deb_file
if [ -n "$deb_hash" ]; then
  if [ ! -f "$deb" ] || [ "$(stat -c %s "$deb")" != "$deb_size" ] || [ "$(sha256sum "$deb" | cut -d' ' -f1)" != "$deb_hash" ]; then
    dl=$(mktemp -d "$cache/.dl.XXXXXX")
    if ! (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" >>"$log" 2>&1); then
      rm -rf "$dl"; die_log "apt-get download $kpkg failed"
    fi
    [ -f "$dl/$deb_file" ] || { rm -rf "$dl"; die "apt-get download $kpkg did not produce $deb_file"; }
    [ "$(sha256sum "$dl/$deb_file" | cut -d' ' -f1)" = "$deb_hash" ] || { rm -rf "$dl"; die "checksum mismatch for downloaded $deb_file"; }
    mv -f "$dl/$deb_file" "$deb"
    rm -rf "$dl"
  fi
fi
dpkg-deb --info "$deb" >/dev/null 2>>"$log" || die_log "$deb is not a valid package"

# --- extract the kernel and candidate modules -----------------------------------------------------
pkgroot=$work/pkg
mkdir -p "$pkgroot"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$pkgroot" --wildcards \
  './boot/vmlinuz-*' './lib/modules/*/modules.builtin' \
  '*/virtio*.ko*' '*/failover.ko*' '*/net_failover.ko*' 2>>"$log" || die_log "cannot extract $deb_file"
vmlinuz=$(ls -1 "$pkgroot"/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
[ -n "$vmlinuz" ] || die "no boot/vmlinuz-* in $deb_file"
krel=${vmlinuz##*/vmlinuz-}
moddir=$pkgroot/lib/modules/$krel
[ -d "$moddir" ] || die "no lib/modules/$krel in $deb_file"

# --- kernel: bzImage -> vmlinux ------------------------------------------------------------------
# The bzImage header gives the payload: offset (setup_sects+1)*512 + payload_offset (0x248), length
# at 0x24c; its last 4 bytes are the uncompressed size. Cloud kernels use LZ4 (magic 02 21 4c 18).
le_u() { od -An -t "u$2" -j "$1" -N "$2" "$vmlinuz" | tr -d ' \n'; }
unpack_vmlinux() { # $1: destination
  local setup_sects payload_off payload_len off magic size_expected
  [ "$(od -An -c -j $((0x202)) -N 4 "$vmlinuz" | tr -d ' \n')" = HdrS ] || { echo "not a bzImage" >>"$log"; return 1; }
  setup_sects=$(le_u $((0x1f1)) 1); [ "$setup_sects" = 0 ] && setup_sects=4
  payload_off=$(le_u $((0x248)) 4)
  payload_len=$(le_u $((0x24c)) 4)
  off=$(( (setup_sects + 1) * 512 + payload_off ))
  magic=$(od -An -tx1 -j "$off" -N 4 "$vmlinuz" | tr -d ' \n')
  if [ "$magic" != 02214c18 ]; then
    # header disagrees: search for the magic instead
    off=$(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" 2>/dev/null | head -n1 | cut -d: -f1 || true)
    [ -n "$off" ] || { echo "no LZ4 payload (magic 02 21 4c 18) in the bzImage" >>"$log"; return 1; }
    payload_len=$(( $(stat -c %s "$vmlinuz") - off ))
  fi
  need_cmd unlz4 lz4
  # without the trailing size word unlz4 exits 0; with it, it complains but the output is the same
  dd if="$vmlinuz" iflag=skip_bytes,count_bytes skip="$off" count=$((payload_len - 4)) bs=1M status=none \
    | unlz4 -dc >"$1" 2>>"$log" || true
  [ "$(od -An -c -N 4 "$1" | tr -d ' \n')" = 177ELF ] || { echo "unlz4 output is not an ELF file" >>"$log"; return 1; }
  size_expected=$(od -An -tu4 -j $((off + payload_len - 4)) -N 4 "$vmlinuz" | tr -d ' \n')
  [ "$(stat -c %s "$1")" = "$size_expected" ] || { echo "vmlinux size $(stat -c %s "$1") != $size_expected" >>"$log"; return 1; }
  if command -v readelf >/dev/null 2>&1; then # PVH entry point: Xen note XEN_ELFNOTE_PHYS32_ENTRY (0x12)
    readelf -n "$1" 2>/dev/null | grep -q 'Unknown note type: (0x00000012)' || { echo "vmlinux has no PVH entry note" >>"$log"; return 1; }
  fi
}
if unpack_vmlinux "$work/vmlinux"; then
  kfile=vmlinux
else
  reason=$(tail -n1 "$log" || true)
  rm -f "$work/vmlinux"
  cp "$vmlinuz" "$work/vmlinuz"
  kfile=vmlinuz
  echo "$me: warning: cannot unpack the kernel to vmlinux (${reason:-unknown}); wrote the bzImage as $out/vmlinuz instead (slower boot under TCG)" >&2
fi

# --- modules: virtio-net on microvm (virtio_mmio) and q35 (virtio_pci), with dependencies ---------
declare -A modfile=() builtin=() visited=()
while IFS= read -r f; do
  n=${f##*/}; n=${n%%.ko*}; n=${n//-/_}
  modfile[$n]=$f
done < <(find "$moddir" -name '*.ko*' -type f)
if [ -f "$moddir/modules.builtin" ]; then
  while IFS= read -r f; do n=${f##*/}; n=${n%%.ko*}; builtin[${n//-/_}]=1; done <"$moddir/modules.builtin"
fi
mod_deps() { # prints the module's depends= list (from its .modinfo section), one per line
  local f=${modfile[$1]}
  case "$f" in
    *.ko) cat "$f" ;;
    *.ko.xz) need_cmd xz xz-utils; xz -dc "$f" ;;
    *.ko.zst) need_cmd zstd zstd; zstd -qdc "$f" ;;
    *.ko.gz) gzip -dc "$f" ;;
    *) die "unknown module compression: $f" ;;
  esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1 | tr ',' '\n' | sed '/^$/d' | tr '-' '_'
}
order=()
visit() { # depth-first, dependencies first
  local m=$1 d
  [ -n "${visited[$m]:-}" ] && return 0
  visited[$m]=1
  [ -n "${builtin[$m]:-}" ] && return 0
  if [ -z "${modfile[$m]:-}" ]; then
    # not among the extracted candidates: fetch it from the package by name
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$pkgroot" --wildcards "*/$m.ko*" 2>>"$log" \
      || die "module $m (needed for virtio-net) is neither built in nor in $deb_file"
    modfile[$m]=$(find "$moddir" -name "$m.ko*" -type f | head -n1)
    [ -n "${modfile[$m]}" ] || die "module $m not found after extraction"
  fi
  for d in $(mod_deps "$m"); do visit "$d"; done
  order+=("$m")
}
for m in virtio_mmio virtio_pci virtio_net; do visit "$m"; done

# --- initramfs ------------------------------------------------------------------------------------
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
  install_pkg busybox-static
fi
bb=/bin/busybox
[ -x "$bb" ] && [ "$(dpkg -S "$bb" 2>/dev/null | cut -d: -f1)" = busybox-static ] || die "$bb is not from busybox-static"
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc,www,lib/modules,usr}
ln -s bin "$root/sbin"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
cp "$bb" "$root/bin/busybox"
for a in $("$bb" --list); do
  case "$a" in busybox|linuxrc) continue ;; esac
  ln -s busybox "$root/bin/$a"
done
mknod -m 600 "$root/dev/console" c 5 1 || die "mknod /dev/console failed"
mknod -m 666 "$root/dev/null" c 1 3 || die "mknod /dev/null failed"
chmod 1777 "$root/tmp"
: >"$root/etc/modules"
for m in "${order[@]}"; do
  f=${modfile[$m]}
  case "$f" in
    *.ko) cp "$f" "$root/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$root/lib/modules/$m.ko" ;;
  esac
  echo "$m" >>"$root/etc/modules"
done
echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"
echo "$krel" >"$root/etc/qwamos-kernel"

cat >"$root/init" <<'INIT'
#!/bin/sh
# qwamos tiny guest /init (generated by scripts/build-guest.sh)
export PATH=/bin HOME=/
mount -t proc proc /proc
mount -t sysfs sysfs /sys
if ! mount -t devtmpfs devtmpfs /dev 2>/dev/null; then
  mount -t tmpfs -o mode=0755 tmpfs /dev
  mknod -m 600 /dev/console c 5 1
  mknod -m 666 /dev/null c 1 3
fi
exec </dev/console >/dev/console 2>&1

fail() {
  echo "QWAMOS-GUEST-ERROR $*"
  sync
  poweroff -f
  exit 1
}

while read -r m; do
  [ -n "$m" ] && { insmod "/lib/modules/$m.ko" || echo "qwamos-init: insmod $m failed"; }
done </etc/modules

# qwamos.ip=ADDR[/PREFIX] qwamos.gw=ADDR qwamos.name=NAME
ip_cidr="" gw="" name=guest
read -r cmdline </proc/cmdline
set -f
for arg in $cmdline; do
  case "$arg" in
    qwamos.ip=*) ip_cidr=${arg#qwamos.ip=} ;;
    qwamos.gw=*) gw=${arg#qwamos.gw=} ;;
    qwamos.name=*) name=${arg#qwamos.name=} ;;
  esac
done
set +f
case "$name" in
  '' | *[!A-Za-z0-9._-]*) echo "qwamos-init: invalid qwamos.name, using 'guest'"; name=guest ;;
esac
hostname "$name"

ip link set lo up
addr=none
if [ -n "$ip_cidr" ]; then
  case "$ip_cidr" in */*) ;; *) ip_cidr=$ip_cidr/32 ;; esac
  addr=${ip_cidr%/*}
  i=0
  while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ "$i" -le 200 ] || fail "no eth0 (is there a virtio-net device?)"
    sleep 0.05
  done
  ip addr add "$ip_cidr" dev eth0 || fail "cannot set address $ip_cidr on eth0"
  ip link set eth0 up || fail "cannot bring eth0 up"
  if [ -n "$gw" ]; then
    # a gateway outside the prefix is reached through a device route
    ip route add default via "$gw" dev eth0 2>/dev/null \
      || { ip route add "$gw" dev eth0 && ip route add default via "$gw" dev eth0; } \
      || fail "cannot add default route via $gw"
  fi
fi

echo "qwamos guest $name" >/www/index.html
httpd -p 80 -h /www || fail "cannot start httpd"

echo "QWAMOS-GUEST-READY name=$name ip=$addr"

# PID 1 stays; the shell reaps orphans while it waits.
trap '' HUP INT TERM
while :; do sleep 3600; done
INIT
chmod 0755 "$root/init"

(cd "$root" && find . | LC_ALL=C sort | "$bb" cpio -o -H newc -R 0:0 >"$work/initrd.cpio" 2>>"$log") \
  || die_log "cpio failed"

# --- install into OUTDIR (stamp last) -------------------------------------------------------------
rm -f "$out/.stamp"
chmod 0644 "$work/$kfile" "$work/initrd.cpio"
mv -f "$work/$kfile" "$out/$kfile"
mv -f "$work/initrd.cpio" "$out/initrd.cpio"
if [ "$kfile" = vmlinux ]; then rm -f "$out/vmlinuz"; else rm -f "$out/vmlinux"; fi
printf '%s\nkernel=%s\nrelease=%s\nmodules=%s\n' "$want_line1" "$kfile" "$krel" "${order[*]}" >"$work/stamp"
mv -f "$work/stamp" "$out/.stamp"

mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "$me: kernel $krel ($kpkg $kver): $kfile $(mib "$out/$kfile"), initrd.cpio $(mib "$out/initrd.cpio") (${#order[@]} modules) -> $out"

#!/usr/bin/env bash
# Prints the host's TSC frequency in kHz (an integer), for a guest's `tsc_early_khz=` on
# `-machine microvm` (without it about half the TCG boots hang at PIT calibration).
# Sources, best first: $QWAMOS_TSC_KHZ, the kernel's refined calibration in dmesg, the kernel's
# detected frequency in dmesg, /proc/cpuinfo 'cpu MHz'. Exit 1 with one line on stderr if none works.
set -euo pipefail

# "2596.138" (MHz) -> "2596138" (kHz); empty output if it does not look like a frequency.
mhz_to_khz() {
  local mhz=$1 int frac
  [[ $mhz =~ ^([0-9]+)(\.([0-9]*))?$ ]] || return 0
  int=${BASH_REMATCH[1]}
  frac=${BASH_REMATCH[3]}000
  frac=${frac:0:3}
  local khz=$((10#$int * 1000 + 10#$frac))
  [ "$khz" -gt 0 ] && echo "$khz"
  return 0
}

if [ -n "${QWAMOS_TSC_KHZ:-}" ]; then
  [[ $QWAMOS_TSC_KHZ =~ ^[1-9][0-9]*$ ]] || { echo "host-tsc-khz: QWAMOS_TSC_KHZ is not a positive integer: $QWAMOS_TSC_KHZ" >&2; exit 1; }
  echo "$QWAMOS_TSC_KHZ"
  exit 0
fi

log=$(dmesg 2>/dev/null || true)
khz=""
if [ -n "$log" ]; then
  # e.g. "tsc: Refined TSC clocksource calibration: 2299.998 MHz"
  mhz=$(sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' <<<"$log" | tail -n1)
  [ -n "$mhz" ] && khz=$(mhz_to_khz "$mhz")
  if [ -z "$khz" ]; then
    # e.g. "tsc: Detected 2596.138 MHz processor"
    mhz=$(sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' <<<"$log" | tail -n1)
    [ -n "$mhz" ] && khz=$(mhz_to_khz "$mhz")
  fi
fi
if [ -z "$khz" ] && [ -r /proc/cpuinfo ]; then
  mhz=$(sed -n 's/^cpu MHz[[:space:]]*:[[:space:]]*\([0-9.]*\).*/\1/p' /proc/cpuinfo | head -n1)
  [ -n "$mhz" ] && khz=$(mhz_to_khz "$mhz")
fi
if [ -z "$khz" ]; then
  echo "host-tsc-khz: cannot determine the TSC frequency (no 'tsc:' line in dmesg, no 'cpu MHz' in /proc/cpuinfo); set QWAMOS_TSC_KHZ" >&2
  exit 1
fi
echo "$khz"

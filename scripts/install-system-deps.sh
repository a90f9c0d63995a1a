#!/usr/bin/env bash
# Install the Debian packages the test suite's real components need (FRR, Ceph, QEMU, ...).
# Each part of the project lists its packages in scripts/deps/apt-<part>.txt; only missing ones are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t wanted < <(cat scripts/deps/apt-*.txt 2>/dev/null | sed 's/#.*//' | awk 'NF' | sort -u)
[ "${#wanted[@]}" -eq 0 ] && exit 0
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system-deps: all ${#wanted[@]} Debian packages present"
  exit 0
fi
echo "system-deps: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# An old or absent package list makes installs fail: refresh it once if a package is unknown.
if ! apt-cache show "${missing[0]}" >/dev/null 2>&1 || [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
  $SUDO apt-get update -qq
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" || { $SUDO apt-get update -qq && \
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; }

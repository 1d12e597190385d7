#!/usr/bin/env bash
# Installs every Debian package zinf's build, tests and benchmarks need.
# Idempotent: installs only what is missing, and skips apt entirely when
# nothing is. Needs root (or sudo) on Debian 12.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  liburing-dev libaio-dev libtbb-dev libisal-dev nlohmann-json3-dev
  libtorch-dev libopenblas0-pthread
  libgloo-dev libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev
  fio
  gnuplot-nox   # tools/zinf-report
  clang libclang-rt-14-dev   # the fuzz preset (clang-14's libFuzzer runtime is in the second)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"

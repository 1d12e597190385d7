#!/usr/bin/env bash
# Installs what is missing, builds, and runs the test suite with ctest.
#   scripts/test.sh            release build (every layer), then the ASan + UBSan
#                              build of the core layers (no LibTorch)
#   scripts/test.sh PRESET     one preset only: release, debug or asan
set -euo pipefail
cd "$(dirname "$0")/.."
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(release asan)
for preset in "${presets[@]}"; do
  echo "== test.sh: $preset =="
  scripts/build.sh "$preset"
  ctest --preset "$preset"
done

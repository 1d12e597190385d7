#!/usr/bin/env bash
# Installs what is missing, builds, and runs the test suite with ctest.
#   scripts/test.sh            release build (every layer), then the ASan + UBSan
#                              build of the core layers (no LibTorch), then
#                              the fuzz targets, 30 s each (scripts/fuzz.sh)
#   scripts/test.sh PRESET     one preset only: release, debug, asan or fuzz
set -euo pipefail
cd "$(dirname "$0")/.."
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(release asan fuzz)
for preset in "${presets[@]}"; do
  echo "== test.sh: $preset =="
  if [ "$preset" = fuzz ]; then
    scripts/fuzz.sh 30
    continue
  fi
  scripts/build.sh "$preset"
  ctest --preset "$preset"
done

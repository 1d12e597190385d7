#!/usr/bin/env bash
# Installs what is missing, builds, and runs the test suite with ctest.
#   scripts/test.sh            release build (every layer), then the ASan + UBSan
#                              build of the core layers (no LibTorch), then the
#                              ThreadSanitizer build of swap, cpu_adam and
#                              offload (the engine included), then the fuzz
#                              targets, 30 s each (scripts/fuzz.sh)
#   scripts/test.sh PRESET...  those presets only: release, debug, asan, tsan, fuzz
set -euo pipefail
cd "$(dirname "$0")/.."
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(release asan tsan fuzz)
for preset in "${presets[@]}"; do
  echo "== test.sh: $preset =="
  if [ "$preset" = fuzz ]; then
    scripts/fuzz.sh 30
    continue
  fi
  scripts/build.sh "$preset"
  ctest --preset "$preset"
done

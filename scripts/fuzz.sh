#!/usr/bin/env bash
# Builds the fuzz preset (clang, libFuzzer + ASan + UBSan) and runs each
# fuzz target for SECONDS (default 30) over a scratch copy of its corpus
# (build/fuzz/runs/<target>/corpus: the committed tests/fuzz/corpus/ is not
# modified). Exits non-zero on the first target that finds a crash, a leak,
# a timeout or an out-of-memory, printing the reproducer's path.
#   scripts/fuzz.sh [SECONDS]
#   FUZZ_TARGETS="config_fuzz" scripts/fuzz.sh 600    # one target only
# Reproduce: build/fuzz/tests/fuzz/<target> <reproducer>
# (ZINF_FUZZ_VERBOSE=1 says what the input gave).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
targets=(${FUZZ_TARGETS:-config_fuzz checkpoint_fuzz})
scripts/install-deps.sh
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$(nproc)"
ctest --preset fuzz   # every committed input once

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
for target in "${targets[@]}"; do
  name="${target%_fuzz}"
  run="build/fuzz/runs/$target"
  rm -rf "$run"
  mkdir -p "$run/corpus" "$run/artifacts" "$run/tmp"
  cp tests/fuzz/corpus/"$name"/* "$run/corpus/"
  echo "== fuzz.sh: $target for $seconds s (log: $run/log) =="
  status=0
  # -malloc_limit_mb: an input of a few KiB that makes the code allocate
  # more is a bug (the checkpoint loader promises no allocation beyond the
  # manifest's size); -timeout: one input taking 10 s is a hang.
  TMPDIR="$PWD/$run/tmp" "build/fuzz/tests/fuzz/$target" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
    -dict="tests/fuzz/$name.dict" -artifact_prefix="$run/artifacts/" -print_final_stats=1 \
    "$run/corpus" >"$run/log" 2>&1 || status=$?
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$run/log" || true
  echo "corpus: $(ls "$run/corpus" | wc -l) inputs, $(cat "$run"/corpus/* | wc -c) bytes"
  reproducers=$(ls "$run"/artifacts/ 2>/dev/null | sed "s|^|$run/artifacts/|")
  if [ "$status" -ne 0 ] || [ -n "$reproducers" ]; then
    tail -n 60 "$run/log" >&2
    echo "fuzz.sh: $target failed (exit $status); reproducer: ${reproducers:-none written}" >&2
    echo "fuzz.sh: rerun it with build/fuzz/tests/fuzz/$target ${reproducers%%$'\n'*}" >&2
    exit 1
  fi
done

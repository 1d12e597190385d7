#!/usr/bin/env bash
# The engine's figures for bench/RESULTS.md, every reference measured in the
# same run, in ROUNDS alternating rounds (default 3) on DIR (default: a
# directory under the current one, removed after; never a tmpfs):
#   - train_gpt with its defaults: a GPT 4x the emulated device, parameters
#     and optimizer state on NVMe (configs/zero3_nvme.json);
#   - swapbench on the same directory with that config's aio block size and
#     queue depth and checksums on, in the step's own file state: reads of a
#     file the size of the parameters' swap, read 4 times over (the step
#     reads it twice: forward, backward), and reads and writes at once over
#     twice the optimizer state, 2 loops (the step re-reads what the last
#     one wrote): the references for the parameter reads and the
#     optimizer's traffic;
#   - train_gpt with cpu offload (configs/zero3_cpu.json, unlimited device)
#     and train_gpt --reference torch on the same model.
# Then scripts/engine-report.py prints the medians and quartiles.
#   ROUNDS=5 STEPS=12 scripts/engine-bench.sh [DIR]  (BUILD=build/gpu for another build)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD:-$root/build/release}"
rounds="${ROUNDS:-3}"
steps="${STEPS:-10}"
work="$(mktemp -d "${1:-$PWD}/zinf-engine-bench-XXXXXX")"
trap 'rm -rf "$work/zinf-nvme" "$work"/swapbench-*' EXIT
out="${OUT:-$work/results}"
mkdir -p "$out"
cd "$work"
export ZINF_LOG="${ZINF_LOG:-warn}"
train="$build/examples/train_gpt"
swap="$build/tools/swapbench/swapbench"
echo "engine-bench: $rounds rounds of $steps steps in $work (results in $out)"
for r in $(seq 1 "$rounds"); do
  "$train" --steps "$steps" --print-every "$steps" --json "$out/nvme-$r.json" >/dev/null
  rm -rf zinf-nvme
  read -r params optim < <(python3 -c 'import json,sys; n=json.load(open(sys.argv[1]))["nvme"]
m=1<<20; up=lambda b: (b+m-1)//m*m; print(up(n["params"]), 2*up(n["optimizer"]//2))' "$out/nvme-$r.json")
  "$swap" --path . --size "$params" --loops 4 --block-size 1M --queue-depth 8 --backend io_uring \
    --checksum --op read --json >"$out/swap-read-$r.json"
  "$swap" --path . --size "$optim" --loops 2 --block-size 1M --queue-depth 8 --backend io_uring \
    --checksum --op mixed --json >"$out/swap-mixed-$r.json"
  # Alternate which of the two goes first.
  if [ $((r % 2)) -eq 1 ]; then order="cpu torch"; else order="torch cpu"; fi
  for mode in $order; do
    if [ "$mode" = cpu ]; then
      "$train" --steps "$steps" --print-every "$steps" --config "$root/configs/zero3_cpu.json" \
        --device-budget 0 --json "$out/cpu-$r.json" >/dev/null
    else
      "$train" --steps "$steps" --print-every "$steps" --config "$root/configs/zero3_cpu.json" \
        --reference torch --json "$out/torch-$r.json" >/dev/null
    fi
  done
  echo "engine-bench: round $r done"
done
python3 "$root/scripts/engine-report.py" "$out"

#!/usr/bin/env bash
# zinf-plan against what train_gpt measures, for bench/RESULTS.md: three
# configurations of the default GPT (63M parameters) on the emulated device,
#   cpu offload:             configs/zero3_cpu.json (params + optimizer in host memory)
#   nvme optimizer:          configs/offload_nvme.json (stage 2, params on the device)
#   nvme params + optimizer: configs/zero3_nvme.json
# in ROUNDS rounds (default 3); in each, each configuration is planned with
# swapbench rates measured on the same directory just before (io_uring,
# 1 MiB, queue depth 8, checksums: the configs' aio block), then trained for
# STEPS steps (default 8; the first two are left out of the step's median).
# Prints per configuration the predicted and measured device peak, host and
# NVMe bytes, and step time per round, with their ratios.
#   ROUNDS=3 scripts/plan-check.sh [DIR]   (a directory on the disk; BUILD=build/gpu for another build)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD:-$root/build/release}"
steps="${STEPS:-8}"
work="$(mktemp -d "${1:-$PWD}/zinf-plan-check-XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
export ZINF_LOG="${ZINF_LOG:-warn}"
rounds="${ROUNDS:-3}"
swap="$build/tools/swapbench/swapbench"
common=(--path "$work" --size 512M --block-size 1M --queue-depth 8 --backend io_uring --checksum --json)
# The nvme-optimizer configuration keeps the parameters on the device: a
# budget that holds them and a micro-batch of 64's activations. The disk's
# speed swings between runs, so each round measures swapbench again right
# before each configuration it plans.
for round in $(seq 1 "$rounds"); do
  for c in zero3_cpu:auto offload_nvme:2G zero3_nvme:auto; do
    name="${c%%:*}" budget="${c##*:}" tag="$name-$round"
    "$swap" "${common[@]}" --op both > "sb-$tag.json"
    "$swap" "${common[@]}" --op mixed > "sbm-$tag.json"
    sync  # the swap files' dirty pages written before anything is timed
    "$build/tools/zinf-plan/zinf-plan" --config "$root/configs/$name.json" --device cpu \
      --device-budget "$budget" \
      --swapbench "sb-$tag.json" --swapbench "sbm-$tag.json" --json > "plan-$tag.json"
    "$build/examples/train_gpt" --config "$root/configs/$name.json" --device cpu \
      --device-budget "$budget" --steps "$steps" --json "run-$tag.json" > "run-$tag.log"
  done
done
ROUNDS="$rounds" python3 - <<'PY'
import json, os, statistics
rounds = int(os.environ["ROUNDS"])
mib = lambda b: f"{b / 2**20:.1f} MiB"
print("| configuration | device peak: plan / run | host bytes: plan / run | NVMe bytes: plan / run | step: plan / run, per round (median of steps 3..) | median | bottleneck (plan) |")
print("|---|---|---|---|---|---|---|")
for name in ["zero3_cpu", "offload_nvme", "zero3_nvme"]:
    ratios, cells = [], []
    for r in range(1, rounds + 1):
        p = json.load(open(f"plan-{name}-{r}.json"))
        run = json.load(open(f"run-{name}-{r}.json"))
        wall = statistics.median(s["wall_s"] for s in run["steps"][2:])
        ratios.append(p["step_s"] / wall)
        cells.append(f"{p['step_s']:.3f} / {wall:.3f} = {ratios[-1]:.2f}")
    host, nvme = sum(run["host"].values()), sum(run["nvme"].values())
    peak = run["peak_device_bytes"]
    print(f"| {name} | {mib(p['device_peak_bytes'])} / {mib(peak)} = {p['device_peak_bytes'] / peak:.3f} "
          f"| {p['host_bytes']} / {host}: {'equal' if p['host_bytes'] == host else 'DIFFER'} "
          f"| {p['nvme_bytes']} / {nvme}: {'equal' if p['nvme_bytes'] == nvme else 'DIFFER'} "
          f"| {'; '.join(cells)} | {statistics.median(ratios):.2f} | {p['bottleneck']}{'' if p['fits'] else ', DOES NOT FIT'} |")
PY

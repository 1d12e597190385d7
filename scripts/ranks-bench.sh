#!/usr/bin/env bash
# Two ranks against one on the same total batch, for bench/RESULTS.md: in
# ROUNDS alternating rounds (default 3), train_gpt on one rank with
# micro-batch 2B and under `zinf-launch -n 2` with micro-batch B each (the
# same samples), for ZeRO stage 2 (cpu optimizer; with overlap_comm, and
# without: the backward waits for each reduction) and stage 3 (cpu
# parameters and optimizer), on the emulated device. Prints, per setup, the
# medians (and quartiles) of the step time of each, their ratio, the share
# of the two-rank step with a collective in flight, and fwd+bwd against its
# compute (how much of the gradient reduction the backward hides).
#   ROUNDS=5 STEPS=8 B=4 scripts/ranks-bench.sh   (BUILD=... for another build)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD:-$root/build/release}"
rounds="${ROUNDS:-3}" steps="${STEPS:-8}" batch="${B:-4}"
model=(--layers "${LAYERS:-8}" --hidden "${HIDDEN:-512}" --heads 8 --seq 64 --device cpu
       --device-budget 1G --steps "$steps" --print-every "$steps")
work="$(mktemp -d "${TMPDIR:-/tmp}/zinf-ranks-bench-XXXXXX")"
trap 'rm -rf "$work"' EXIT
export ZINF_LOG="${ZINF_LOG:-warn}"
# The configs without their batch keys: --batch gives the micro-batch.
for c in offload_cpu zero3_cpu; do
  python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c.pop("train_micro_batch_size_per_gpu",None); c.pop("train_batch_size",None); json.dump(c,open(sys.argv[2],"w"))' \
    "$root/configs/$c.json" "$work/$c.json"
done
python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["zero_optimization"]["overlap_comm"]=False; json.dump(c,open(sys.argv[2],"w"))' \
  "$work/offload_cpu.json" "$work/offload_cpu_serial.json"
setups=(offload_cpu offload_cpu_serial zero3_cpu)
echo "ranks-bench: $rounds rounds of $steps steps, micro-batch $((2 * batch)) on 1 rank, $batch on each of 2"
for r in $(seq 1 "$rounds"); do
  for c in "${setups[@]}"; do
    "$build/examples/train_gpt" --config "$work/$c.json" "${model[@]}" --batch $((2 * batch)) \
      --json "$work/$c-one-$r.json" >/dev/null
    "$build/tools/zinf-launch/zinf-launch" -n 2 "$build/examples/train_gpt" --config "$work/$c.json" \
      "${model[@]}" --batch "$batch" --json "$work/$c-two-$r.json" >/dev/null
  done
done
python3 - "$work" "$rounds" <<'EOF'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def q(xs):
    xs = sorted(xs)
    if len(xs) < 2: return f"{xs[0]:.3f}"
    a, m, b = statistics.quantiles(xs, n=4, method="inclusive")
    return f"{m:.3f} ({a:.3f}-{b:.3f})"
def steps(path):
    s = json.load(open(path))["steps"][1:]  # the first records the trace
    mean = lambda k: sum(x[k] for x in s) / len(s)
    return (mean("wall_s"), mean("comm_s"), mean("fwd_bwd_s"), mean("compute_s"), json.load(open(path)),
            mean("stall_s"), mean("reduce_waits"))
for c, label in (("offload_cpu", "stage 2, optimizer cpu"),
                 ("offload_cpu_serial", "stage 2, optimizer cpu, overlap_comm false"),
                 ("zero3_cpu", "stage 3, params + optimizer cpu")):
    one = [steps(f"{work}/{c}-one-{r}.json") for r in range(1, rounds + 1)]
    two = [steps(f"{work}/{c}-two-{r}.json") for r in range(1, rounds + 1)]
    losses = [(o[4]["steps"][-1]["loss"], t[4]["steps"][-1]["loss"]) for o, t in zip(one, two)]
    print(f"{label}: {two[0][4]['model_params']} parameters")
    print(f"  step, 1 rank x {one[0][4]['batch']}: {q([o[0] for o in one])} s; 2 ranks x {two[0][4]['batch']}: {q([t[0] for t in two])} s")
    print(f"  2 ranks / 1 rank: {q([t[0] / o[0] for o, t in zip(one, two)])}")
    print(f"  2 ranks: collectives in flight {q([t[1] / t[0] for t in two])} of the step, "
          f"{two[0][4]['steps'][-1]['comm_bytes'] / 2**20:.1f} MiB a step; fwd+bwd / compute {q([t[2] / t[3] for t in two])}; "
          f"stall {q([t[5] for t in two])} s a step, {two[0][6]:.0f} reductions waited for")
    print(f"  last loss, 1 rank vs 2 ranks: " + ", ".join(f"{a:.4f}/{b:.4f}" for a, b in losses))
EOF

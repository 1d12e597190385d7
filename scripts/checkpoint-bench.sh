#!/usr/bin/env bash
# Engine checkpoint save and load throughput for bench/RESULTS.md, against
# bounds swapbench measures on the same directory in the same round, in
# ROUNDS rounds (default 3) on DIR (default: a directory under the current
# one, removed after; never a tmpfs). The default GPT (train_gpt) with
#   nvme: configs/zero3_nvme.json, the optimizer state on NVMe: a save reads
#         each byte from the swap and writes it to the checkpoint, a load
#         reads it from the checkpoint and writes it to the swap. Bound:
#         swapbench --op copy over twice the state (half read from one
#         file while half is written to another, each on its own queue of
#         8), per state byte (a load also writes the parameters back:
#         those bytes count too); also printed against swapbench --op mixed
#         (the same in one file and queue, which this host-cached disk
#         serves faster than two files: not the save's pattern) and
#         "serial", a swapbench read then a write of each byte;
#   cpu:  configs/zero3_cpu.json, the state in host memory: a save only
#         writes (bound: swapbench --op write over the state), a load only
#         reads (bound: swapbench --op read).
# Each save is the checkpoint of step 3 of a 3-step run, each load the
# --resume of a 4-step run from it. swapbench runs io_uring, 1 MiB blocks,
# CRC32C on (as a save checksums), at the requests a save or load keeps in
# flight: 8 on the state file (its chunks and depth), and for nvme as many
# again on the swap (aio.queue_depth 8), so copy and mixed run at queue depth 16.
#   ROUNDS=5 scripts/checkpoint-bench.sh [DIR]  (BUILD=build/gpu for another build)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD:-$root/build/release}"
rounds="${ROUNDS:-3}"
work="$(mktemp -d "${1:-$PWD}/zinf-checkpoint-bench-XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
export ZINF_LOG="${ZINF_LOG:-warn}"
train="$build/examples/train_gpt"
swap="$build/tools/swapbench/swapbench"
sb() { mkdir -p sb && "$swap" --path sb --backend io_uring --block-size 1M --checksum --json "$@"; }
# The state files' bytes in a checkpoint, and the parameters' (what a load
# writes back).
sizes() {
  python3 -c 'import json, math, sys
m = json.load(open(sys.argv[1]))
size = {"Half": 2, "BFloat16": 2, "Float": 4}
print(sum(f["bytes"] for f in m["files"].values()),
      sum(math.prod(p["shape"]) * size[p["dtype"]] for p in m["params"]))' "$1"
}
save() {  # mode, round; leaves `budget` set for the mode's load
  budget=()
  [ "$1" = cpu ] && budget=(--device-budget 0)
  rm -rf ck zinf-nvme
  "$train" --config "$root/configs/zero3_$1.json" "${budget[@]}" --steps 3 --print-every 3 \
    --checkpoint-dir ck --checkpoint-every 3 --json "$1-save-$2.json" >/dev/null
}
echo "checkpoint-bench: $rounds rounds in $work"
# A save first, unreported, for the size of the state the bounds move.
save nvme 0
read -r bytes _ < <(sizes ck/global_step3/manifest.json)
rm -rf ck zinf-nvme
for r in $(seq 1 "$rounds"); do
  # The disk's speed moves within a round: each bound is measured before and
  # after the saves and loads, and the faster of the two taken.
  for op in write read; do
    sb --size "$bytes" --queue-depth 8 --op "$op" >"sb-$op-before-$r.json"; rm -rf sb
  done
  sb --size "$((2 * bytes))" --queue-depth 16 --op copy >"sb-copy-before-$r.json"
  rm -rf sb
  for mode in nvme cpu; do
    save "$mode" "$r"  # sets budget
    "$train" --config "$root/configs/zero3_$mode.json" "${budget[@]}" --steps 4 \
      --checkpoint-dir ck --resume --json "$mode-load-$r.json" >/dev/null
    sizes ck/global_step3/manifest.json >"$mode-bytes-$r"
  done
  rm -rf ck zinf-nvme
  for op in write read; do sb --size "$bytes" --queue-depth 8 --op "$op" >"sb-$op-$r.json"; rm -rf sb; done
  for op in copy mixed; do sb --size "$((2 * bytes))" --queue-depth 16 --op "$op" >"sb-$op-$r.json"; rm -rf sb; done
  echo "checkpoint-bench: round $r done"
done
python3 - "$rounds" <<'EOF'
import json, os, statistics, sys
rounds = int(sys.argv[1])
def gbps(op, r):
    rate = json.load(open(f"sb-{op}-{r}.json"))["results"][0]["gbps"]
    if os.path.exists(f"sb-{op}-before-{r}.json"):
        rate = max(rate, gbps(f"{op}-before", r))
    return rate
rows = {}
for r in range(1, rounds + 1):
    for mode in ("nvme", "cpu"):
        n, param_bytes = map(int, open(f"{mode}-bytes-{r}").read().split())
        save_s = json.load(open(f"{mode}-save-{r}.json"))["steps"][-1]["checkpoint_s"]
        load_s = json.load(open(f"{mode}-load-{r}.json"))["load_checkpoint_s"]
        # Bounds per state byte. With the state on NVMe every state byte is
        # read once and written once (copy and mixed move two bytes per
        # state byte), and a load also writes the parameters back to their
        # NVMe home: the bound is the bytes the save or load moves at
        # swapbench copy's rate. "serial" is a read, then a write, of each
        # byte.
        serial = 1 / (1 / gbps("read", r) + 1 / gbps("write", r))
        for what, s in (("save", save_s), ("load", load_s)):
            rate = n / s / 1e9
            if mode == "nvme":
                moved = 2 * n + (param_bytes if what == "load" else 0)
                bound = gbps("copy", r) * n / moved
                mixed = gbps("mixed", r) * n / moved
            else:
                bound = gbps("write" if what == "save" else "read", r)
                mixed = bound
            rows.setdefault((mode, what), []).append(
                (rate, bound, rate / bound, s, rate / mixed, rate / serial))
print(f"state file {n / 2**20:.1f} MiB; medians over {rounds} rounds (GB/s = 1e9 B/s)")
print(f"{'':12} {'seconds':>8} {'GB/s':>7} {'bound GB/s':>11} {'ratio':>6} {'/mixed':>7} {'/serial':>8}  ratios of each round")
for (mode, what), v in rows.items():
    med = lambda i: statistics.median(x[i] for x in v)
    others = f"{med(4):7.2f} {med(5):8.2f}" if mode == "nvme" else f"{'':7} {'':8}"
    print(f"{mode + ' ' + what:12} {med(3):8.2f} {med(0):7.2f} {med(1):11.2f} {med(2):6.2f} {others}  "
          + " ".join(f"{x[2]:.2f}" for x in v))
for op in ("write", "read", "copy", "mixed"):
    print(f"swapbench {op}: " + " ".join(f"{gbps(op, r):.2f}" for r in range(1, rounds + 1)) + " GB/s")
EOF

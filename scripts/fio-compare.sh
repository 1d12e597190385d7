#!/usr/bin/env bash
# swapbench against fio on the same directory, same block size, queue depth,
# size and O_DIRECT, alternating runs in one session; prints the median GB/s
# of each, the ratio of the medians, and the median and quartiles of the
# per-round ratios. With checksums on, fio also runs checking its own
# crc32c (`fio_crc`): what checksumming every block costs fio on this disk.
# Usage: scripts/fio-compare.sh [DIR] [ROUNDS] (default: a temporary
# directory under the current one, 3 rounds). CONFIGS="BS QD
# SIZE;..." picks the configurations (default: the two of bench/RESULTS.md);
# SETTLE=S the pause before each run (default 2 seconds); LOOPS=N has
# each tool write and read its file N times per run (default 1: longer runs
# average over more of the disk's second-to-second swings); RAW=FILE
# appends every run's figures to FILE ("bs qd size crc round tool
# write_GBps read_GBps"), for pooling rounds across runs. CALIBRATE=1
# runs fio in swapbench's place (the crc column then means nothing): the
# spread of its ratios is what this disk alone does to a ratio of 1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
swapbench="${SWAPBENCH:-$root/build/release/tools/swapbench/swapbench}"
rounds="${2:-3}"
IFS=';' read -r -a configs <<<"${CONFIGS:-1M 32 2G;128K 8 1G}"
command -v fio >/dev/null || { echo "fio-compare: fio is not installed (apt-get install fio)" >&2; exit 2; }
[ "${CALIBRATE:-0}" = 1 ] || [ -x "$swapbench" ] || { echo "fio-compare: no swapbench at $swapbench (build it, or set SWAPBENCH)" >&2; exit 2; }
runs="$(mktemp)"  # this run's figures, one line per tool and round, as RAW
trap 'rm -rf "$runs" ${made_dir:+"$dir"}' EXIT
if [ -n "${1:-}" ]; then dir="$1"; else dir="$(mktemp -d "$(pwd)/fio-compare-XXXXXX")"; made_dir=1; fi

# fio with what swapbench uses too: io_uring, O_DIRECT, registered files and
# fixed buffers, batched submission, one job at a time. Like swapbench's
# --op both, it writes the file and then reads it back (two jobs, the second
# waiting for the first), so both tools read right after writing. With
# `crc`, the write puts a crc32c header in every block and the read checks it.
# Prints "write_GBps read_GBps".
fio_gbps() {  # bs qd size [crc]
  local verify=() write_only=()
  [ "${4:-}" = crc ] && verify=(--verify=crc32c --verify_state_save=0) && write_only=(--do_verify=0)
  local cmd=(fio --output-format=json --directory="$dir" --filename=cmp.dat --ioengine=io_uring
             --direct=1 --bs="$1" --iodepth="$2" --size="$3" --numjobs=1 --fixedbufs=1
             --registerfiles=1 --hipri=0 --iodepth_batch_submit="$2" --iodepth_batch_complete_min=1
             --loops="${LOOPS:-1}" "${verify[@]}" --name=write --rw=write "${write_only[@]}" --name=read --stonewall --rw=read)
  echo "  ${cmd[*]}" >&2
  "${cmd[@]}" | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs']; print(j[0]['write']['bw_bytes']/1e9, j[1]['read']['bw_bytes']/1e9)"
  rm -f "$dir/cmp.dat"
}

swapbench_gbps() {  # bs qd size checksum
  if [ "${CALIBRATE:-0}" = 1 ]; then fio_gbps "$1" "$2" "$3"; return; fi
  local cmd=("$swapbench" --path "$dir" --backend io_uring --op both --block-size "$1"
             --queue-depth "$2" --size "$3" --loops "${LOOPS:-1}" --json)
  [ "$4" = on ] && cmd+=(--checksum)
  echo "  ${cmd[*]}" >&2
  ZINF_LOG=warn "${cmd[@]}" |
    python3 -c "import json,sys; r={x['op']: x['gbps'] for x in json.load(sys.stdin)['results']}; print(r['write'], r['read'])"
}

# A disk's speed drifts over minutes, so each round runs the tools back to
# back, taking turns at going first, and its ratio compares neighbours.
# Before each run the disk settles (sync, then SETTLE seconds, default 2):
# the file the previous run deleted is still being discarded and written
# back, and whichever tool starts first would pay for it.
# Printed at the end (scripts/fio-pool.py): the medians, their ratio, the
# median, quartiles and bootstrap interval of the per-round ratios, and the
# range of each tool's rounds (the spread says how far a ratio can be
# trusted on this disk); with checksums, fio_crc's median, the median
# per-round ratio of swapbench to it and what checksumming costs fio.
for cfg in "${configs[@]}"; do
  read -r bs qd size <<<"$cfg"
  for crc in off on; do
    tools=(fio zinf)
    [ "$crc" = on ] && tools+=(fiocrc)
    for round in $(seq "$rounds"); do
      first=$((round % ${#tools[@]}))
      for tool in "${tools[@]:first}" "${tools[@]:0:first}"; do
        sync; sleep "${SETTLE:-2}"
        case "$tool" in
          fio) read -r gw gr < <(fio_gbps "$bs" "$qd" "$size") ;;
          fiocrc) read -r gw gr < <(fio_gbps "$bs" "$qd" "$size" crc) ;;
          zinf) read -r gw gr < <(swapbench_gbps "$bs" "$qd" "$size" "$crc") ;;
        esac
        echo "    $tool write $gw read $gr GB/s" >&2
        echo "$bs $qd $size $crc $round $tool $gw $gr" | tee -a "$runs" ${RAW:+"$RAW"} >/dev/null
      done
    done
  done
done
"$root/scripts/fio-pool.py" "$runs"

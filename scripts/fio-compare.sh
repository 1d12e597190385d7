#!/usr/bin/env bash
# swapbench against fio on the same directory, same block size, queue depth,
# size and O_DIRECT, alternating runs in one session; prints the median GB/s
# of each and the ratio. Usage: scripts/fio-compare.sh [DIR] [ROUNDS]
# (default: a temporary directory under the current one, 3 rounds).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
swapbench="${SWAPBENCH:-$root/build/release/tools/swapbench/swapbench}"
rounds="${2:-3}"
command -v fio >/dev/null || { echo "fio-compare: fio is not installed (apt-get install fio)" >&2; exit 2; }
[ -x "$swapbench" ] || { echo "fio-compare: no swapbench at $swapbench (build it, or set SWAPBENCH)" >&2; exit 2; }
if [ -n "${1:-}" ]; then dir="$1"; else dir="$(mktemp -d "$(pwd)/fio-compare-XXXXXX")"; trap 'rm -rf "$dir"' EXIT; fi

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
range() { sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.2f-%.2f", lo, hi}'; }

# fio with what swapbench uses too: io_uring, O_DIRECT, registered files and
# fixed buffers, batched submission, one job at a time. Like swapbench's
# --op both, it writes the file and then reads it back (two jobs, the second
# waiting for the first), so both tools read right after writing.
# Prints "write_GBps read_GBps".
fio_gbps() {  # bs qd size
  local cmd=(fio --output-format=json --directory="$dir" --filename=cmp.dat --ioengine=io_uring
             --direct=1 --bs="$1" --iodepth="$2" --size="$3" --numjobs=1 --fixedbufs=1
             --registerfiles=1 --hipri=0 --iodepth_batch_submit="$2" --iodepth_batch_complete_min=1
             --name=write --rw=write --name=read --stonewall --rw=read)
  echo "  ${cmd[*]}" >&2
  "${cmd[@]}" | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs']; print(j[0]['write']['bw_bytes']/1e9, j[1]['read']['bw_bytes']/1e9)"
  rm -f "$dir/cmp.dat"
}

swapbench_gbps() {  # bs qd size checksum
  local cmd=("$swapbench" --path "$dir" --backend io_uring --op both --block-size "$1"
             --queue-depth "$2" --size "$3" --json)
  [ "$4" = on ] && cmd+=(--checksum)
  echo "  ${cmd[*]}" >&2
  ZINF_LOG=warn "${cmd[@]}" |
    python3 -c "import json,sys; r={x['op']: x['gbps'] for x in json.load(sys.stdin)['results']}; print(r['write'], r['read'])"
}

# Medians, then the range of each tool's rounds (the spread says how far a
# ratio can be trusted on this disk).
printf "%-6s %-6s %-4s %-5s %-4s %10s %10s %7s %11s %11s\n" op bs qd size crc fio_GB/s zinf_GB/s ratio \
  fio_range zinf_range
for cfg in "1M 32 2G" "128K 8 1G"; do
  read -r bs qd size <<<"$cfg"
  for crc in off on; do
    fw=(); fr=(); zw=(); zr=()
    for _ in $(seq "$rounds"); do
      read -r w r < <(fio_gbps "$bs" "$qd" "$size"); fw+=("$w"); fr+=("$r")
      read -r w r < <(swapbench_gbps "$bs" "$qd" "$size" "$crc"); zw+=("$w"); zr+=("$r")
    done
    for op in write read; do
      if [ "$op" = write ]; then f=("${fw[@]}"); z=("${zw[@]}"); else f=("${fr[@]}"); z=("${zr[@]}"); fi
      fm=$(printf "%s\n" "${f[@]}" | median); zm=$(printf "%s\n" "${z[@]}" | median)
      printf "%-6s %-6s %-4s %-5s %-4s %10.3f %10.3f %7.2f %11s %11s\n" "$op" "$bs" "$qd" "$size" "$crc" \
        "$fm" "$zm" "$(awk -v z="$zm" -v f="$fm" 'BEGIN {print z / f}')" "$(printf "%s\n" "${f[@]}" | range)" \
        "$(printf "%s\n" "${z[@]}" | range)"
    done
  done
done

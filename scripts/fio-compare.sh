#!/usr/bin/env bash
# swapbench against fio on the same directory, same block size, queue depth,
# size and O_DIRECT, alternating runs in one session; prints the median GB/s
# of each and the ratio. Usage: scripts/fio-compare.sh [DIR] [ROUNDS]
# (default: a temporary directory under the current one, 3 rounds).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
swapbench="${SWAPBENCH:-$root/build/release/tools/swapbench/swapbench}"
rounds="${2:-3}"
if [ -n "${1:-}" ]; then dir="$1"; else dir="$(mktemp -d "$(pwd)/fio-compare-XXXXXX")"; trap 'rm -rf "$dir"' EXIT; fi
command -v fio >/dev/null || { echo "fio-compare: fio is not installed (apt-get install fio)" >&2; exit 2; }

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# fio with what swapbench uses too: io_uring, O_DIRECT, registered files and
# fixed buffers, batched submission, one job.
fio_gbps() {  # op bs qd size
  local cmd=(fio --name=cmp --directory="$dir" --ioengine=io_uring --direct=1 --rw="$1" --bs="$2"
             --iodepth="$3" --size="$4" --numjobs=1 --fixedbufs=1 --registerfiles=1 --hipri=0
             --iodepth_batch_submit="$3" --iodepth_batch_complete_min=1 --output-format=json)
  echo "  fio: ${cmd[*]}" >&2
  "${cmd[@]}" | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(j['$1']['bw_bytes']/1e9)"
}

swapbench_gbps() {  # op bs qd size checksum
  local flags=(--path "$dir" --backend io_uring --op both --block-size "$2" --queue-depth "$3" --size "$4" --json)
  [ "$5" = on ] && flags+=(--checksum)
  echo "  swapbench: $swapbench ${flags[*]}" >&2
  ZINF_LOG=warn "$swapbench" "${flags[@]}" |
    python3 -c "import json,sys; print([r['gbps'] for r in json.load(sys.stdin)['results'] if r['op']=='$1'][0])"
}

printf "%-6s %-6s %-4s %-5s %-4s %10s %10s %7s\n" op bs qd size crc fio_GB/s zinf_GB/s ratio
for cfg in "1M 32 2G" "128K 8 1G"; do
  read -r bs qd size <<<"$cfg"
  for crc in off on; do
    for op in write read; do
      f=(); z=()
      for _ in $(seq "$rounds"); do
        f+=("$(fio_gbps "$op" "$bs" "$qd" "$size")")
        z+=("$(swapbench_gbps "$op" "$bs" "$qd" "$size" "$crc")")
        rm -f "$dir"/cmp.*
      done
      fm=$(printf "%s\n" "${f[@]}" | median); zm=$(printf "%s\n" "${z[@]}" | median)
      printf "%-6s %-6s %-4s %-5s %-4s %10.3f %10.3f %7.2f\n" "$op" "$bs" "$qd" "$size" "$crc" "$fm" "$zm" \
        "$(echo "$zm / $fm" | bc -l)"
    done
  done
done

#!/usr/bin/env bash
# Installs what is missing, builds Release, and runs the main job with built-in
# defaults, in temporary directories under the current one (removed after):
#   1. examples/finetune_drop_in: a character model trained with
#      zinf::OffloadAdamW, its optimizer state on NVMe;
#   2. swapbench's short default run: NVMe throughput through zinf's I/O stack.
set -euo pipefail
here="$(pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/build.sh" release
cd "$here"
echo "== finetune_drop_in --optimizer zinf-nvme =="
"$root/build/release/examples/finetune_drop_in" --optimizer zinf-nvme --steps 100
echo "== swapbench =="
"$root/build/release/tools/swapbench/swapbench"

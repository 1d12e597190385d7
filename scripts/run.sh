#!/usr/bin/env bash
# Installs what is missing, builds Release, and runs the main job with built-in
# defaults, in a temporary directory under the current one (removed after):
#   1. examples/train_gpt: a GPT whose parameters are 4x the emulated device's
#      memory (a GPU, where there is one), trained with zinf's ZeRO-3 engine,
#      parameters and optimizer state on NVMe (./zinf-nvme in that
#      directory); it prints the loss curve and where the time went, and
#      writes ./train_gpt.json (kept);
#   2. examples/finetune_drop_in: zinf::OffloadAdamW in place of
#      torch::optim::AdamW, its state on NVMe (shorter);
#   3. swapbench's short default run: NVMe throughput through zinf's I/O stack.
# Arguments are passed to train_gpt (train_gpt --help).
set -euo pipefail
here="$(pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/build.sh" release
work="$(mktemp -d "$here/zinf-run-XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "== train_gpt (ZeRO-3, parameters and optimizer state on NVMe under $work) =="
"$root/build/release/examples/train_gpt" --steps 12 --json "$here/train_gpt.json" "$@"
echo "== finetune_drop_in --optimizer zinf-nvme =="
"$root/build/release/examples/finetune_drop_in" --optimizer zinf-nvme --steps 40
echo "== swapbench =="
"$root/build/release/tools/swapbench/swapbench"

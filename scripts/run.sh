#!/usr/bin/env bash
# Installs what is missing, builds Release, and runs the main job with built-in
# defaults: swapbench's short default run on a temporary directory under the
# current one (removed afterwards).
set -euo pipefail
here="$(pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/build.sh" release
cd "$here"
"$root/build/release/tools/swapbench/swapbench" "$@"

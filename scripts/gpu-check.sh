#!/usr/bin/env bash
# Builds zinf and runs its tests on a machine with a GPU (the device tool's
# H100/H200), which has nvcc, CMake and PyTorch with CUDA but no package
# access.
#
#   scripts/gpu-check.sh --fetch   here, with apt: download the Debian
#                                  packages the build needs into .deps/
#   scripts/gpu-check.sh           there (carry .deps): unpack them into
#                                  .deps/root (never into /), build against
#                                  PyTorch's CUDA LibTorch, run ctest
set -euo pipefail
cd "$(dirname "$0")/.."
deps="$PWD/.deps"
packages=(liburing2 liburing-dev libaio1 libaio-dev libtbb12 libtbbmalloc2 libtbbbind-2-5 libtbb-dev libisal2 libisal-dev
          nlohmann-json3-dev libgtest-dev libgmock-dev)

if [ "${1:-}" = "--fetch" ]; then
  mkdir -p "$deps"
  (cd "$deps" && apt-get download "${packages[@]}")
  echo "gpu-check: ${#packages[@]} packages in $deps; carry .deps to the GPU machine"
  exit 0
fi

ls "$deps"/*.deb >/dev/null 2>&1 || { echo "gpu-check: no .deb files in $deps (run --fetch here first)" >&2; exit 2; }
root="$deps/root"
mkdir -p "$root"
for deb in "$deps"/*.deb; do dpkg -x "$deb" "$root"; done
nvidia-smi -L || true
torch_prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
cmake -S . -B build/gpu -DCMAKE_BUILD_TYPE=Release -DZINF_BUILD_BENCH=OFF \
  -DCMAKE_PREFIX_PATH="$root/usr;$torch_prefix" -DCMAKE_INCLUDE_PATH="$root/usr/include" \
  -DCMAKE_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu"
cmake --build build/gpu -j "$(nproc)"
ctest --test-dir build/gpu --output-on-failure -j "$(nproc)"

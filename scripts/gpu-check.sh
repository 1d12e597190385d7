#!/usr/bin/env bash
# Builds zinf and runs its tests on a machine with a GPU (the device tool's
# H100/H200), which has nvcc, CMake and PyTorch with CUDA but no package
# access.
#
#   scripts/gpu-check.sh --fetch   here, with apt: download the Debian
#                                  packages the build needs into .deps/, and
#                                  bundle this machine's fio with its
#                                  libraries into .deps/fio.tar.xz
#   scripts/gpu-check.sh           there (carry .deps): unpack them into
#                                  .deps/root (never into /), build against
#                                  PyTorch's CUDA LibTorch, run ctest
#   scripts/gpu-check.sh --bench   the same, then train_gpt on the GPU with
#                                  a device budget a quarter of its
#                                  parameters (and its LibTorch reference),
#                                  the drop-in example with each optimizer,
#                                  and fio-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
deps="$PWD/.deps"
packages=(liburing2 liburing-dev libaio1 libaio-dev libtbb12 libtbbmalloc2 libtbbbind-2-5 libtbb-dev libisal2 libisal-dev
          nlohmann-json3-dev libgtest-dev libgmock-dev libcli11-dev)

if [ "${1:-}" = "--fetch" ]; then
  rm -rf "$deps/fio" && mkdir -p "$deps/fio/lib"
  (cd "$deps" && apt-get download "${packages[@]}")
  # fio pulls in ~60 libraries (ceph, gluster, rdma): carry the binary with
  # every one of them except glibc's, which the GPU machine has, compressed
  # to fit the carry limit.
  fio="$(command -v fio)" || { echo "gpu-check: install fio first (scripts/install-deps.sh)" >&2; exit 2; }
  cp "$fio" "$deps/fio/fio.bin"
  ldd "$fio" | awk '$3 ~ /^\// {print $3}' | grep -vE '/(libc|libm|libpthread|libdl|librt)\.so' |
    xargs cp -L -t "$deps/fio/lib"
  printf '#!/bin/sh\nd="$(dirname "$0")"\nLD_LIBRARY_PATH="$d/lib" exec "$d/fio.bin" "$@"\n' >"$deps/fio/fio"
  chmod +x "$deps/fio/fio"
  tar cJf "$deps/fio.tar.xz" -C "$deps" fio && rm -rf "$deps/fio"
  echo "gpu-check: ${#packages[@]} packages and fio in $deps; carry .deps to the GPU machine"
  exit 0
fi

ls "$deps"/*.deb "$deps/fio.tar.xz" >/dev/null 2>&1 || { echo "gpu-check: no packages or fio bundle in $deps (run --fetch here first)" >&2; exit 2; }
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
[ "${1:-}" = "--bench" ] || exit 0

# A model larger than the budget the engine may use on the GPU: 63.3M
# parameters (253 MB fp32), 64 MiB.
mkdir -p .deps/results
(mkdir -p .deps/run && cd .deps/run &&
  ../../build/gpu/examples/train_gpt --device cuda --device-budget 64M --steps 20 --print-every 5 \
    --json ../results/train_gpt-cuda.json &&
  ../../build/gpu/examples/train_gpt --device cuda --reference torch --steps 20 --print-every 5 \
    --json ../results/train_gpt-cuda-torch.json; rm -rf zinf-nvme)
for optimizer in torch zinf-cpu zinf-nvme; do
  build/gpu/examples/finetune_drop_in --optimizer "$optimizer" --device cuda
done
tar xJf "$deps/fio.tar.xz" -C "$deps"
PATH="$deps/fio:$PATH" SWAPBENCH="$PWD/build/gpu/tools/swapbench/swapbench" scripts/fio-compare.sh

#!/usr/bin/env bash
# Main job: installs what it needs (Debian, as root), builds the examples, and compresses a
# synthetic paged cache with every preset, printing what was kept and how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cmake -S . -B build/report -DCMAKE_BUILD_TYPE=Release -DKVEVICT_BUILD_TESTS=OFF -DKVEVICT_BUILD_BENCH=OFF >/dev/null
cmake --build build/report -j "$(nproc 2>/dev/null || echo 2)" --target compress_synthetic >/dev/null
./build/report/examples/compress_synthetic "$@"

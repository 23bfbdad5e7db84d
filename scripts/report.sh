#!/usr/bin/env bash
# Main job: installs what it needs (Debian, as root), builds, and runs the NIAH-style report:
# every preset and the full cache over the synthetic grid. Writes out/niah/{cases.csv,summary.md,
# heatmap_<policy>.png} and prints the table. Extra arguments go to the report (e.g. --full).
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
cmake -S . -B build/report -DCMAKE_BUILD_TYPE=Release -DKVEVICT_BUILD_TESTS=OFF -DKVEVICT_BUILD_BENCH=OFF \
      -DKVEVICT_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build/report -j "$(nproc 2>/dev/null || echo 2)" --target kvevict_niah_report >/dev/null
./build/report/bench/niah/kvevict_niah_report "$@"

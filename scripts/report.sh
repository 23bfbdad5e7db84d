#!/usr/bin/env bash
# Main job: installs what it needs (Debian, as root), builds, and runs the NIAH-style report:
# every preset and the full cache over the synthetic grid. Writes out/niah/{cases.csv,summary.md,
# heatmap_<policy>.png} and prints the table. Extra arguments go to the report (e.g. --full).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure "command -v cmake" cmake
ensure "command -v g++ && command -v make" g++ make
cmake -S . -B build/report -DCMAKE_BUILD_TYPE=Release -DKVEVICT_BUILD_TESTS=OFF -DKVEVICT_BUILD_BENCH=OFF \
      -DKVEVICT_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build/report -j "$(nproc 2>/dev/null || echo 2)" --target kvevict_niah_report >/dev/null
./build/report/bench/niah/kvevict_niah_report "$@"

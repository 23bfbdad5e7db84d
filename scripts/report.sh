#!/usr/bin/env bash
# Main job: installs what it needs (Debian, as root), builds, and runs the NIAH-style report:
# every preset and the full cache over one grid per task (single needle, 16K-32K contexts,
# multi-key, multi-value, multi-query, needle inside a long sentence, long values). Writes
# out/niah/{cases.csv, summary.md, *.png, index.html}: open out/niah/index.html. Extra arguments go
# to the report (e.g. --full, --tasks single,long_value, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure "command -v cmake" cmake
ensure "command -v g++ && command -v make" g++ make
ensure "test -f /usr/include/CLI/CLI.hpp" libcli11-dev
# Debian's interpreter and matplotlib (the python3 on PATH may be another one).
ensure "/usr/bin/python3 -c 'import matplotlib'" python3-matplotlib
out=out/niah
args=("$@")
for ((i = 0; i < ${#args[@]}; ++i)); do
  if [[ ${args[i]} == --out && $((i + 1)) -lt ${#args[@]} ]]; then out=${args[i + 1]}; fi
done
cmake -S . -B build/report -DCMAKE_BUILD_TYPE=Release -DKVEVICT_BUILD_TESTS=OFF -DKVEVICT_BUILD_BENCH=OFF \
      -DKVEVICT_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build/report -j "$(nproc 2>/dev/null || echo 2)" --target kvevict_niah_report >/dev/null
./build/report/bench/niah/kvevict_niah_report "$@"
echo "drawing the figures"
/usr/bin/python3 bench/niah/figures.py "$out"
echo "open $out/index.html"

#!/usr/bin/env bash
# Installs what the tests need (Debian, as root), builds, and runs every test: once optimised,
# once under AddressSanitizer + UBSan. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
ensure "command -v cmake" cmake
ensure "command -v g++ && command -v make" g++ make
ensure "test -f /usr/include/catch2/catch.hpp" catch2
ensure "test -f /usr/include/benchmark/benchmark.h" libbenchmark-dev
ensure "test -f /usr/include/CLI/CLI.hpp" libcli11-dev
ensure "test -f /usr/include/nlohmann/json.hpp" nlohmann-json3-dev

jobs=$(nproc 2>/dev/null || echo 2)

echo "== build (RelWithDebInfo) =="
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release -j "$jobs"
echo "== tests =="
(cd build/release && ctest --output-on-failure -j "$jobs")

echo "== the report's pipeline on a tiny grid: report, figures, index =="
ensure "/usr/bin/python3 -c 'import matplotlib'" python3-matplotlib
rm -rf build/report-smoke
./build/release/bench/niah/kvevict_niah_report --help >/dev/null
if ./build/release/bench/niah/kvevict_niah_report --tasks no_such_task >/dev/null 2>&1; then
  echo "the report accepted an unknown task"; exit 1
fi
./build/release/bench/niah/kvevict_niah_report --contexts 600 --depths 0.5 --seeds 1 --out build/report-smoke >/dev/null
/usr/bin/python3 bench/niah/figures.py build/report-smoke >/dev/null
/usr/bin/python3 scripts/check_report.py build/report-smoke

echo "== build (AddressSanitizer + UBSan) =="
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DKVEVICT_SANITIZE=ON -DKVEVICT_BUILD_BENCH=OFF >/dev/null
cmake --build build/asan -j "$jobs"
echo "== tests under sanitizers =="
(cd build/asan && ctest --output-on-failure -j "$jobs" -LE cmake)

echo "== Python package (python/): kvpress parity and API tests =="
bash scripts/test_python.sh

#!/usr/bin/env bash
# The one GPU script: runs the CUDA tests, the same tests at small sizes under compute-sanitizer
# (memcheck, racecheck, synccheck), the CUDA benchmarks and the PyTorch peer path in the same call,
# and prints one table last.
#
# Device time is scarce (about 15 minutes a session, each machine start counting), so every binary
# is built HERE, on the development machine (same x86-64, same nvcc), by
#   bash bench/gpu/run.sh --prepare
# into .gpu/ (git-ignored, never committed): .gpu/bin/{kvevict_cuda_tests,kvevict_bench_cuda},
# Google Benchmark's shared library (the bench finds it through $ORIGIN), and the torch baseline
# copied from ../shared/bench. Then, on the device, with `carry: [".gpu"]`:
#   bash bench/gpu/run.sh [all|test|bench|python]
# `test` runs the tests and the sanitizers, `bench` the benchmarks and the torch path, `all` both.
# `python` builds the Python package with CUDA there (its python3 has torch, nanobind and
# scikit-build-core; about 1 to 2 minutes) and runs python/tests/test_cuda.py and test_api.py.
# Without prepared binaries it builds them on the device first (slow: minutes of device time).
# Needs on the device: python3 with torch, compute-sanitizer. Writes logs and JSON to $OUT (or
# out/gpu when OUT is unset). The binaries read tests/fixtures relative to the repository root.
set -uo pipefail
cd "$(dirname "$0")/../.."

flags=(-O3 -std=c++17 -arch=sm_90 -Iinclude -Itests -lineinfo "-DKVEVICT_FIXTURES_DIR=\"tests/fixtures\"")
build_tests() { nvcc "${flags[@]}" -o "$1/kvevict_cuda_tests" tests/cuda/test_cuda.cu; }
build_bench() {
  nvcc "${flags[@]}" -I.gpu/gbench/include -o "$1/kvevict_bench_cuda" bench/gpu/bench_cuda.cu \
    -L.gpu/gbench/lib -lbenchmark -lpthread -Xlinker -rpath='$ORIGIN/../gbench/lib'
}

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .gpu/gbench/include .gpu/gbench/lib .gpu/bin
  cp -r /usr/include/benchmark .gpu/gbench/include/
  cp -L /usr/lib/x86_64-linux-gnu/libbenchmark.so.1debian .gpu/gbench/lib/libbenchmark.so.1debian
  ln -sf libbenchmark.so.1debian .gpu/gbench/lib/libbenchmark.so
  cp ../shared/bench/torch_path_baseline.py .gpu/torch_path_baseline.py
  echo "building the CUDA tests and benchmarks into .gpu/bin (several minutes on 2 cores)"
  build_tests .gpu/bin > .gpu/build_tests.log 2>&1 &
  p1=$!
  build_bench .gpu/bin > .gpu/build_bench.log 2>&1 &
  p2=$!
  ok=0
  wait $p1 || { echo "test build failed"; tail -30 .gpu/build_tests.log; ok=1; }
  wait $p2 || { echo "bench build failed"; tail -30 .gpu/build_bench.log; ok=1; }
  strip .gpu/bin/kvevict_cuda_tests .gpu/bin/kvevict_bench_cuda 2>/dev/null || true
  du -sh .gpu .gpu/bin/* | sed 's/^/  /'
  echo "prepared .gpu/ (carry it to the GPU machine; the carry limit is 64 MiB)"
  exit $ok
fi

stage="${1:-all}"
out="${OUT:-out/gpu}"
bin=.gpu/bin
mkdir -p "$out" "$bin"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
date -u +"%Y-%m-%d %H:%M UTC" | tee -a "$out/card.txt"

if [[ "$stage" == python ]]; then
  echo "== Python package with CUDA: build =="
  py=$(mktemp -d)
  start=$(date +%s)
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) timeout 400 python3 -m pip install --no-build-isolation --no-deps \
    --target "$py/site" ./python -C cmake.define.KVEVICT_PY_CUDA=ON -C build-dir="$py/build" \
    > "$out/python_build.log" 2>&1 || { echo "package build failed"; tail -30 "$out/python_build.log"; exit 1; }
  echo "built in $(( $(date +%s) - start )) s"
  echo "== Python package with CUDA: tests =="
  PYTHONPATH="$py/site" timeout 300 python3 -m pytest -q -p no:cacheprovider -rs python/tests/test_cuda.py \
    python/tests/test_api.py > "$out/python_tests.log" 2>&1; rc=$?
  tail -30 "$out/python_tests.log"; echo "python tests rc=$rc"
  exit $rc
fi

echo "== binaries =="
if [[ "$stage" != bench && ! -x $bin/kvevict_cuda_tests ]]; then
  echo "no prepared test binary: building on the device"
  build_tests "$bin" > "$out/build_tests.log" 2>&1 || { echo "test build failed"; tail -30 "$out/build_tests.log"; status=1; }
fi
if [[ "$stage" != test && ! -x $bin/kvevict_bench_cuda ]]; then
  echo "no prepared bench binary: building on the device"
  build_bench "$bin" > "$out/build_bench.log" 2>&1 || { echo "bench build failed"; tail -30 "$out/build_bench.log"; status=1; }
fi

echo "== CUDA tests =="
if [[ "$stage" != bench && -x $bin/kvevict_cuda_tests ]]; then
  timeout 180 $bin/kvevict_cuda_tests > "$out/tests.log" 2>&1; rc=$?
  tail -25 "$out/tests.log"; echo "tests rc=$rc"; [[ $rc == 0 ]] || status=1
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck synccheck; do
    echo "== compute-sanitizer $tool (small sizes) =="
    timeout 100 "$sanitizer" --tool "$tool" --error-exitcode 9 $bin/kvevict_cuda_tests --small \
      > "$out/sanitizer_$tool.log" 2>&1; rc=$?
    tail -6 "$out/sanitizer_$tool.log"; echo "$tool rc=$rc"; [[ $rc == 0 ]] || status=1
  done
fi

echo "== benchmarks =="
if [[ "$stage" != test && -x $bin/kvevict_bench_cuda ]]; then
  timeout 200 $bin/kvevict_bench_cuda --benchmark_format=json --benchmark_out="$out/bench_cuda.json" \
    --benchmark_out_format=json > "$out/bench_cuda.txt" 2>&1 || status=1
fi
echo "== torch peer path =="
if [[ "$stage" != test && -f .gpu/torch_path_baseline.py ]]; then
  timeout 150 python3 .gpu/torch_path_baseline.py > "$out/torch.txt" 2>&1 || status=1
fi
[[ "$stage" == test ]] || python3 bench/gpu/table.py "$out" | tee "$out/table.txt"
exit $status

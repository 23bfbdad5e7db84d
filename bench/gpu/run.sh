#!/usr/bin/env bash
# The one GPU script (issue 5): builds the CUDA tests and benchmarks with nvcc, runs the tests,
# runs them again at small sizes under compute-sanitizer memcheck and racecheck, runs the CUDA
# benchmarks and the PyTorch peer path in the same call, and prints one table last.
#
# Needs on the GPU machine: nvcc, python3 with torch, compute-sanitizer. Google Benchmark is not
# installed there: carry its headers and shared library in .gpu/gbench (include/, lib/), made on
# the development machine by `bash bench/gpu/run.sh --prepare`, together with the torch baseline
# copied from ../shared/bench to .gpu/torch_path_baseline.py (.gpu/ is git-ignored, never committed).
#   device run: bash bench/gpu/run.sh [all|test|bench]   (carry: .gpu)
# `test` builds and runs the tests and the sanitizers, `bench` builds and runs the benchmarks and
# the torch path; `all` (default) does both (split it into two calls when one would pass the
# device tool's 10-minute limit). Writes logs and JSON to $OUT (or out/gpu when OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/../.."

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .gpu/gbench/include .gpu/gbench/lib
  cp -r /usr/include/benchmark .gpu/gbench/include/
  cp -L /usr/lib/x86_64-linux-gnu/libbenchmark.so.1debian .gpu/gbench/lib/libbenchmark.so.1debian
  ln -sf libbenchmark.so.1debian .gpu/gbench/lib/libbenchmark.so
  cp ../shared/bench/torch_path_baseline.py .gpu/torch_path_baseline.py
  echo "prepared .gpu/ (carry it to the GPU machine)"
  exit 0
fi

stage="${1:-all}"
out="${OUT:-out/gpu}"
mkdir -p "$out" build/gpu
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
date -u +"%Y-%m-%d %H:%M UTC" | tee -a "$out/card.txt"

flags=(-O3 -std=c++17 -arch=sm_90 -Iinclude -Itests -lineinfo "-DKVEVICT_FIXTURES_DIR=\"$PWD/tests/fixtures\"")
echo "== build =="
p1=0 p2=0
if [[ "$stage" != bench ]]; then
  nvcc "${flags[@]}" -o build/gpu/kvevict_cuda_tests tests/cuda/test_cuda.cu > "$out/build_tests.log" 2>&1 &
  p1=$!
fi
if [[ "$stage" != test ]]; then
  nvcc "${flags[@]}" -I.gpu/gbench/include -o build/gpu/kvevict_bench_cuda bench/gpu/bench_cuda.cu \
    -L.gpu/gbench/lib -lbenchmark -lpthread -Xlinker -rpath="$PWD/.gpu/gbench/lib" > "$out/build_bench.log" 2>&1 &
  p2=$!
fi
[[ $p1 == 0 ]] || wait $p1 || { echo "test build failed"; tail -30 "$out/build_tests.log"; status=1; }
[[ $p2 == 0 ]] || wait $p2 || { echo "bench build failed"; tail -30 "$out/build_bench.log"; status=1; }

echo "== CUDA tests =="
if [[ "$stage" != bench && -x build/gpu/kvevict_cuda_tests ]]; then
  timeout 180 build/gpu/kvevict_cuda_tests > "$out/tests.log" 2>&1; rc=$?
  tail -25 "$out/tests.log"; echo "tests rc=$rc"; [[ $rc == 0 ]] || status=1
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer $tool (small sizes) =="
    timeout 150 "$sanitizer" --tool "$tool" --error-exitcode 9 build/gpu/kvevict_cuda_tests --small \
      > "$out/sanitizer_$tool.log" 2>&1; rc=$?
    tail -6 "$out/sanitizer_$tool.log"; echo "$tool rc=$rc"; [[ $rc == 0 ]] || status=1
  done
fi

echo "== benchmarks =="
if [[ "$stage" != test && -x build/gpu/kvevict_bench_cuda ]]; then
  timeout 200 build/gpu/kvevict_bench_cuda --benchmark_format=json --benchmark_out="$out/bench_cuda.json" \
    --benchmark_out_format=json > "$out/bench_cuda.txt" 2>&1 || status=1
fi
echo "== torch peer path =="
if [[ "$stage" != test && -f .gpu/torch_path_baseline.py ]]; then
  timeout 150 python3 .gpu/torch_path_baseline.py > "$out/torch.txt" 2>&1 || status=1
fi
[[ "$stage" == test ]] || python3 bench/gpu/table.py "$out" | tee "$out/table.txt"
exit $status

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
# scikit-build-core; about 1 to 2 minutes), runs python/tests/test_cuda.py and test_api.py, and the
# press benchmark (bench/python/bench_press.py --device cuda) with the kvpress wheels carried in .gpu/wheels.
# Without prepared binaries it builds them on the device first (slow: minutes of device time).
# Needs on the device: python3 with torch, compute-sanitizer. Writes logs and JSON to $OUT (or
# out/gpu when OUT is unset), the stage profile (stages.txt) and results.json (bench/gpu/table.py). The binaries read tests/fixtures relative to the repository root.
set -uo pipefail
cd "$(dirname "$0")/../.."

flags=(-O3 -std=c++17 -arch=sm_90 -Iinclude -Itests -lineinfo "-DKVEVICT_FIXTURES_DIR=\"tests/fixtures\"")
build_tests() { nvcc "${flags[@]}" -o "$1/kvevict_cuda_tests" tests/cuda/test_cuda.cu; }
# The NCCL example (tensor parallelism over this machine's GPUs), built against NCCL's headers and
# library (the CUDA toolkit's here, or PyPI's nvidia-nccl-cu13); on the device it runs with the
# image's NCCL (python3's nvidia.nccl package).
nccl_dir() { python3 -c "import nvidia.nccl as n; print(list(n.__path__)[0])" 2>/dev/null; }
build_nccl() {  # out_dir include_dir libnccl.so.2
  nvcc "${flags[@]}" -I"$2" -o "$1/tensor_parallel_nccl" examples/cuda/tensor_parallel_nccl.cu -Xlinker "$3"
}
build_bench() {
  nvcc "${flags[@]}" -I.gpu/gbench/include -o "$1/kvevict_bench_cuda" bench/gpu/bench_cuda.cu \
    -L.gpu/gbench/lib -lbenchmark -lpthread -Xlinker -rpath='$ORIGIN/../gbench/lib'
}

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .gpu/gbench/include .gpu/gbench/lib .gpu/bin
  git rev-parse --short HEAD > .gpu/commit.txt 2>/dev/null || echo unknown > .gpu/commit.txt  # the binaries' commit
  cp -r /usr/include/benchmark .gpu/gbench/include/
  cp -L /usr/lib/x86_64-linux-gnu/libbenchmark.so.1debian .gpu/gbench/lib/libbenchmark.so.1debian
  ln -sf libbenchmark.so.1debian .gpu/gbench/lib/libbenchmark.so
  cp ../shared/bench/torch_path_baseline.py .gpu/torch_path_baseline.py
  # kvpress and what its import needs beyond the device image's packages (pure-Python wheels, about
  # 1 MB), for the `python` stage's press benchmark; the image's torch and transformers are used.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 -d .gpu/wheels kvpress==0.5.5 datasets==5.2.0 dill==0.4.1 \
    multiprocess==0.70.19 cachetools==5.5.2 termcolor==3.3.0 fire \
    || echo "could not download kvpress's wheels: the python stage will skip the press benchmark"
  if [[ -f /usr/local/include/nccl.h && -f /usr/local/lib64/libnccl.so.2 ]]; then
    nccl_inc=/usr/local/include nccl_lib=/usr/local/lib64/libnccl.so.2
  else  # PyPI's package: headers and library only
    nccl_tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_27_x86_64 -d "$nccl_tmp" nvidia-nccl-cu13 \
      && python3 -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); \
z.extractall(sys.argv[2], [n for n in z.namelist() if '/include/' in n or n.endswith('libnccl.so.2')])" \
        "$nccl_tmp"/nvidia_nccl_cu13-*.whl "$nccl_tmp/x"
    nccl_inc="$nccl_tmp/x/nvidia/nccl/include" nccl_lib="$nccl_tmp/x/nvidia/nccl/lib/libnccl.so.2"
  fi
  if build_nccl .gpu/bin "$nccl_inc" "$nccl_lib" > .gpu/build_nccl.log 2>&1; then
    echo "built .gpu/bin/tensor_parallel_nccl (NCCL's library is the device image's, found at run time)"
  else
    echo "NCCL example not built (see .gpu/build_nccl.log)"
  fi
  [[ -z "${nccl_tmp:-}" ]] || rm -rf "$nccl_tmp"
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
echo "commit $(cat .gpu/commit.txt 2>/dev/null || echo unknown)" | tee -a "$out/card.txt"

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
  echo "== Python press benchmark (kvpress beside kvevict, CUDA) =="
  if ls .gpu/wheels/kvpress-*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-deps --target "$py/site" .gpu/wheels/*.whl > "$out/python_wheels.log" 2>&1
    if PYTHONPATH="$py/site" python3 -c "import kvevict.kvpress" > "$out/python_import.log" 2>&1; then
      PYTHONPATH="$py/site" timeout 240 python3 bench/python/bench_press.py --device cuda --dtype bfloat16 \
        --lengths 8192 32768 --repeats 5 --presses snapkv chunkkv knorm streaming_llm sablock \
        --json "$out/bench_press_cuda.json" 2>&1 | tail -16 || rc=1
    else
      echo "kvpress does not import here:"; tail -5 "$out/python_import.log"
    fi
  else
    echo "no kvpress wheels in .gpu/wheels (bash bench/gpu/run.sh --prepare downloads them)"
  fi
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
# Every step gets its own limit, cut to what is left of the call's deadline (GPU_DEADLINE_S seconds
# from here; default 560 for `all`, which must fit one device call of at most 600 s) and skipped
# when under 15 s remain. `all` runs in priority order: the tests, the benchmarks, their stage
# profile and the torch path (then the table), the NCCL example, the sanitizers (racecheck last, with
# what is left); the table is printed again last.
t0=$(date +%s)
deadline=$(( t0 + ${GPU_DEADLINE_S:-$([[ "$stage" == all ]] && echo 560 || echo 100000)} ))
limit() {  # wanted seconds -> seconds granted (0: skip)
  local left=$(( deadline - $(date +%s) - 5 ))
  (( left < 15 )) && { echo 0; return; }
  (( left < $1 )) && echo "$left" || echo "$1"
}
step() {  # name wanted_seconds command...: runs it under its limit, records its wall time and rc
  local name=$1 want=$2; shift 2
  local t; t=$(limit "$want")
  if [[ $t == 0 ]]; then echo "== $name: skipped, the call's deadline is near"; echo "$name skipped" >> "$out/steps.txt"; return 0; fi
  local s; s=$(date +%s)
  timeout "$t" bash -c '"$@"' _ "$@"; local rc=$?  # a function, in a child shell (exported below)
  echo "$name rc=$rc wall=$(( $(date +%s) - s ))s limit=${t}s" | tee -a "$out/steps.txt"
  [[ $rc == 0 ]] || status=1
}
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
run_tests() { $bin/kvevict_cuda_tests > "$out/tests.log" 2>&1; local rc=$?; tail -25 "$out/tests.log"; return $rc; }
run_sanitizer() {  # tool log [compute-sanitizer options...]
  local tool=$1 log=$2; shift 2
  "$sanitizer" --tool "$tool" --error-exitcode 9 "$@" $bin/kvevict_cuda_tests --small > "$out/$log" 2>&1
  local rc=$?; tail -6 "$out/$log"; return $rc
}
run_nccl() {
  local nd; nd=$(nccl_dir)
  if [[ -x $bin/tensor_parallel_nccl && -n "$nd" ]]; then
    LD_LIBRARY_PATH="$nd/lib:${LD_LIBRARY_PATH:-}" $bin/tensor_parallel_nccl > "$out/nccl.log" 2>&1
    local rc=$?; tail -8 "$out/nccl.log"; return $rc
  fi
  echo "skipped: no prepared binary or no NCCL in python3 (nvidia.nccl)"
}
run_bench() {
  $bin/kvevict_bench_cuda --benchmark_format=json --benchmark_out="$out/bench_cuda.json" \
    --benchmark_out_format=json > "$out/bench_cuda.txt" 2>&1
}
run_stages() { $bin/kvevict_bench_cuda --stages > "$out/stages.txt" 2>&1; local rc=$?; tail -40 "$out/stages.txt"; return $rc; }
run_torch() { python3 .gpu/torch_path_baseline.py > "$out/torch.txt" 2>&1; }
table() { python3 bench/gpu/table.py "$out" | tee "$out/table.txt"; }
export bin out sanitizer
export -f nccl_dir run_tests run_sanitizer run_nccl run_bench run_stages run_torch
have_tests() { [[ -x $bin/kvevict_cuda_tests ]]; }
have_bench() { [[ -x $bin/kvevict_bench_cuda ]]; }
sanitizers() {  # racecheck last: over every kernel it needed more than 100 s (2026-11-30: memcheck 48 s, synccheck 41 s)
  step memcheck 100 run_sanitizer memcheck sanitizer_memcheck.log
  step synccheck 100 run_sanitizer synccheck sanitizer_synccheck.log
  step racecheck 260 run_sanitizer racecheck sanitizer_racecheck.log
}
benches() {
  step "benchmarks" 200 run_bench
  step "stage profile" 60 run_stages
  [[ -f .gpu/torch_path_baseline.py ]] && step "torch peer path" 150 run_torch
}

case "$stage" in
  test)
    have_tests && { echo "== CUDA tests =="; step tests 180 run_tests; echo "== NCCL example =="; step nccl 60 run_nccl; sanitizers; } ;;
  bench)
    have_bench && { echo "== benchmarks =="; benches; }; table ;;
  all)
    have_tests && { echo "== CUDA tests =="; step tests 180 run_tests; }
    have_bench && { echo "== benchmarks =="; benches; }; table > /dev/null
    have_tests && { echo "== NCCL example =="; step nccl 60 run_nccl; sanitizers; }
    echo "== steps =="; cat "$out/steps.txt"; table ;;
  *) echo "unknown stage '$stage' (all, test, bench, python or --prepare)"; exit 2 ;;
esac
# The device tool returns only a few files from $OUT: pack every log into one archive beside the
# table and results.json.
if [[ -n "${OUT:-}" ]]; then
  tar czf "$out/logs.tgz" -C "$out" --exclude logs.tgz --exclude results.json --exclude table.txt . \
    && find "$out" -maxdepth 1 -type f ! -name logs.tgz ! -name results.json ! -name table.txt -delete
fi
exit $status

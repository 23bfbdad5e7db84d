#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, with AddressSanitizer and UBSan), replays the committed
# regression inputs, then fuzzes each target for the given seconds starting from the committed
# seed corpus (fuzz/corpus/<target>, never modified; the working corpus lives in build/fuzz).
# Usage: bash scripts/fuzz.sh [seconds per target, default 60]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}

source scripts/lib.sh
ensure "ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a && (command -v clang++ || command -v clang++-14)" \
  clang libclang-rt-dev
cxx=$(command -v clang++ || command -v clang++-14)

out=build/fuzz
mkdir -p "$out"
flags=(-std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Iinclude -Itests)
status=0
for t in evict segment; do
  echo "== fuzz_$t: build =="
  "$cxx" "${flags[@]}" "fuzz/fuzz_$t.cpp" -o "$out/fuzz_$t"
  if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
    echo "== fuzz_$t: regression inputs =="
    "$out/fuzz_$t" fuzz/regressions/$t/* 2>&1 | grep -E "Executed|ERROR|contract" || true
    "$out/fuzz_$t" fuzz/regressions/$t/* >/dev/null 2>&1 || { echo "fuzz_$t: a regression input fails"; status=1; }
  fi
  echo "== fuzz_$t: ${secs}s =="
  mkdir -p "$out/corpus_$t"
  if "$out/fuzz_$t" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/" \
       "$out/corpus_$t" "fuzz/corpus/$t" >"$out/fuzz_$t.log" 2>&1; then
    grep -E "DONE|stat::number_of_executed_units|stat::average_exec_per_sec" "$out/fuzz_$t.log" || true
  else
    tail -40 "$out/fuzz_$t.log"
    echo "fuzz_$t: FAILED (artifact in $out/)"
    status=1
  fi
done
[ $status -eq 0 ] && echo "fuzz: 2 passed, 0 failed" || echo "fuzz: failed"
exit $status

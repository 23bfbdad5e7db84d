// Google Benchmark over the NIAH generator (--benchmark_format=json): one layer's plan for every
// preset of the report's list (niah/report.hpp) and the compaction of that plan, at 8K, 32K and
// 128K tokens (layer 1: two retrieval heads, 4 KV heads x 64 dims, 16 query heads, bf16).
#include <benchmark/benchmark.h>

#include "niah/report.hpp"

#include <map>
#include <memory>

namespace {

kvevict::synthetic::niah_sequence& sequence(int n) {
  static std::map<int, std::unique_ptr<kvevict::synthetic::niah_sequence>> cache;
  auto& s = cache[n];
  if (!s)
    s = std::make_unique<kvevict::synthetic::niah_sequence>(
        kvevict::synthetic::niah_generator{}.generate({n, 0.5, 1, 0}));
  return *s;
}

template <class P>
void bench_plan(benchmark::State& state, P base) {
  auto& s = sequence(static_cast<int>(state.range(0)));
  auto p = niah_report::detail::configured(base);
  p.selector.budget.entries = 1024;
  auto view = s.layer_view(1);
  auto sig = s.layer_signals(1);
  const auto sums = niah_report::detail::question_attention_sums(s);
  sig.attention_sums = sums[1].data();
  sig.sums_stride = s.tokens;
  kvevict::keep_plan_buffer kept(s.cfg.kv_heads, kvevict::plan_capacity(p, view));
  std::vector<unsigned char> ws(kvevict::plan_workspace_bytes(kvevict::host, p, view, sig));
  for (auto _ : state) {
    const auto st = kvevict::plan(kvevict::host, p, view, sig, kept.view(), ws.data(), ws.size());
    if (!st) state.SkipWithError(st.message().c_str());
    benchmark::DoNotOptimize(kept.positions.data());
  }
  state.counters["tokens"] = static_cast<double>(s.tokens);
  state.counters["workspace_bytes"] = static_cast<double>(ws.size());
}

// Compaction of a SnapKV plan (budget = half the tokens) on a copy of the layer, restored before
// every iteration (the restore is excluded from the time).
void BM_niah_compact(benchmark::State& state) {
  auto& s = sequence(static_cast<int>(state.range(0)));
  const auto k0 = s.k[1], v0 = s.v[1];
  auto view = s.layer_view(1);
  kvevict::snapkv<> p = niah_report::detail::configured(kvevict::snapkv<>{});
  p.selector.budget.entries = s.tokens / 2;
  kvevict::keep_plan_buffer kept(s.cfg.kv_heads, kvevict::plan_capacity(p, view));
  if (!kvevict::plan(kvevict::host, p, view, s.layer_signals(1), kept.view())) state.SkipWithError("plan failed");
  std::vector<int> lens(s.cfg.kv_heads), freed(s.pages);
  kvevict::compact_result out{lens.data(), static_cast<int>(lens.size()), freed.data(), s.pages};
  std::vector<unsigned char> ws(kvevict::compact_workspace_bytes(kvevict::host, view) + 1);
  for (auto _ : state) {
    state.PauseTiming();
    s.k[1] = k0;
    s.v[1] = v0;
    view = s.layer_view(1);
    state.ResumeTiming();
    const auto st = kvevict::compact(kvevict::host, view, kept.const_view(), out, ws.data(), ws.size());
    benchmark::DoNotOptimize(st);
  }
  state.counters["bytes"] = benchmark::Counter(4.0 * (s.tokens / 2) * s.cfg.kv_heads * s.cfg.head_dim * 2,
                                               benchmark::Counter::kIsIterationInvariantRate);
}

const bool registered = [] {
  std::apply(
      [](const auto&... entry) {
        auto one = [](const auto& e) {
          using P = std::decay_t<decltype(e.policy)>;
          // the fp8 rows reuse their policy's plan on another storage: the report times them
          if constexpr (!std::is_same_v<P, niah_report::full_cache> && !niah_report::detail::is_fp8_cache<P>::value) {
            auto* b = benchmark::RegisterBenchmark((std::string("BM_niah_plan/") + e.name).c_str(),
                                                   [p = e.policy](benchmark::State& st) { bench_plan(st, p); });
            b->Arg(8192)->Arg(32768)->Arg(131072)->Unit(benchmark::kMillisecond);
          }
        };
        (one(entry), ...);
      },
      niah_report::policies());
  benchmark::RegisterBenchmark("BM_niah_compact", BM_niah_compact)
      ->Arg(8192)
      ->Arg(32768)
      ->Arg(131072)
      ->Unit(benchmark::kMillisecond);
  return true;
}();

}  // namespace

BENCHMARK_MAIN();

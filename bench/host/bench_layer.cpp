// One layer's SnapKV plan on the host, the shape of the numpy and torch peer paths
// (bench/host/vs_peers.py runs them in the same run): 32 query heads, 8 KV heads, head_dim 128,
// window 64, average pooling 5, budget 1024, dense cache [1, 8, tokens, 128], fp32 or bf16 keys
// and queries. Args: tokens, threads (0 = every hardware thread). Google Benchmark,
// --benchmark_format=json.
#include <benchmark/benchmark.h>

#include <kvevict/kvevict.hpp>

#include <random>
#include <vector>

namespace {

constexpr int q_heads = 32, kv_heads = 8, head_dim = 128, window = 64, budget = 1024;

template <class T>
void BM_plan_layer(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const auto exec = kvevict::host.threads(static_cast<int>(state.range(1)));
  std::mt19937 rng(0);
  std::normal_distribution<float> nd;
  std::vector<T> k(static_cast<std::size_t>(kv_heads) * n * head_dim),
      q(static_cast<std::size_t>(q_heads) * window * head_dim);
  for (auto& x : k) x = kvevict::from_float<T>(nd(rng));
  for (auto& x : q) x = kvevict::from_float<T>(nd(rng));
  std::vector<std::int32_t> lens = {n};
  kvevict::dense_cache<const T> cache{k.data(), k.data(), lens.data(), 1, kv_heads, n, head_dim};
  kvevict::signals<T> sig{q.data(), q_heads};
  kvevict::snapkv<> p;
  p.selector = {0, window, kvevict::uniform_budget{budget}};
  auto kept = kvevict::keep_plan_buffer::for_cache(p, cache, sig);
  std::vector<unsigned char> ws(kvevict::plan_workspace_bytes(exec, p, cache, sig));
  for (auto _ : state) {
    auto st = kvevict::plan(exec, p, cache, sig, kept.view(), ws.data(), ws.size());
    if (!st) state.SkipWithError(st.message().c_str());
    benchmark::DoNotOptimize(kept.positions.data());
  }
  // Two passes over the keys: 2 x 2 x q_heads x window x tokens x head_dim FLOPs.
  state.counters["FLOPs"] =
      benchmark::Counter(4.0 * q_heads * window * double(n) * head_dim, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = exec.thread_count();
}

void args(benchmark::internal::Benchmark* b) {
  for (int n : {8192, 32768})
    for (int t : {1, 0}) b->Args({n, t});
  b->ArgNames({"tokens", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

BENCHMARK_TEMPLATE(BM_plan_layer, float)->Apply(args);
BENCHMARK_TEMPLATE(BM_plan_layer, kvevict::bfloat16)->Apply(args);
BENCHMARK_MAIN();

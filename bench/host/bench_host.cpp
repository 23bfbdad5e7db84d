// Host benchmarks (Google Benchmark; run with --benchmark_format=json for JSON):
//  * BM_window_scorer: the library's window-attention scorer on one KV head's query group
//    (4 query heads, head_dim 128, window 64), with FLOPs and bytes counters;
//  * BM_window_triple_loop: the same two-pass computation as a plain triple loop, same run, for
//    the ratio (items/s ratio = speed-up);
//  * BM_window_group_baseline / BM_window_group_dispatched: the scorer's kernel on one query group
//    built for the baseline vectors and as dispatched at run time (AVX2 where the CPU has it), same
//    run, for the ratio;
//  * BM_compact: in-place compaction of a vLLM-style cache at 50% kept, bytes moved counter, on one
//    thread and on every thread.
#include <benchmark/benchmark.h>

#include <kvevict/kvevict.hpp>

#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr int group = 4, head_dim = 128, window = 64, page_size = 16;

struct one_head_cache {
  std::vector<kvevict::bfloat16> k, v, q;
  std::vector<int> table, lens;
  int pages;
  one_head_cache(int n, int kv_heads = 1) : pages((n + page_size - 1) / page_size) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    k.resize(size_t(pages) * page_size * kv_heads * head_dim);
    v.resize(k.size());
    for (auto& x : k) x = kvevict::from_float<kvevict::bfloat16>(nd(rng));
    for (auto& x : v) x = kvevict::from_float<kvevict::bfloat16>(nd(rng));
    q.resize(size_t(group) * kv_heads * window * head_dim);
    for (auto& x : q) x = kvevict::from_float<kvevict::bfloat16>(nd(rng));
    for (int i = 0; i < pages; ++i) table.push_back(i);
    lens = {n};
  }
  kvevict::block_table_cache<kvevict::bfloat16> view(int kv_heads = 1) {
    return {k.data(), v.data(), table.data(), lens.data(), 1, pages, pages, page_size, kv_heads, head_dim};
  }
};

double window_flops(int n) { return 2.0 * 2.0 * group * window * double(n) * head_dim; }  // 2 passes, FMA = 2

void BM_window_scorer(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  one_head_cache c(n);
  auto view = c.view();
  kvevict::signals<kvevict::bfloat16> sig{c.q.data(), group};
  kvevict::eviction_policy<kvevict::window_attention<kvevict::gqa_mean, kvevict::no_pool>, kvevict::token_level,
                           kvevict::selector<>>
      p;
  p.selector = {4, window, kvevict::uniform_budget{1024}};
  std::vector<float> scores(n);
  std::vector<unsigned char> ws(kvevict::plan_workspace_bytes(kvevict::host, p, view, sig));
  for (auto _ : state) {
    auto st = kvevict::score(kvevict::host, p, view, sig, scores.data(), n, ws.data(), ws.size());
    benchmark::DoNotOptimize(st);
    benchmark::DoNotOptimize(scores.data());
  }
  state.counters["FLOPs"] = benchmark::Counter(window_flops(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes"] = benchmark::Counter(2.0 * n * head_dim * 2, benchmark::Counter::kIsIterationInvariantRate);
  state.SetItemsProcessed(state.iterations() * int64_t(n));
}

// The plain formula: for each query, dot products with every visible key, online max/sum, then a
// second pass of normalised probabilities; no tiling, std::exp.
void BM_window_triple_loop(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  one_head_cache c(n);
  std::vector<float> kf(size_t(n) * head_dim), qf(size_t(group) * window * head_dim), scores(n);
  for (size_t i = 0; i < kf.size(); ++i) kf[i] = kvevict::to_float(c.k[i]);
  for (size_t i = 0; i < qf.size(); ++i) qf[i] = kvevict::to_float(c.q[i]);
  const float scale = 1.0f / std::sqrt(float(head_dim));
  for (auto _ : state) {
    std::fill(scores.begin(), scores.end(), 0.0f);
    for (int r = 0; r < group * window; ++r) {
      const int last = n - window + r % window;
      const float* q = &qf[size_t(r) * head_dim];
      float m = -INFINITY, l = 0;
      for (int t = 0; t <= last; ++t) {
        float s = 0;
        for (int x = 0; x < head_dim; ++x) s += q[x] * kf[size_t(t) * head_dim + x];
        s *= scale;
        if (s > m) {
          l *= std::exp(m - s);
          m = s;
        }
        l += std::exp(s - m);
      }
      for (int t = 0; t <= last; ++t) {
        float s = 0;
        for (int x = 0; x < head_dim; ++x) s += q[x] * kf[size_t(t) * head_dim + x];
        scores[t] += std::exp(s * scale - m) / l / (group * window);
      }
    }
    benchmark::DoNotOptimize(scores.data());
  }
  state.counters["FLOPs"] = benchmark::Counter(window_flops(n), benchmark::Counter::kIsIterationInvariantRate);
  state.SetItemsProcessed(state.iterations() * int64_t(n));
}

void BM_compact(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0)), kv_heads = 8;
  one_head_cache c(n, kv_heads);
  auto view = c.view(kv_heads);
  kvevict::keep_plan_buffer plan(kv_heads, n / 2);
  for (int h = 0; h < kv_heads; ++h) {
    plan.counts[h] = n / 2;
    for (int j = 0; j < n / 2; ++j) plan.positions[size_t(h) * (n / 2) + j] = 2 * j + (h & 1);
  }
  std::vector<int> lens(kv_heads), freed(c.pages);
  kvevict::compact_result out{lens.data(), static_cast<int>(lens.size()), freed.data(), c.pages};
  const auto exec = kvevict::host.threads(static_cast<int>(state.range(1)));  // 0: every thread
  std::vector<unsigned char> ws(kvevict::compact_workspace_bytes(exec, view) + 1);
  for (auto _ : state) {
    // The view's lengths do not change, so every iteration performs the same moves.
    auto st = kvevict::compact(exec, view, plan.const_view(), out, ws.data(), ws.size());
    benchmark::DoNotOptimize(st);
  }
  // K and V, read and written, for every kept token of every head.
  state.counters["bytes"] =
      benchmark::Counter(4.0 * (n / 2) * kv_heads * head_dim * 2, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

//! The scorer alone on one instruction set (state.range(1): a `scorer_isa`; one the CPU lacks
//! runs the baseline, and the label says which ran).
void BM_window_group(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const auto isa = static_cast<kvevict::host_backend::scorer_isa>(state.range(1));
  one_head_cache c(n);
  auto key = [&](int t) { return c.k.data() + static_cast<std::size_t>(t) * head_dim; };
  std::vector<float> scratch(kvevict::host_backend::window_attention_scratch_floats(head_dim, window, group, n));
  std::vector<float> out(n);
  auto emit = [&](int t, const float* col) { out[t] = col[0] + col[1] + col[2] + col[3]; };
  for (auto _ : state) {
    kvevict::host_backend::window_attention_group_isa(isa, key, n, head_dim, c.q.data(), std::size_t(window) * head_dim,
                                                      group, window, scratch.data(), emit);
    benchmark::DoNotOptimize(out.data());
  }
  static const char* names[] = {"automatic", "baseline", "avx2", "avx512"};
  state.SetLabel(std::string("ran ") + names[static_cast<int>(kvevict::host_backend::resolve_scorer_isa(isa))]);
  state.counters["FLOPs"] = benchmark::Counter(window_flops(n), benchmark::Counter::kIsIterationInvariantRate);
  state.SetItemsProcessed(state.iterations() * int64_t(n));
}
// Second argument: 1 baseline, 2 AVX2, 3 AVX-512 (kvevict::host_backend::scorer_isa).
BENCHMARK(BM_window_group)->ArgsProduct({{8192, 32768}, {1, 2, 3}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_window_scorer)->Arg(8192)->Arg(32768)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_window_triple_loop)->Arg(8192)->Arg(32768)->Unit(benchmark::kMillisecond);
// Arguments: tokens, threads (1, or 0 for every thread).
BENCHMARK(BM_compact)->ArgsProduct({{8192, 32768, 131072}, {1, 0}})->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();

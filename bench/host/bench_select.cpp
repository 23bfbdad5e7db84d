// Selection benchmarks (Google Benchmark; --benchmark_format=json): the plan of SABlock (version
// 2 with one level, version 1, version 2 with sentences), ChunkKV,
// SentenceKV and SnapKV's token top-k on the same precomputed scores (8 KV heads), at 8K, 32K and
// 128K tokens, in one run, so the ratios compare the granularities alone (the window-attention
// scorer they share is benchmarked in bench_host.cpp).
#include <benchmark/benchmark.h>

#include <kvevict/kvevict.hpp>

#include <random>
#include <vector>

namespace {

constexpr int kv_heads = 8, head_dim = 8, page_size = 16, budget = 1024;
const std::int32_t delimiters[] = {1, 2, 3};

struct inputs {
  std::vector<float> k, scores;
  std::vector<int> table, lens, ids;
  int pages;
  explicit inputs(int n) : pages((n + page_size - 1) / page_size) {
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(0, 1);
    k.assign(size_t(pages) * page_size * kv_heads * head_dim, 0.0f);
    scores.resize(size_t(kv_heads) * n);
    for (auto& x : scores) x = u(rng) * u(rng);
    for (int i = 0; i < pages; ++i) table.push_back(i);
    lens = {n};
    ids.resize(n);
    for (auto& x : ids) x = u(rng) < 0.08f ? 1 + int(rng() % 3) : 10 + int(rng() % 1000);
  }
  kvevict::block_table_cache<float> view() {
    return {k.data(), k.data(), table.data(), lens.data(), 1, pages, pages, page_size, kv_heads, head_dim};
  }
};

template <class Granularity>
void BM_plan(benchmark::State& state, Granularity gran) {
  const int n = static_cast<int>(state.range(0));
  const auto exec = kvevict::host.threads(static_cast<int>(state.range(1)));  // 0: every thread
  inputs in(n);
  auto view = in.view();
  kvevict::eviction_policy<kvevict::precomputed, Granularity, kvevict::selector<>> p;
  p.scorer = {in.scores.data(), n};
  p.granularity = gran;
  p.selector = {4, 64, kvevict::uniform_budget{budget}};
  kvevict::signals<float> sig;
  sig.token_ids = in.ids.data();
  sig.token_ids_stride = n;
  kvevict::keep_plan_buffer kept(kv_heads, kvevict::plan_capacity(p, view));
  std::vector<unsigned char> ws(kvevict::plan_workspace_bytes(exec, p, view, sig));
  for (auto _ : state) {
    auto st = kvevict::plan(exec, p, view, sig, kept.view(), ws.data(), ws.size());
    if (!st) state.SkipWithError(st.message().c_str());
    benchmark::DoNotOptimize(kept.positions.data());
  }
  state.SetItemsProcessed(state.iterations() * int64_t(n) * kv_heads);
}

void BM_plan_snapkv_topk(benchmark::State& s) { BM_plan(s, kvevict::token_level{}); }
void BM_plan_sablock(benchmark::State& s) {
  kvevict::adaptive_block<> g;
  g.segmenter = {delimiters, 3};
  BM_plan(s, g);
}
// SABlock version 1 (one level, alpha 0.5, no sentence terms) and version 2 with sentences (id 1
// ends a sentence; the defaults): the bound is version 2 within 1.5x of version 1.
void BM_plan_sablock_v1(benchmark::State& s) {
  kvevict::adaptive_block<> g;
  g.segmenter = {delimiters, 3};
  g.alpha = 0.5, g.beta = 0.0, g.sentence_blocks = false;
  BM_plan(s, g);
}
void BM_plan_sablock_sentences(benchmark::State& s) {
  kvevict::adaptive_block<> g;
  g.segmenter = {delimiters, 3};
  g.segmenter.sentence_ids = delimiters;
  g.segmenter.num_sentence_ids = 1;
  BM_plan(s, g);
}
void BM_plan_chunkkv(benchmark::State& s) { BM_plan(s, kvevict::fixed_block<>{}); }
void BM_plan_sentencekv(benchmark::State& s) {
  kvevict::segment_level<> g;
  g.segmenter = {delimiters, 3};
  BM_plan(s, g);
}

}  // namespace

// Arguments: tokens, threads (1, or 0 for every thread; heads selected in parallel where they are
// independent, ChunkKV's shared plan on one).
BENCHMARK(BM_plan_snapkv_topk)->ArgsProduct({{8192, 32768, 131072}, {1, 0}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_plan_sablock)->ArgsProduct({{8192, 32768, 131072}, {1, 0}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_plan_sablock_v1)->ArgsProduct({{8192, 32768, 131072}, {1, 0}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_plan_sablock_sentences)->ArgsProduct({{8192, 32768, 131072}, {1, 0}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_plan_chunkkv)->ArgsProduct({{8192, 32768, 131072}, {1, 0}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_plan_sentencekv)->ArgsProduct({{8192, 32768, 131072}, {1, 0}})->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();

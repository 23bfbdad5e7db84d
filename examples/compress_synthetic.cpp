// Compresses a small synthetic paged cache (vLLM-style block table) with several presets and
// prints what each kept and how long it took. A needle of 8 tokens sits at 40% depth: the window
// queries attend to its first half (the "key phrase") and not to its second half (the "answer").
//
// Usage: compress_synthetic [--tokens N] [--budget B]
#include <kvevict/kvevict.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using elem = kvevict::bfloat16;
constexpr int kv_heads = 8, q_heads = 32, head_dim = 128, page_size = 16, window = 32, sinks = 4;

struct synthetic {
  int tokens, pages, needle;
  std::vector<elem> k, v, queries;
  std::vector<int> table, lens;
  explicit synthetic(int n) : tokens(n), pages((n + page_size - 1) / page_size), needle(n * 2 / 5) {
    std::mt19937 rng(42);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> topic(head_dim);
    for (auto& x : topic) x = nd(rng);
    k.resize(size_t(pages) * page_size * kv_heads * head_dim);
    v.resize(k.size());
    for (auto& x : k) x = kvevict::from_float<elem>(nd(rng));
    for (auto& x : v) x = kvevict::from_float<elem>(nd(rng));
    table.resize(pages);
    const int step = std::gcd(7, pages) == 1 ? 7 : 1;  // scatter the pages (a permutation)
    for (int i = 0; i < pages; ++i) table[i] = (i * step) % pages;
    lens = {n};
    auto key_at = [&](int t, int h) {
      return &k[((size_t(table[t / page_size]) * page_size + t % page_size) * kv_heads + h) * head_dim];
    };
    for (int h = 0; h < kv_heads; ++h) {
      for (int x = 0; x < head_dim; ++x) key_at(0, h)[x] = kvevict::from_float<elem>(topic[x] * 1.5f);  // sink
      for (int t = needle; t < needle + 4; ++t)
        for (int x = 0; x < head_dim; ++x)
          key_at(t, h)[x] = kvevict::from_float<elem>(topic[x] * 0.6f + 0.4f * nd(rng));
    }
    queries.resize(size_t(q_heads) * window * head_dim);
    for (size_t i = 0; i < queries.size(); ++i)
      queries[i] = kvevict::from_float<elem>(topic[i % head_dim] * 0.5f + 0.5f * nd(rng));
  }
  kvevict::block_table_cache<elem> view() {
    return {k.data(), v.data(), table.data(), lens.data(), 1, pages, pages, page_size, kv_heads, head_dim};
  }
};

template <class Policy>
void run(const char* name, Policy policy, int tokens, int budget, int layer = 0, int num_layers = 1) {
  synthetic s(tokens);
  policy.selector.sinks = sinks;
  policy.selector.window = window;
  policy.selector.budget.entries = budget;
  auto cache = s.view();
  kvevict::signals<elem> sig{s.queries.data(), q_heads};
  sig.layer = layer;
  sig.num_layers = num_layers;
  auto kept = kvevict::keep_plan_buffer::for_cache(policy, cache, sig);
  auto res = kvevict::compact_result_buffer::for_cache(cache);
  auto& out = res.result;
  std::vector<unsigned char> ws(kvevict::evict_workspace_bytes(kvevict::host, policy, cache, sig));
  const auto t0 = std::chrono::steady_clock::now();
  auto st = kvevict::plan(kvevict::host, policy, cache, sig, kept.view(), ws.data(), ws.size());
  const auto t1 = std::chrono::steady_clock::now();
  if (st) st = kvevict::compact(kvevict::host, cache, kept.const_view(), out, ws.data(), ws.size());
  const auto t2 = std::chrono::steady_clock::now();
  if (!st) {
    std::printf("%-22s error: %s\n", name, st.message().c_str());
    return;
  }
  int key_kept = 0;
  for (int h = 0; h < kv_heads; ++h)
    for (int p : kept.kept(h)) key_kept += (p >= s.needle && p < s.needle + 4);
  const double ms_plan = std::chrono::duration<double, std::milli>(t1 - t0).count();
  const double ms_compact = std::chrono::duration<double, std::milli>(t2 - t1).count();
  std::printf("%-22s kept %5d/%d per head  key phrase %2d/%d  freed %3d pages  plan %8.2f ms  compact %6.3f ms\n", name,
              res.new_lens[0], tokens, key_kept, 4 * kv_heads, out.num_freed, ms_plan, ms_compact);
}

}  // namespace

int main(int argc, char** argv) {
  int tokens = 4096, budget = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--tokens"))
      tokens = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--budget"))
      budget = std::atoi(argv[i + 1]);
  }
  std::printf("synthetic cache: %d tokens, %d KV heads x %d dims (bf16), %d query heads, page size %d, budget %d\n",
              tokens, kv_heads, head_dim, q_heads, page_size, budget);
  run("streaming_llm", kvevict::streaming_llm{}, tokens, budget);
  run("snapkv", kvevict::snapkv<>{}, tokens, budget);
  run("snapkv (max pool)", kvevict::snapkv<kvevict::gqa_max, kvevict::max_pool<>>{}, tokens, budget);
  run("pyramidkv layer 0/32", kvevict::pyramidkv<>{}, tokens, budget, 0, 32);
  run("pyramidkv layer 31/32", kvevict::pyramidkv<>{}, tokens, budget, 31, 32);
  return 0;
}

// One decode-time eviction step for a batch (Google Benchmark; --benchmark_format=json):
// 64 sequences of about 8K tokens in a FlashInfer-style CSR page table (8 KV heads x 128 dims,
// bf16, 32 query heads, page size 16), every one past budget + slack; H2O with running sums.
// The step = decode_budgets + evict (plan + compact) + compact_attention_sums.
#include <benchmark/benchmark.h>

#include <kvevict/kvevict.hpp>
#include <kvevict/support/niah.hpp>

#include <vector>

namespace {

void BM_decode_step_batch(benchmark::State& state) {
  const int seqs = static_cast<int>(state.range(0)), base_len = static_cast<int>(state.range(1));
  const int kvh = 8, hq = 32, d = 128, ps = 16, budget = 1024, slack = 64;
  std::vector<std::int32_t> lens(seqs), indptr(1, 0), indices, last;
  for (int s = 0; s < seqs; ++s) {
    lens[s] = base_len + 1 + (s * 37) % 200;  // different lengths, all past budget + slack
    const int pages = (lens[s] + ps - 1) / ps;
    for (int p = 0; p < pages; ++p) indices.push_back(static_cast<int>(indices.size()));
    indptr.push_back(static_cast<int>(indices.size()));
    last.push_back(lens[s] - (pages - 1) * ps);
  }
  const int num_pages = static_cast<int>(indices.size());
  std::vector<kvevict::bfloat16> k(std::size_t(num_pages) * ps * kvh * d), v(k.size());
  kvevict::synthetic::rng r(5);
  for (auto& x : k) x = kvevict::from_float<kvevict::bfloat16>(r.normal());
  for (auto& x : v) x = kvevict::from_float<kvevict::bfloat16>(r.normal());
  const int stride = base_len + 256;
  std::vector<float> sums(std::size_t(seqs) * hq * stride);
  for (auto& x : sums) x = static_cast<float>(r.uniform());
  kvevict::csr_page_cache<kvevict::bfloat16> cache{
      k.data(), v.data(), indptr.data(), indices.data(), last.data(), seqs, num_pages, ps, kvh, d};
  kvevict::h2o<> p;
  p.selector = {4, 32, kvevict::uniform_budget{budget}};
  std::vector<std::int32_t> seq_budgets(seqs), seq_windows(seqs), new_lens(std::size_t(seqs) * kvh), freed(num_pages),
      old_lens(std::size_t(seqs) * kvh);
  for (int i = 0; i < seqs * kvh; ++i) old_lens[i] = lens[i / kvh];
  kvevict::signals<kvevict::bfloat16> sig;
  sig.num_q_heads = hq;
  sig.attention_sums = sums.data();
  sig.sums_stride = stride;
  sig.seq_budgets = seq_budgets.data();
  sig.seq_windows = seq_windows.data();
  kvevict::keep_plan_buffer kept(seqs * kvh, budget);
  std::vector<unsigned char> ws(kvevict::evict_workspace_bytes(kvevict::host, p, cache, sig) + 1);
  for (auto _ : state) {
    const int n = kvevict::decode_budgets(lens.data(), seqs, budget, slack, 4, 32, nullptr, seq_budgets.data(),
                                          seq_windows.data());
    kvevict::compact_result out{new_lens.data(), static_cast<int>(new_lens.size()), freed.data(), num_pages};
    const auto st = kvevict::evict(kvevict::host, p, cache, sig, kept.view(), out, ws.data(), ws.size());
    if (!st || n != seqs) state.SkipWithError(st.message().c_str());
    kvevict::compact_attention_sums(kept.const_view(), seqs, kvh, hq, sums.data(), stride, old_lens.data());
    benchmark::DoNotOptimize(out.num_freed);
  }
  state.counters["sequences"] = seqs;
  state.counters["freed_pages_per_step"] = static_cast<double>(num_pages - seqs * (budget / ps));
}

}  // namespace

BENCHMARK(BM_decode_step_batch)->Args({64, 8192})->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();

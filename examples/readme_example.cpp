// The README's usage example: README.md shows this file verbatim (a test checks), CI runs it.
#include <cstdio>
#include <kvevict/kvevict.hpp>
#include <vector>

int main() {
  const int pages = 64, page_size = 16, kv_heads = 8, q_heads = 32, head_dim = 128, len = 1000, window = 32;
  std::vector<kvevict::bfloat16> k(size_t(pages) * page_size * kv_heads * head_dim, {0x3f80}), v = k;  // 1.0
  std::vector<int> block_table(pages), seq_lens = {len};  // one sequence, vLLM-style table
  for (int i = 0; i < pages; ++i) block_table[i] = i;
  kvevict::block_table_cache<kvevict::bfloat16> cache{.k = k.data(),
                                                      .v = v.data(),
                                                      .block_table = block_table.data(),
                                                      .seq_lens = seq_lens.data(),
                                                      .num_seqs_ = 1,
                                                      .block_table_stride_ = pages,
                                                      .num_pages_ = pages,
                                                      .page_size_ = page_size,
                                                      .num_kv_heads_ = kv_heads,
                                                      .head_dim_ = head_dim};
  // The last `window` queries of every query head, rotary applied: [num_seqs, q_heads, window, head_dim].
  std::vector<kvevict::bfloat16> queries(size_t(q_heads) * window * head_dim, {0x3f80});
  kvevict::signals<kvevict::bfloat16> sig{.queries = queries.data(), .num_q_heads = q_heads};

  kvevict::snapkv<> policy;                                              // window attention + pooling + top-k
  policy.selector = {4, window, kvevict::uniform_budget{256}};           // sinks, window, entries per head
  auto kept = kvevict::keep_plan_buffer::for_cache(policy, cache, sig);  // a row per (sequence, KV head)
  auto out = kvevict::compact_result_buffer::for_cache(cache);           // new lengths, freed page ids
  kvevict::status st = kvevict::evict(kvevict::host, policy, cache, sig, kept.view(), out.result);
  if (!st) {
    std::puts(st.message().c_str());
    return 1;
  }
  std::printf("kept %d of %d tokens per head, freed %d pages\n", out.new_lens[0], len, out.result.num_freed);
  const int pages_before = (len + page_size - 1) / page_size, pages_after = 256 / page_size;
  return out.new_lens[0] == 256 && out.result.num_freed == pages_before - pages_after ? 0 : 1;
}

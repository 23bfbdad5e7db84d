// Downstream use: StreamingLLM over a small vLLM-style cache; exits non-zero on a wrong plan.
#include <kvevict/kvevict.hpp>

#include <cstdio>
#include <vector>

int main() {
  const int pages = 4, page_size = 4, heads = 2, dim = 8, len = 14;
  std::vector<float> k(pages * page_size * heads * dim, 1.0f), v = k;
  std::vector<int> table = {2, 0, 3, 1}, lens = {len};
  kvevict::block_table_cache<float> cache{k.data(), v.data(), table.data(), lens.data(), 1,
                                          4,        pages,    page_size,    heads,       dim};
  kvevict::streaming_llm policy;
  policy.selector = {2, 2, kvevict::uniform_budget{6}};
  kvevict::keep_plan_buffer kept(heads, kvevict::plan_capacity(policy, cache));
  kvevict::signals<float> none;
  if (!kvevict::plan(kvevict::host, policy, cache, none, kept.view()).ok()) return 1;
  const std::vector<int> want = {0, 1, 10, 11, 12, 13};
  if (kept.kept(0) != want || kept.kept(1) != want) return 2;
  std::puts("consumer ok");
  return 0;
}

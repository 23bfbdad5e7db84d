// Must NOT compile: compact over a view of const keys and values (compaction writes in place).
#include <kvevict/kvevict.hpp>

int main() {
  float k[64] = {}, v[64] = {};
  const std::int32_t lens[1] = {8};
#ifdef KVEVICT_COMPILE_OK
  kvevict::dense_cache<float> cache{k, v, lens, 1, 1, 8, 8};
#else
  kvevict::dense_cache<const float> cache{k, v, lens, 1, 1, 8, 8};
#endif
  kvevict::keep_plan_buffer kept(1, 8);
  auto out = kvevict::compact_result_buffer::for_cache(cache);
  return kvevict::compact(kvevict::host, cache, kept.const_view(), out.result).ok() ? 0 : 1;
}

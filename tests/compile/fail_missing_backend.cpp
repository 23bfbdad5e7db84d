// Must NOT compile: a front door called without the backend tag. The test passes when the
// compiler prints the library's sentence (tests/CMakeLists.txt, PASS_REGULAR_EXPRESSION).
#include <kvevict/kvevict.hpp>

int main() {
  float k[64] = {}, v[64] = {};
  const std::int32_t lens[1] = {8};
  kvevict::dense_cache<float> cache{k, v, lens, 1, 1, 8, 8};
  kvevict::signals<float> sig;
  kvevict::streaming_llm policy;
  auto kept = kvevict::keep_plan_buffer::for_cache(policy, cache, sig);
#ifdef KVEVICT_COMPILE_OK
  return kvevict::plan(kvevict::host, policy, cache, sig, kept.view()).ok() ? 0 : 1;
#else
  return kvevict::plan(policy, cache, sig, kept.view()).ok() ? 0 : 1;  // forgot kvevict::host
#endif
}

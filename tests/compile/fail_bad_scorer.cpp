// Must NOT compile: a policy whose scorer lacks `score` (a Scorer, policy/hooks.hpp). The test
// passes when the compiler prints the library's sentence (tests/CMakeLists.txt).
#include <kvevict/kvevict.hpp>

struct my_scorer {  // a scorer that forgot its main member
  template <class Cache, class T>
  kvevict::status validate(const Cache&, const kvevict::signals<T>&, int) const {
    return kvevict::ok_status();
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int, int, int) const {
    return 0;
  }
#ifdef KVEVICT_COMPILE_OK
  template <class Cache, class T>
  void score(const Cache& c, const kvevict::signals<T>&, int seq, int, float* out, std::size_t stride, void*) const {
    for (int h = 0; h < c.num_kv_heads(); ++h)
      for (int t = 0; t < c.seq_len(seq, h); ++t) out[static_cast<std::size_t>(h) * stride + t] = static_cast<float>(t);
  }
#endif
};

int main() {
  float k[64] = {}, v[64] = {};
  const std::int32_t lens[1] = {8};
  kvevict::dense_cache<float> cache{k, v, lens, 1, 1, 8, 8};
  kvevict::signals<float> sig;
  kvevict::eviction_policy<my_scorer, kvevict::token_level, kvevict::selector<>> policy;
  auto kept = kvevict::keep_plan_buffer::for_cache(policy, cache, sig);
  return kvevict::plan(kvevict::host, policy, cache, sig, kept.view()).ok() ? 0 : 1;
}

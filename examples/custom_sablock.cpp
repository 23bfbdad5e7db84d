// Plugging your own scorer and segmenter into SABlock without touching the library.
//
// value_norm_scorer: a token scores the L2 norm of its value (small structs with validate /
// scratch_bytes / score, see scorer/positional.hpp). every_k_segmenter: a boundary every k tokens
// (validate / scratch_bytes / segment, see segment/segmenters.hpp).
#include <kvevict/kvevict.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

struct value_norm_scorer {
  template <class Cache, class T>
  kvevict::status validate(const Cache&, const kvevict::signals<T>&, int) const {
    return kvevict::ok_status();
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int, int, int) const {
    return 0;
  }
  template <class Cache, class T>
  void score(const Cache& c, const kvevict::signals<T>&, int seq, int, float* out, std::size_t stride, void*) const {
    for (int h = 0; h < c.num_kv_heads(); ++h)
      for (int t = 0; t < c.seq_len(seq, h); ++t) {
        const auto* k = c.value(c.page(seq, h, t / c.page_size()), t % c.page_size(), h);
        float s = 0;
        for (int x = 0; x < c.head_dim(); ++x) s += kvevict::to_float(k[x]) * kvevict::to_float(k[x]);
        out[h * stride + t] = std::sqrt(s);
      }
  }
};

struct every_k_segmenter {
  int k = 6;
  template <class Cache, class T>
  kvevict::status validate(const Cache&, const kvevict::signals<T>&) const {
    return k > 0 ? kvevict::ok_status()
                 : kvevict::make_error(kvevict::errc::invalid_argument, "segmenter.k", "must be > 0");
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int) const {
    return 0;
  }
  template <class Cache, class T>
  int segment(const Cache&, const kvevict::signals<T>&, int, int, int lo, int hi, std::int32_t* offsets, void*) const {
    int c = 0;
    offsets[0] = lo;
    for (int t = lo + k; t < hi; t += k) offsets[++c] = t;
    if (hi > lo) offsets[++c] = hi;
    return c;
  }
};

int main() {
  const int pages = 8, page_size = 16, heads = 2, dim = 16, len = 120;
  std::vector<float> k(pages * page_size * heads * dim), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) v[i] = std::sin(0.37f * float(i)) * (1.0f + float(i % 97) / 50.0f);
  std::vector<int> table = {5, 1, 7, 0, 2, 6, 3, 4}, lens = {len};
  kvevict::block_table_cache<float> cache{k.data(), v.data(), table.data(), lens.data(), 1,
                                          pages,    pages,    page_size,    heads,       dim};

  kvevict::sablock<every_k_segmenter, value_norm_scorer> policy;  // segmenter, scorer
  policy.selector = {4, 8, kvevict::uniform_budget{40}};
  policy.granularity.segmenter.k = 6;
  kvevict::keep_plan_buffer kept(heads, kvevict::plan_capacity(policy, cache));
  const auto st = kvevict::plan(kvevict::host, policy, cache, kvevict::signals<float>{}, kept.view());
  if (!st) {
    std::puts(st.message().c_str());
    return 1;
  }
  for (int h = 0; h < heads; ++h) {
    std::printf("head %d keeps %zu:", h, kept.kept(h).size());
    for (int p : kept.kept(h)) std::printf(" %d", p);
    std::printf("\n");
    if (kept.kept(h).size() != 40u) return 1;
  }
  return 0;
}

//! \file scorer/window_attention.hpp
//! Window-attention scorer (SnapKV): how much the last `window` queries attend to each key.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "../concepts.hpp"
#include "../host/window_attention.hpp"
#include "../signals.hpp"
#include "../status.hpp"
#include "pooling.hpp"
#include "reduce.hpp"

namespace kvevict {

namespace detail {
//! Checks the query signals shared by attention-based scorers.
template <class Cache, class T>
status validate_queries(const Cache& cache, const signals<T>& sig, int window) {
  if (sig.queries == nullptr)
    return make_error(errc::invalid_argument, "signals.queries", "this scorer needs the window queries");
  if (sig.num_q_heads <= 0 || sig.num_q_heads % cache.num_kv_heads() != 0)
    return make_error(errc::shape_mismatch, "signals.num_q_heads",
                      "must be a positive multiple of the cache's KV heads");
  if (sig.num_q_heads / cache.num_kv_heads() > 64)
    return make_error(errc::invalid_argument, "signals.num_q_heads",
                      "at most 64 query heads per KV head are supported");
  if (window < 1)
    return make_error(errc::invalid_argument, "selector.window", "window attention needs at least one query");
  if (sig.query_rows != 0 && sig.query_rows < window)
    return make_error(errc::shape_mismatch, "signals.query_rows", "fewer query rows than the selector's window");
  return ok_status();
}

template <class Cache>
struct key_reader {
  const Cache* cache;
  int seq, head, page_size;
  const typename Cache::value_type* operator()(int t) const {
    return cache->key(cache->page(seq, head, t / page_size), t % page_size, head);
  }
  bool scaled;  // the view holds per-(token, head) key scales
  //! The key's per-(token, head) scale (1 without token scales).
  float scale(int t) const {
    return scaled ? key_token_scale_of(*cache, cache->page(seq, head, t / page_size), t % page_size, head) : 1.0f;
  }
};

template <class Cache>
key_reader<Cache> keys_of(const Cache& c, int seq, int head) {
  return key_reader<Cache>{&c, seq, head, c.page_size(), holds_token_scales(c, true)};
}
}  // namespace detail

//! Window attention (SnapKV, arXiv 2404.14469; the kvpress formula): for every key, the softmax
//! attention of each of the last `window` queries (causal inside the window, scaled by
//! `1/sqrt(head_dim)`), averaged over the window, reduced over the GQA group by `Reduce`, then
//! pooled by `Pool` over the keys before the window (`[0, n - window)`, as the PyTorch path does).
//!
//! Needs `signals.queries` and `signals.num_q_heads`. Query head `q` uses KV head
//! `q / (num_q_heads / kv_heads)`. Never materialises the attention matrix: scratch is
//! O(tokens + window x head_dim x group). Checked against a double-precision reference and the
//! PyTorch formula of `torch_path_baseline.py` in tests/host.
template <class Reduce = gqa_mean, class Pool = avg_pool<pad_zeros>>
struct window_attention {
  static constexpr bool needs_window_queries = true;  // plan checks every scored sequence has >= 1
  using reduce_type = Reduce;
  using pool_type = Pool;
  int pool_kernel = 5;  //!< pooling window (ignored with no_pool); 5 as in kvpress/SnapKV

  template <class Cache, class T>
  status validate(const Cache& cache, const signals<T>& sig, int window) const {
    KVEVICT_TRY(detail::validate_queries(cache, sig, window));
    if (Pool::enabled && pool_kernel < 1)
      return make_error(errc::invalid_argument, "scorer.pool_kernel", "must be >= 1");
    return ok_status();
  }

  template <class Cache>
  std::size_t scratch_bytes(const Cache& cache, int window, int num_q_heads, int max_len) const {
    const int group = num_q_heads / cache.num_kv_heads();
    return sizeof(float) * (host_backend::window_attention_scratch_floats(cache.head_dim(), window, group, max_len) +
                            (Pool::enabled ? static_cast<std::size_t>(max_len) : 0));
  }

  //! Scores of head `head` of sequence `seq` with its window `window` (<= sig.query_rows):
  //! `out[t]` for `t < seq_len(seq, head)`. Heads are independent: `plan` scores them on several
  //! threads, each with its own `scratch` (scratch_bytes).
  template <class Cache, class T>
  void score_head(const Cache& cache, const signals<T>& sig, int seq, int head, int window, float* out,
                  void* scratch) const {
    const int kvh = cache.num_kv_heads(), d = cache.head_dim();
    const int group = sig.num_q_heads / kvh, rows = sig.query_rows > 0 ? sig.query_rows : window;
    float* fs = static_cast<float*>(scratch);
    const int n = cache.seq_len(seq, head);
    const T* q = sig.queries +
                 ((static_cast<std::size_t>(seq) * sig.num_q_heads + static_cast<std::size_t>(head) * group) * rows +
                  static_cast<std::size_t>(rows - window)) *
                     d;
    host_backend::window_attention_group(
        detail::keys_of(cache, seq, head), n, d, q, static_cast<std::size_t>(rows) * d, group, window, fs,
        [&](int t, const float* col) { out[t] = Reduce::reduce(col, group); }, detail::key_scale_of(cache));
    if constexpr (Pool::enabled) {
      float* raw = fs + host_backend::window_attention_scratch_floats(d, window, group, n);
      std::copy(out, out + n, raw);
      host_backend::pool_before_window<Pool>(raw, out, n, window, pool_kernel);
    }
  }

  //! Scores of sequence `seq` with its window `window` (<= sig.query_rows):
  //! `out[h * stride + t]` for `t < seq_len(seq, h)`.
  template <class Cache, class T>
  void score(const Cache& cache, const signals<T>& sig, int seq, int window, float* out, std::size_t stride,
             void* scratch) const {
    for (int h = 0; h < cache.num_kv_heads(); ++h)
      score_head(cache, sig, seq, h, window, out + static_cast<std::size_t>(h) * stride, scratch);
  }
};

}  // namespace kvevict

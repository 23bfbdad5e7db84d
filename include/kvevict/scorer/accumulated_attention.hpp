//! \file scorer/accumulated_attention.hpp
//! Accumulated attention (H2O): the attention every key has received so far.
#pragma once

#include <cmath>
#include <cstddef>

#include "../detail/checks.hpp"
#include "../signals.hpp"
#include "../status.hpp"
#include "reduce.hpp"
#include "window_attention.hpp"

namespace kvevict {

//! Accumulated attention (H2O, arXiv 2306.14048): the running column sums of the attention
//! probabilities each key received, as the engine accumulates them (`signals.attention_sums`,
//! per query head), reduced over the GQA group by `Reduce`. For a one-shot prefill the sums can be
//! computed by `host_backend::prefill_attention_sums`. Rejects NaN or infinite sums.
template <class Reduce = gqa_mean>
struct accumulated_attention {
  using reduce_type = Reduce;

  template <class Cache, class T>
  status validate(const Cache& cache, const signals<T>& sig, int /*window*/) const {
    KVEVICT_TRY(check_signals(cache, sig));
    for (int s = 0; s < cache.num_seqs(); ++s) {
      for (int h = 0; h < cache.num_kv_heads(); ++h) {
        const int n = cache.seq_len(s, h);
        KVEVICT_TRY(detail::status_of(detail::check_stride(n, sig.sums_stride, detail::ck_sums_stride)));
      }
      const int group = sig.num_q_heads / cache.num_kv_heads();
      for (int q = 0; q < sig.num_q_heads; ++q) {
        const int n = cache.seq_len(s, q / group);
        const float* row = sig.attention_sums + (static_cast<std::size_t>(s) * sig.num_q_heads + q) * sig.sums_stride;
        for (int t = 0; t < n; ++t)
          if (!std::isfinite(row[t])) return detail::status_of(detail::ck_sums_non_finite);
      }
    }
    return ok_status();
  }

  //! The checks that read no sum (validate's first part).
  template <class Cache, class T>
  status check_signals(const Cache& cache, const signals<T>& sig) const {
    if (sig.attention_sums == nullptr)
      return make_error(errc::invalid_argument, "signals.attention_sums",
                        "H2O scoring needs accumulated attention sums");
    if (sig.num_q_heads <= 0 || sig.num_q_heads % cache.num_kv_heads() != 0 ||
        sig.num_q_heads / cache.num_kv_heads() > 64)
      return make_error(errc::shape_mismatch, "signals.num_q_heads",
                        "must be a positive multiple of the cache's KV heads, at most 64 per KV head");
    return ok_status();
  }

  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int, int, int) const {
    return 0;
  }

  template <class Cache, class T>
  void score(const Cache& cache, const signals<T>& sig, int seq, int /*window*/, float* out, std::size_t stride,
             void* /*scratch*/) const {
    const int kvh = cache.num_kv_heads(), group = sig.num_q_heads / kvh;
    float vals[64];
    for (int h = 0; h < kvh; ++h) {
      const int n = cache.seq_len(seq, h);
      const float* base =
          sig.attention_sums +
          (static_cast<std::size_t>(seq) * sig.num_q_heads + static_cast<std::size_t>(h) * group) * sig.sums_stride;
      for (int t = 0; t < n; ++t) {
        for (int j = 0; j < group; ++j) vals[j] = base[static_cast<std::size_t>(j) * sig.sums_stride + t];
        out[static_cast<std::size_t>(h) * stride + t] = Reduce::reduce(vals, group);
      }
    }
  }
};

namespace host_backend {

//! Attention received by every key from the last `num_queries` queries of sequence `seq` (causal:
//! query `r` sits at position `n - num_queries + r` and sees keys up to it), summed over those
//! queries, per query head: `sums[q * sums_stride + t]`. With `num_queries = n` this is the H2O
//! accumulation of a whole prefill; with the window queries, what a decode-time H2O has gathered
//! after them. Never the attention matrix (see window_attention_group); cost O(num_queries x n x head_dim) per head.
//!
//! \param queries  [num_q_heads, num_queries, head_dim]
//! \param sums     [num_q_heads, sums_stride] output, entries [0, n) written
//! \param scratch  window_attention_scratch_floats(head_dim, num_queries, num_q_heads / kv_heads, longest row)
//!                 floats
template <class Cache, class T>
void attention_sums(const Cache& cache, int seq, const T* queries, int num_q_heads, int num_queries, float* sums,
                    std::size_t sums_stride, float* scratch) {
  const int kvh = cache.num_kv_heads(), d = cache.head_dim(), group = num_q_heads / kvh;
  for (int h = 0; h < kvh; ++h) {
    const int n = cache.seq_len(seq, h);
    const T* q = queries + static_cast<std::size_t>(h) * group * num_queries * d;
    float* o = sums + static_cast<std::size_t>(h) * group * sums_stride;
    window_attention_group(detail::keys_of(cache, seq, h), n, d, q, static_cast<std::size_t>(num_queries) * d, group,
                           num_queries, scratch, [&](int t, const float* col) {
                             for (int j = 0; j < group; ++j)
                               o[static_cast<std::size_t>(j) * sums_stride + t] =
                                   col[j] * static_cast<float>(num_queries);
                           }, detail::key_scale_of(cache));
  }
}

//! `attention_sums` over every query of a prefill (`queries`: [num_q_heads, n, head_dim]).
template <class Cache, class T>
void prefill_attention_sums(const Cache& cache, int seq, const T* queries, int num_q_heads, float* sums,
                            std::size_t sums_stride, float* scratch) {
  attention_sums(cache, seq, queries, num_q_heads, cache.seq_len(seq, 0), sums, sums_stride, scratch);
}

}  // namespace host_backend
}  // namespace kvevict

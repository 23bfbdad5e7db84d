//! \file scorer/precomputed.hpp
//! Scores the engine computed itself (for example in its own fused attention kernel).
#pragma once

#include <cstddef>

#include "../detail/checks.hpp"
#include "../signals.hpp"
#include "../status.hpp"

namespace kvevict {

//! Serves caller-computed token scores (higher = keep):
//! `scores[(seq * kv_heads + head) * stride + t]` for `t < seq_len(seq, head)`. Lets any
//! granularity and selector run on scores from elsewhere; NaN or infinite scores are rejected by
//! `plan` like any scorer's.
struct precomputed {
  const float* scores = nullptr;  // [num_seqs, kv_heads, stride]
  int stride = 0;

  template <class Cache, class T>
  status validate(const Cache& cache, const signals<T>&, int) const {
    if (scores == nullptr) return make_error(errc::invalid_argument, "scorer.scores", "null scores");
    for (int s = 0; s < cache.num_seqs(); ++s)
      for (int h = 0; h < cache.num_kv_heads(); ++h)
        KVEVICT_TRY(detail::status_of(detail::check_stride(cache.seq_len(s, h), stride, detail::ck_precomputed_stride)));
    return ok_status();
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int, int, int) const {
    return 0;
  }
  template <class Cache, class T>
  void score(const Cache& c, const signals<T>&, int seq, int, float* out, std::size_t out_stride, void*) const {
    const int kvh = c.num_kv_heads();
    for (int h = 0; h < kvh; ++h) {
      const float* in = scores + (static_cast<std::size_t>(seq) * kvh + h) * static_cast<std::size_t>(stride);
      for (int t = 0, n = c.seq_len(seq, h); t < n; ++t) out[static_cast<std::size_t>(h) * out_stride + t] = in[t];
    }
  }
};

}  // namespace kvevict

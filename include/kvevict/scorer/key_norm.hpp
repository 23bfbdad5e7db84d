//! \file scorer/key_norm.hpp
//! Key-norm scorer: keys with a small L2 norm attract attention, so they score high.
#pragma once

#include <cmath>
#include <cstddef>

#include "../concepts.hpp"
#include "../numeric.hpp"
#include "../signals.hpp"
#include "../status.hpp"
#include "positional.hpp"

namespace kvevict {

//! Score `-||k_t||_2` (Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
//! Compression", arXiv 2406.11430: low-norm keys draw high attention). Reads no signal; costs
//! one pass over the keys. Checked against a naive norm in tests/host.
struct key_norm : reads_only_the_cache {
  //! The score of token t of (sequence, head): -||k||, squares summed in head_dim order, each
  //! product rounded before the add (the host and the CUDA scorer both call this: the same bits).
  template <class Cache>
  KVEVICT_HOST_DEVICE static float of(const Cache& c, int seq, int h, int t) {
    const int pg = c.page(seq, h, t / c.page_size()), slot = t % c.page_size();
    const auto* k = c.key(pg, slot, h);
    float s = 0.0f;
    for (int x = 0; x < c.head_dim(); ++x) {
      const float v = to_float(k[x]);
#if defined(__CUDA_ARCH__)
      s = __fadd_rn(s, __fmul_rn(v, v));
#else
      s += v * v;
#endif
    }
    // the stored keys times the view's k_scale and the row's token scale (x * 1 is x without them)
    return -std::sqrt(s) * detail::key_scale_of(c) * detail::key_token_scale_of(c, pg, slot, h);
  }
  template <class Cache, class T>
  void score(const Cache& c, const signals<T>&, int seq, int, float* out, std::size_t stride, void*) const {
    for (int h = 0; h < c.num_kv_heads(); ++h)
      for (int t = 0, n = c.seq_len(seq, h); t < n; ++t) out[static_cast<std::size_t>(h) * stride + t] = of(c, seq, h, t);
  }
};

}  // namespace kvevict

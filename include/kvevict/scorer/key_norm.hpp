//! \file scorer/key_norm.hpp
//! Key-norm scorer: keys with a small L2 norm attract attention, so they score high.
#pragma once

#include <cmath>
#include <cstddef>

#include "../numeric.hpp"
#include "../signals.hpp"
#include "../status.hpp"
#include "positional.hpp"

namespace kvevict {

//! Score `-||k_t||_2` (Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
//! Compression", arXiv 2406.11430: low-norm keys draw high attention). Reads no signal; costs
//! one pass over the keys. Checked against a naive norm in tests/host.
struct key_norm : reads_only_the_cache {
  template <class Cache, class T>
  void score(const Cache& c, const signals<T>&, int seq, int, float* out, std::size_t stride, void*) const {
    for (int h = 0; h < c.num_kv_heads(); ++h)
      for (int t = 0, n = c.seq_len(seq, h); t < n; ++t) {
        const auto* k = c.key(c.page(seq, h, t / c.page_size()), t % c.page_size(), h);
        float s = 0.0f;
        for (int x = 0; x < c.head_dim(); ++x) s += to_float(k[x]) * to_float(k[x]);
        out[static_cast<std::size_t>(h) * stride + t] = -std::sqrt(s);
      }
  }
};

}  // namespace kvevict

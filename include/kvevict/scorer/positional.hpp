//! \file scorer/positional.hpp
//! Positional scorer (StreamingLLM): later tokens score higher.
#pragma once

#include <cstddef>

#include "../signals.hpp"
#include "../status.hpp"

namespace kvevict {

//! Base of scorers that read nothing but the cache: nothing to validate, no scratch.
struct reads_only_the_cache {
  template <class Cache, class T>
  status validate(const Cache&, const signals<T>&, int) const {
    return ok_status();
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int, int, int) const {
    return 0;
  }
};

//! Positional score `t` for token `t` (StreamingLLM, arXiv 2309.17453): with the sinks protected,
//! top-k keeps the most recent tokens, i.e. sinks + the last `budget - sinks` tokens. Reads no
//! signal.
struct positional : reads_only_the_cache {
  template <class Cache, class T>
  void score(const Cache& cache, const signals<T>&, int seq, int, float* out, std::size_t stride, void*) const {
    for (int h = 0; h < cache.num_kv_heads(); ++h)
      for (int t = 0; t < cache.seq_len(seq, h); ++t)
        out[static_cast<std::size_t>(h) * stride + t] = static_cast<float>(t);
  }
};

}  // namespace kvevict

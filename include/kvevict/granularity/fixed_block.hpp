//! \file granularity/fixed_block.hpp
//! Fixed blocks (ChunkKV): the granularity `fixed_block`.
#pragma once

#include "block_common.hpp"

namespace kvevict {

//! Fixed blocks (ChunkKV, arXiv 2502.00299): the compressible range is cut into chunks of
//! `chunk` tokens from its start; chunks are kept whole by mean score while they fit, then the
//! budget is filled with the best remaining tokens (exact budget, no rounding to whole chunks).
//! `Sharing = shared_heads` (ChunkKV's choice) scores chunks on the sum over heads.
template <class Sharing = shared_heads>
struct fixed_block {
  using sharing_type = Sharing;
  int chunk = 10;  //!< chunk length in tokens (ChunkKV's default is 10)

  template <class Cache, class T>
  status validate(const Cache&, const signals<T>&) const {
    if (chunk < 1) return make_error(errc::invalid_argument, "granularity.chunk", "must be >= 1");
    return ok_status();
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int max_len) const {
    return detail::block_scratch::layout(max_len, 0).total();
  }
  KVEVICT_BLOCK_GRANULARITY_ENTRIES(Sharing)
  template <class Cache>
  detail::block_scratch carve(const Cache& cache, int seq, void* scratch) const {
    return detail::block_scratch::carve_for(cache, seq, scratch, 0);
  }
  //! Marks the best chunks, then the best remaining tokens.
  template <class Cache, class T>
  auto marker(const Cache&, const signals<T>&, int) const {
    return [this](const double* row, int lo, int hi, int bc, const detail::block_scratch& s, int) {
      int c = 0;
      s.offsets[0] = lo;
      for (int t = lo; t < hi;) {
        t = t + chunk < hi ? t + chunk : hi;
        s.offsets[++c] = t;
      }
      host_backend::select_units_then_fill(row, lo, hi, s.offsets, c, bc, s.keep, s.order, s.idx, s.r);
    };
  }
};

}  // namespace kvevict

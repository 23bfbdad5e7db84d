//! \file granularity/segment_level.hpp
//! Whole segments (SentenceKV): the granularity `segment_level`.
#pragma once

#include "../segment/segmenters.hpp"
#include "block_common.hpp"

namespace kvevict {

//! Whole segments (SentenceKV-style, arXiv 2504.00970): segments from `Segmenter` are kept whole
//! by mean score while they fit, then the budget is filled with the best remaining tokens.
template <class Segmenter = delimiter_segmenter, class Sharing = independent_heads>
struct segment_level {
  using sharing_type = Sharing;
  Segmenter segmenter{};

  template <class Cache, class T>
  status validate(const Cache& cache, const signals<T>& sig) const {
    return segmenter.validate(cache, sig);
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache& cache, int max_len) const {
    return detail::segmented_scratch_bytes(segmenter, cache, max_len);
  }
  KVEVICT_BLOCK_GRANULARITY_ENTRIES(Sharing)
  template <class Cache>
  detail::block_scratch carve(const Cache& cache, int seq, void* scratch) const {
    return detail::block_scratch::carve_for(cache, seq, scratch, segmenter);
  }
  //! Segments the head's compressible range, marks the best whole segments, then the best tokens.
  template <class Cache, class T>
  auto marker(const Cache& cache, const signals<T>& sig, int seq) const {
    detail::static_check_segmenter<Segmenter, Cache, T>();
    return [this, &cache, &sig, seq, memo = detail::segmentation_memo{}](
               const double* row, int lo, int hi, int bc, const detail::block_scratch& s, int h) mutable {
      if (!(detail::segments_heads_alike<Segmenter, Cache>::value && memo.holds(lo, hi)))
        memo = {lo, hi, segmenter.segment(cache, sig, seq, h, lo, hi, s.offsets, s.segmenter)};
      host_backend::select_units_then_fill(row, lo, hi, s.offsets, memo.count, bc, s.keep, s.order, s.idx, s.r);
    };
  }
};

}  // namespace kvevict

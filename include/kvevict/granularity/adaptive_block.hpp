//! \file granularity/adaptive_block.hpp
//! Adaptive blocks (SABlock): the granularity `adaptive_block` and the two-level segmenter trait.
#pragma once

#include "../segment/segmenters.hpp"
#include "block_common.hpp"

namespace kvevict {

//! Whether a segmenter offers two levels (`segment_levels`, see delimiter_segmenter).
template <class Seg, class Cache, class T, class = void>
struct has_segment_levels : std::false_type {};
template <class Seg, class Cache, class T>
struct has_segment_levels<
    Seg, Cache, T,
    std::void_t<decltype(std::declval<const Seg&>().segment_levels(
        std::declval<const Cache&>(), std::declval<const signals<T>&>(), 0, 0, 0, 0,
        static_cast<std::int32_t*>(nullptr), static_cast<std::int32_t*>(nullptr), static_cast<int*>(nullptr),
        static_cast<void*>(nullptr)))>> : std::true_type {};

//! SABlock: semantic-aware eviction with adaptive block sizes (arXiv 2510.22556). Implements the
//! paper's three steps as specified in the project's design (docs/sablock.md, version 2):
//! segmentation by `Segmenter` into clauses, and sentences made of clauses when it offers two
//! levels (delimiter_segmenter with `sentence_ids`); refined scores
//! `r = (1 - alpha - beta) a + alpha mean(clause) + beta mean(sentence)`; per sentence, the larger
//! total positive net `V - lambda * c - g * mean(r)` of its clauses' own block sizes (1, 2, 4, ...
//! and the whole clause) or, with `sentence_blocks`, of the whole sentence as one block, at a price
//! `lambda` found by `steps` bisection steps on the budget; then a fill with the best remaining
//! refined scores, so exactly the budget is kept. Double precision; deterministic.
//! Version 1 (sablock.md of the first design) is `beta = 0, sentence_blocks = false` with its
//! `alpha`; with a one-level segmenter the defaults give version 1's plan exactly (a one-clause
//! sentence is guided by `alpha + beta` = 0.5). `alpha + beta = 0, g = 0` is token-level top-k;
//! `block_size = c` forces fixed blocks of c; a large `g` keeps whole units. Checked against the
//! golden cases (version 1) and a naive implementation of version 2.
template <class Segmenter = delimiter_segmenter, class Sharing = independent_heads>
struct adaptive_block {
  using sharing_type = Sharing;
  Segmenter segmenter{};
  double alpha = 0.25;  //!< clause guidance, in [0, 1]
  double g = 2.0;       //!< fragmentation fee in units of the mean refined score, >= 0
  int steps = 32;       //!< bisection steps, >= 1
  int block_size = 0;   //!< 0: adaptive candidate sizes; c > 0: the single candidate c (no sentence blocks)
  double beta = 0.25;   //!< sentence guidance, in [0, 1 - alpha]
  bool sentence_blocks = true;  //!< the whole sentence is a candidate block

  template <class Cache, class T>
  status validate(const Cache& cache, const signals<T>& sig) const {
    KVEVICT_TRY(check_parameters());
    return segmenter.validate(cache, sig);
  }
  //! SABlock's own parameters (validate's first part; reads no table).
  status check_parameters() const {
    if (!(alpha >= 0.0 && alpha <= 1.0))
      return make_error(errc::invalid_argument, "granularity.alpha", "must lie in [0, 1]");
    if (!(beta >= 0.0 && beta <= 1.0)) return make_error(errc::invalid_argument, "granularity.beta", "must lie in [0, 1]");
    if (alpha + beta > 1.0)
      return make_error(errc::invalid_argument, "granularity.alpha + beta", "must be at most 1 (the token keeps the rest)");
    if (!(g >= 0.0) || g > 1e300) return make_error(errc::invalid_argument, "granularity.g", "must be finite and >= 0");
    if (steps < 1 || steps > 200)
      return make_error(errc::invalid_argument, "granularity.steps", "must lie in [1, 200]");
    if (block_size < 0) return make_error(errc::invalid_argument, "granularity.block_size", "must be >= 0");
    return ok_status();
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache& cache, int max_len) const {
    return detail::segmented_scratch_bytes(segmenter, cache, max_len, true);  // with the price bounds
  }
  host_backend::sablock_params params() const { return {alpha, g, steps, block_size, beta, sentence_blocks}; }
  KVEVICT_BLOCK_GRANULARITY_ENTRIES(Sharing)
  template <class Cache>
  detail::block_scratch carve(const Cache& cache, int seq, void* scratch) const {
    return detail::block_scratch::carve_for(cache, seq, scratch, segmenter, true);
  }
  //! Segments the head's range into clauses (and sentences), then SABlock's selection.
  template <class Cache, class T>
  auto marker(const Cache& cache, const signals<T>& sig, int seq) const {
    detail::static_check_segmenter<Segmenter, Cache, T>();
    return [this, &cache, &sig, seq, prm = params(), memo = detail::segmentation_memo{}](
               const double* row, int lo, int hi, int bc, const detail::block_scratch& s, int h) mutable {
      if (!(detail::segments_heads_alike<Segmenter, Cache>::value && memo.holds(lo, hi))) {
        int num_sentences = -1, c;
        if constexpr (has_segment_levels<Segmenter, Cache, T>::value) {
          c = segmenter.segment_levels(cache, sig, seq, h, lo, hi, s.offsets, s.order, &num_sentences, s.segmenter);
        } else {
          c = segmenter.segment(cache, sig, seq, h, lo, hi, s.offsets, s.segmenter);
        }
        memo = {lo, hi, c, num_sentences};
      }
      host_backend::sablock_select(row, lo, hi, s.offsets, memo.count, memo.sentences >= 0 ? s.order : nullptr,
                                   memo.sentences, bc, prm, s.keep, s.r, s.prefix, s.idx, s.bound);
    };
  }
};

}  // namespace kvevict

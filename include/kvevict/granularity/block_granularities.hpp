//! \file granularity/block_granularities.hpp
//! Block- and segment-level granularities: fixed blocks (ChunkKV), whole segments (SentenceKV),
//! adaptive blocks (SABlock). Each keeps the protected tokens and exactly `min(budget, n)` tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "../detail/row_rules.hpp"
#include "../detail/workspace.hpp"
#include "../host/block_select.hpp"
#include "../keep_plan.hpp"
#include "../policy/hooks.hpp"
#include "../segment/segmenters.hpp"
#include "../signals.hpp"
#include "../status.hpp"

namespace kvevict {

//! Head sharing: every KV head selects on its own scores.
struct independent_heads {
  static constexpr bool shared = false;
};
//! Head sharing: scores summed over the KV heads of the layer, one plan for all heads (ChunkKV);
//! the plan can then be reused for the following layers (ChunkKV's layer-wise index reuse).
struct shared_heads {
  static constexpr bool shared = true;
};

namespace detail {

//! Scratch of one sequence for the block granularities.
struct block_scratch {
  double* row;            // [n] scores of the head (or summed over heads)
  double* r;              // [n + 1]
  double* prefix;         // [n + 1]
  std::int32_t* offsets;  // [2n + 2]
  std::int32_t* idx;      // [n]
  std::int32_t* order;    // [n]; SABlock: sentences as clause ranges
  unsigned char* keep;    // [n]
  void* segmenter;        // segmenter scratch

  static workspace_layout<8> layout(int n, std::size_t seg_bytes) {
    const std::size_t m = static_cast<std::size_t>(n) + 2;
    return workspace_layout<8>{{sizeof(double) * m, sizeof(double) * m, sizeof(double) * m,
                                sizeof(std::int32_t) * (2 * m), sizeof(std::int32_t) * m, sizeof(std::int32_t) * m, m,
                                seg_bytes}};
  }
  //! Carves the scratch of sequence `seq` (sized by its longest head), with room for a segmenter's.
  template <class Cache, class Segmenter,
            class = decltype(std::declval<const Segmenter&>().scratch_bytes(std::declval<const Cache&>(), 0))>
  static block_scratch carve_for(const Cache& cache, int seq, void* base, const Segmenter& seg) {
    const int n = longest_head(cache, seq);
    return carve(base, n, seg.scratch_bytes(cache, n));
  }
  template <class Cache>
  static block_scratch carve_for(const Cache& cache, int seq, void* base, std::size_t seg_bytes) {
    return carve(base, longest_head(cache, seq), seg_bytes);
  }
  static block_scratch carve(void* base, int n, std::size_t seg_bytes) {
    void* p[8];
    layout(n, seg_bytes).carve(base, p);
    return {static_cast<double*>(p[0]),        static_cast<double*>(p[1]),
            static_cast<double*>(p[2]),        static_cast<std::int32_t*>(p[3]),
            static_cast<std::int32_t*>(p[4]),  static_cast<std::int32_t*>(p[5]),
            static_cast<unsigned char*>(p[6]), p[7]};
  }
};

//! One row of the flow every block granularity shares: protected tokens, the compressible range,
//! the head's scores (or, shared, their sum over the heads), `mark(row, lo, hi, bc, scratch,
//! head)` marking exactly bc tokens, the plan row of (seq, h).
template <class Sharing, class Cache, class Mark>
void select_block_row(const Cache& cache, int seq, int h, const float* scores, std::size_t stride, const int* budgets,
                      int sinks, int window, keep_plan plan, const block_scratch& ws, Mark& mark) {
  const int kvh = cache.num_kv_heads();
  const int r = seq * kvh + h, n = cache.seq_len(seq, h), b = budgets[h];
  std::int32_t* out = plan.row(r);
  if (n <= b) {
    for (int t = 0; t < n; ++t) out[t] = t;
    plan.counts[r] = n;
    return;
  }
  const auto [lo, hi] = compressible_range(n, sinks, window);
  const int bc = b - lo - (n - hi);
  for (int t = 0; t < n; ++t) {
    double s = 0;
    if (Sharing::shared) {  // over the heads that hold token t (a (sequence, head)-row view may differ)
      for (int hh = 0; hh < kvh; ++hh)
        if (t < cache.seq_len(seq, hh)) s += static_cast<double>(scores[static_cast<std::size_t>(hh) * stride + t]);
    } else {
      s = static_cast<double>(scores[static_cast<std::size_t>(h) * stride + t]);
    }
    ws.row[t] = s;
  }
  std::memset(ws.keep, 0, static_cast<std::size_t>(hi - lo));
  if (bc > 0 && hi > lo) mark(ws.row, lo, hi, bc, ws, h);
  int c = 0;
  for (int t = 0; t < lo; ++t) out[c++] = t;
  for (int t = lo; t < hi; ++t)
    if (ws.keep[t - lo]) out[c++] = t;
  for (int t = hi; t < n; ++t) out[c++] = t;
  plan.counts[r] = c;
}

//! The rows of one sequence: each head on its own, or (shared) head 0's plan copied to the others.
template <class Sharing, class Cache, class Mark>
void select_blocks(const Cache& cache, int seq, const float* scores, std::size_t stride, const int* budgets, int sinks,
                   int window, keep_plan plan, const block_scratch& ws, Mark mark) {
  const int kvh = cache.num_kv_heads();
  for (int h = 0; h < kvh; ++h) {
    const int r = seq * kvh + h;
    if (Sharing::shared && h > 0) {  // one plan for every head
      plan.counts[r] = plan.counts[seq * kvh];
      std::memcpy(plan.row(r), plan.row(seq * kvh), sizeof(std::int32_t) * static_cast<std::size_t>(plan.counts[r]));
      continue;
    }
    select_block_row<Sharing>(cache, seq, h, scores, stride, budgets, sinks, window, plan, ws, mark);
  }
}

//! The two entries of a block granularity `g` from its `carve(cache, seq, scratch)` and
//! `marker(cache, sig, seq)`: `select` (every head of a sequence) and `select_head` (one head, for
//! independent heads, so that `plan` can run the heads on several threads, each with its own
//! scratch). The granularities forward to them (no base class: they stay aggregates).
template <class G, class Cache, class T>
void select_with(const G& g, const Cache& cache, const signals<T>& sig, int seq, const float* scores,
                 std::size_t stride, const int* budgets, int sinks, int window, keep_plan plan, void* scratch) {
  select_blocks<typename G::sharing_type>(cache, seq, scores, stride, budgets, sinks, window, plan,
                                          g.carve(cache, seq, scratch), g.marker(cache, sig, seq));
}
template <class G, class Cache, class T>
void select_head_with(const G& g, const Cache& cache, const signals<T>& sig, int seq, int h, const float* scores,
                      std::size_t stride, const int* budgets, int sinks, int window, keep_plan plan, void* scratch) {
  static_assert(!G::sharing_type::shared, "a shared plan needs every head's scores at once");
  auto mark = g.marker(cache, sig, seq);
  select_block_row<typename G::sharing_type>(cache, seq, h, scores, stride, budgets, sinks, window, plan,
                                             g.carve(cache, seq, scratch), mark);
}

template <class Segmenter, class Cache>
std::size_t segmented_scratch_bytes(const Segmenter& seg, const Cache& cache, int max_len) {
  return block_scratch::layout(max_len, seg.scratch_bytes(cache, max_len)).total();
}

}  // namespace detail

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
  template <class Cache, class T>
  void select(const Cache& cache, const signals<T>& sig, int seq, const float* scores, std::size_t stride,
              const int* budgets, int sinks, int window, keep_plan plan, void* scratch) const {
    detail::select_with(*this, cache, sig, seq, scores, stride, budgets, sinks, window, plan, scratch);
  }
  //! One head's row; only with independent heads (`plan` then runs the heads on several threads).
  template <class Cache, class T, class S = Sharing, std::enable_if_t<!S::shared, int> = 0>
  void select_head(const Cache& cache, const signals<T>& sig, int seq, int h, const float* scores, std::size_t stride,
                   const int* budgets, int sinks, int window, keep_plan plan, void* scratch) const {
    detail::select_head_with(*this, cache, sig, seq, h, scores, stride, budgets, sinks, window, plan, scratch);
  }
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
  template <class Cache, class T>
  void select(const Cache& cache, const signals<T>& sig, int seq, const float* scores, std::size_t stride,
              const int* budgets, int sinks, int window, keep_plan plan, void* scratch) const {
    detail::select_with(*this, cache, sig, seq, scores, stride, budgets, sinks, window, plan, scratch);
  }
  //! One head's row; only with independent heads (`plan` then runs the heads on several threads).
  template <class Cache, class T, class S = Sharing, std::enable_if_t<!S::shared, int> = 0>
  void select_head(const Cache& cache, const signals<T>& sig, int seq, int h, const float* scores, std::size_t stride,
                   const int* budgets, int sinks, int window, keep_plan plan, void* scratch) const {
    detail::select_head_with(*this, cache, sig, seq, h, scores, stride, budgets, sinks, window, plan, scratch);
  }
  template <class Cache>
  detail::block_scratch carve(const Cache& cache, int seq, void* scratch) const {
    return detail::block_scratch::carve_for(cache, seq, scratch, segmenter);
  }
  //! Segments the head's compressible range, marks the best whole segments, then the best tokens.
  template <class Cache, class T>
  auto marker(const Cache& cache, const signals<T>& sig, int seq) const {
    detail::static_check_segmenter<Segmenter, Cache, T>();
    return [this, &cache, &sig, seq](const double* row, int lo, int hi, int bc, const detail::block_scratch& s, int h) {
      const int c = segmenter.segment(cache, sig, seq, h, lo, hi, s.offsets, s.segmenter);
      host_backend::select_units_then_fill(row, lo, hi, s.offsets, c, bc, s.keep, s.order, s.idx, s.r);
    };
  }
};

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
    return detail::segmented_scratch_bytes(segmenter, cache, max_len);
  }
  host_backend::sablock_params params() const { return {alpha, g, steps, block_size, beta, sentence_blocks}; }
  template <class Cache, class T>
  void select(const Cache& cache, const signals<T>& sig, int seq, const float* scores, std::size_t stride,
              const int* budgets, int sinks, int window, keep_plan plan, void* scratch) const {
    detail::select_with(*this, cache, sig, seq, scores, stride, budgets, sinks, window, plan, scratch);
  }
  //! One head's row; only with independent heads (`plan` then runs the heads on several threads).
  template <class Cache, class T, class S = Sharing, std::enable_if_t<!S::shared, int> = 0>
  void select_head(const Cache& cache, const signals<T>& sig, int seq, int h, const float* scores, std::size_t stride,
                   const int* budgets, int sinks, int window, keep_plan plan, void* scratch) const {
    detail::select_head_with(*this, cache, sig, seq, h, scores, stride, budgets, sinks, window, plan, scratch);
  }
  template <class Cache>
  detail::block_scratch carve(const Cache& cache, int seq, void* scratch) const {
    return detail::block_scratch::carve_for(cache, seq, scratch, segmenter);
  }
  //! Segments the head's range into clauses (and sentences), then SABlock's selection.
  template <class Cache, class T>
  auto marker(const Cache& cache, const signals<T>& sig, int seq) const {
    detail::static_check_segmenter<Segmenter, Cache, T>();
    return [this, &cache, &sig, seq, prm = params()](const double* row, int lo, int hi, int bc,
                                                      const detail::block_scratch& s, int h) {
      int num_sentences = -1, c;
      if constexpr (has_segment_levels<Segmenter, Cache, T>::value) {
        c = segmenter.segment_levels(cache, sig, seq, h, lo, hi, s.offsets, s.order, &num_sentences, s.segmenter);
      } else {
        c = segmenter.segment(cache, sig, seq, h, lo, hi, s.offsets, s.segmenter);
      }
      host_backend::sablock_select(row, lo, hi, s.offsets, c, num_sentences >= 0 ? s.order : nullptr, num_sentences,
                                   bc, prm, s.keep, s.r, s.prefix, s.idx);
    };
  }
};

}  // namespace kvevict

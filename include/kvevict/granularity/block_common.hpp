//! \file granularity/block_common.hpp
//! What the block- and segment-level granularities share: head sharing, their scratch, the row
//! flow (protected tokens, compressible range, marking, plan row) and their two entries.
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
#include "../select/row_rule.hpp"
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

//! Whether segmenter `Seg` cuts every KV head of a `Cache` sequence alike (its optional
//! `cuts_heads_alike<Cache>()`; false without it).
template <class Seg, class Cache, class = void>
struct segments_heads_alike : std::false_type {};
template <class Seg, class Cache>
struct segments_heads_alike<Seg, Cache, std::void_t<decltype(Seg::template cuts_heads_alike<Cache>())>>
    : std::bool_constant<Seg::template cuts_heads_alike<Cache>()> {};

//! The last cuts a marker made in its scratch: a later head of the same sequence with the same
//! range reuses them when the segmenter cuts every head alike (the heads of one `select` share one
//! scratch; the marker of `select_head` serves one head). The selections read the cuts, never
//! write them.
struct segmentation_memo {
  int lo = -1, hi = -1, count = 0, sentences = -1;
  bool holds(int l, int h) const { return lo == l && hi == h; }
};

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
  double* bound;          // SABlock: host_backend::sablock_bound_doubles(n); else empty

  static workspace_layout<9> layout(int n, std::size_t seg_bytes, bool price_bounds = false) {
    const std::size_t m = static_cast<std::size_t>(n) + 2;
    return workspace_layout<9>{{sizeof(double) * m, sizeof(double) * m, sizeof(double) * m,
                                sizeof(std::int32_t) * (2 * m), sizeof(std::int32_t) * m, sizeof(std::int32_t) * m, m,
                                seg_bytes, price_bounds ? sizeof(double) * host_backend::sablock_bound_doubles(m) : 0}};
  }
  //! Carves the scratch of sequence `seq` (sized by its longest head), with room for a segmenter's.
  template <class Cache, class Segmenter,
            class = decltype(std::declval<const Segmenter&>().scratch_bytes(std::declval<const Cache&>(), 0))>
  static block_scratch carve_for(const Cache& cache, int seq, void* base, const Segmenter& seg,
                                 bool price_bounds = false) {
    const int n = longest_head(cache, seq);
    return carve(base, n, seg.scratch_bytes(cache, n), price_bounds);
  }
  template <class Cache>
  static block_scratch carve_for(const Cache& cache, int seq, void* base, std::size_t seg_bytes) {
    return carve(base, longest_head(cache, seq), seg_bytes);
  }
  static block_scratch carve(void* base, int n, std::size_t seg_bytes, bool price_bounds = false) {
    void* p[9];
    layout(n, seg_bytes, price_bounds).carve(base, p);
    return {static_cast<double*>(p[0]),        static_cast<double*>(p[1]),
            static_cast<double*>(p[2]),        static_cast<std::int32_t*>(p[3]),
            static_cast<std::int32_t*>(p[4]),  static_cast<std::int32_t*>(p[5]),
            static_cast<unsigned char*>(p[6]), p[7],
            static_cast<double*>(p[8])};
  }
};

//! One row of the flow every block granularity shares: protected tokens, the compressible range,
//! the head's scores (or, shared, their sum over the heads), `mark(row, lo, hi, bc, scratch,
//! head)` marking exactly bc tokens, the plan row of (seq, h).
template <class Sharing, class Cache, class Mark>
void select_block_row(const Cache& cache, int seq, int h, const row_rule& rule, const float* scores, std::size_t stride,
                      const int* budgets, keep_plan plan, const block_scratch& ws, Mark& mark) {
  const int kvh = cache.num_kv_heads();
  const int r = seq * kvh + h, n = cache.seq_len(seq, h), b = budgets[h];
  std::int32_t* out = plan.row(r);
  if (n <= b) {
    for (int t = 0; t < n; ++t) out[t] = t;
    plan.counts[r] = n;
    return;
  }
  const auto [lo, hi] = rule.range(n);
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
void select_blocks(const Cache& cache, int seq, const row_rule& rule, const float* scores, std::size_t stride,
                   const int* budgets, keep_plan plan, const block_scratch& ws, Mark mark) {
  const int kvh = cache.num_kv_heads();
  for (int h = 0; h < kvh; ++h) {
    const int r = seq * kvh + h;
    if (Sharing::shared && h > 0) {  // one plan for every head
      plan.counts[r] = plan.counts[seq * kvh];
      std::memcpy(plan.row(r), plan.row(seq * kvh), sizeof(std::int32_t) * static_cast<std::size_t>(plan.counts[r]));
      continue;
    }
    select_block_row<Sharing>(cache, seq, h, rule, scores, stride, budgets, plan, ws, mark);
  }
}

//! The two entries of a block granularity `g` from its `carve(cache, seq, scratch)` and
//! `marker(cache, sig, seq)`: `select` (every head of a sequence) and `select_head` (one head, for
//! independent heads, so that `plan` can run the heads on several threads, each with its own
//! scratch). The granularities forward to them (no base class: they stay aggregates).
template <class G, class Cache, class T>
void select_with(const G& g, const Cache& cache, const signals<T>& sig, int seq, const row_rule& rule,
                 const float* scores, std::size_t stride, const int* budgets, keep_plan plan, void* scratch) {
  select_blocks<typename G::sharing_type>(cache, seq, rule, scores, stride, budgets, plan, g.carve(cache, seq, scratch),
                                          g.marker(cache, sig, seq));
}
template <class G, class Cache, class T>
void select_head_with(const G& g, const Cache& cache, const signals<T>& sig, int seq, int h, const row_rule& rule,
                      const float* scores, std::size_t stride, const int* budgets, keep_plan plan, void* scratch) {
  static_assert(!G::sharing_type::shared, "a shared plan needs every head's scores at once");
  auto mark = g.marker(cache, sig, seq);
  select_block_row<typename G::sharing_type>(cache, seq, h, rule, scores, stride, budgets, plan,
                                             g.carve(cache, seq, scratch), mark);
}

//! The members `select` and `select_head` of a block granularity (one with `carve` and `marker`,
//! and `Sharing` its head sharing), forwarding to `select_with` / `select_head_with`: written once
//! for the three granularities, which stay aggregates (no base class). `select_head` exists only
//! with independent heads.
#define KVEVICT_BLOCK_GRANULARITY_ENTRIES(Sharing)                                                                  \
  template <class Cache, class T>                                                                                   \
  void select(const Cache& cache, const signals<T>& sig, int seq, const row_rule& rule, const float* scores,       \
              std::size_t stride, const int* budgets, keep_plan plan, void* scratch) const {                       \
    detail::select_with(*this, cache, sig, seq, rule, scores, stride, budgets, plan, scratch);                      \
  }                                                                                                                 \
  template <class Cache, class T, class S_ = Sharing, std::enable_if_t<!S_::shared, int> = 0>                      \
  void select_head(const Cache& cache, const signals<T>& sig, int seq, int h, const row_rule& rule,                \
                   const float* scores, std::size_t stride, const int* budgets, keep_plan plan, void* scratch)     \
      const {                                                                                                       \
    detail::select_head_with(*this, cache, sig, seq, h, rule, scores, stride, budgets, plan, scratch);              \
  }

template <class Segmenter, class Cache>
std::size_t segmented_scratch_bytes(const Segmenter& seg, const Cache& cache, int max_len, bool price_bounds = false) {
  return block_scratch::layout(max_len, seg.scratch_bytes(cache, max_len), price_bounds).total();
}

}  // namespace detail

}  // namespace kvevict

//! \file host/block_select.hpp
//! Host reference of segment- and block-level selection over the compressible range.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "../detail/sablock_core.hpp"

namespace kvevict::host_backend {

//! Marks the `k` highest-scored unmarked entries of `score[0, n)` (ties to the lower index) in
//! `keep[0, n)`. `idx`: scratch of n entries.
template <class Score>
void fill_best_unmarked(const Score* score, int n, int k, unsigned char* keep, std::int32_t* idx) {
  int m = 0;
  for (int t = 0; t < n; ++t)
    if (!keep[t]) idx[m++] = t;
  if (k <= 0 || m == 0) return;
  k = std::min(k, m);
  auto better = [&](std::int32_t a, std::int32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); };
  if (k < m) std::nth_element(idx, idx + k, idx + m, better);
  for (int i = 0; i < k; ++i) keep[idx[i]] = 1;
}

//! Units (CSR `offsets[0..count]` over `[lo, hi)`) ranked by mean score (desc; ties to the earlier
//! unit) are kept whole while they fit in `bc`, a unit that does not fit is skipped, then the rest
//! of `bc` is filled with the best remaining tokens. Marks exactly `min(bc, hi - lo)` tokens.
//! `order` scratch of `count` entries, `idx` of `hi - lo`.
inline void select_units_then_fill(const double* score, int lo, int hi, const std::int32_t* offsets, int count, int bc,
                            unsigned char* keep, std::int32_t* order, std::int32_t* idx, double* means) {
  for (int u = 0; u < count; ++u) {
    means[u] = detail::segment_mean(score, offsets[u], offsets[u + 1] - offsets[u]);  // the device's arithmetic
    order[u] = u;
  }
  std::sort(order, order + count,
            [&](std::int32_t a, std::int32_t b) { return means[a] > means[b] || (means[a] == means[b] && a < b); });
  int left = bc;
  for (int i = 0; i < count && left > 0; ++i) {
    const int u = order[i], len = offsets[u + 1] - offsets[u];
    if (len > left) continue;
    for (int t = offsets[u]; t < offsets[u + 1]; ++t) keep[t - lo] = 1;
    left -= len;
  }
  fill_best_unmarked(score + lo, hi - lo, left, keep, idx);
}

//! SABlock parameters (see granularity/adaptive_block.hpp and docs/sablock.md).
struct sablock_params {
  double alpha = 0.25;         //!< clause guidance in [0, 1]
  double g = 2.0;              //!< fragmentation fee, in units of the mean refined score (>= 0)
  int steps = 32;              //!< bisection steps on the price
  int max_candidates = 0;      //!< 0: sizes 1, 2, 4, ... below |S| and |S|; c > 0: the single size c
  double beta = 0.25;          //!< sentence guidance in [0, 1 - alpha]
  bool sentence_blocks = true;  //!< the whole sentence is a candidate block
};

//! SABlock on one (sequence, head) compressible range `[lo, hi)` with clauses `offsets[0..count]`
//! (token positions) grouped in sentences `sent[0..num_sentences]` (clause ranges; null: every
//! clause its own sentence) and compressible budget `bc < hi - lo`: refined scores, budget-driven
//! block-size search by bisection on the price, then the fill, in double precision. Marks exactly
//! `bc` tokens in `keep[0, hi - lo)`. Scratch: `r` and `prefix` of `hi - lo + 1` doubles, `idx` of
//! `hi - lo`. O(steps x |P|). Every sum runs inside one sentence, in order (the pieces of
//! detail/sablock_core.hpp), so a device running sentences in parallel gets the same plan.
template <class Score>
void sablock_select(const Score* a, int lo, int hi, const std::int32_t* offsets, int count, const std::int32_t* sent,
                    int num_sentences, int bc, const sablock_params& prm, unsigned char* keep, double* r,
                    double* prefix, std::int32_t* idx) {
  const int n = hi - lo;
  const int S = sent ? num_sentences : count;
  auto first = [&](int k) { return sent ? sent[k] : k; };
  for (int t = 0; t < n; ++t) r[t] = static_cast<double>(a[lo + t]);
  for (int k = 0; k < S; ++k) detail::refine_sentence(r, prefix, offsets, lo, first(k), first(k + 1), prm.alpha, prm.beta);
  double rsum = 0;
  for (int u = 0; u < count; ++u) rsum += prefix[offsets[u + 1] - lo - 1];  // clause sums, in clause order
  const double rmax = *std::max_element(r, r + n);
  const double gamma = prm.g * (rsum / n);
  auto run = [&](double lam, bool apply) {
    std::int64_t cost = 0;
    for (int k = 0; k < S; ++k)
      cost += detail::sentence_cost(prefix, offsets, lo, first(k), first(k + 1), lam, gamma, prm.max_candidates,
                                    prm.sentence_blocks, apply ? keep : nullptr);
    return cost;
  };
  double lam_lo = 0.0, lam_hi = rmax + gamma;
  // At max r + gamma no block has a positive net in exact arithmetic; rounding can leave a block
  // a hair above zero. Keep the bisection's invariant (hi feasible), at most 64 doublings.
  for (int grow = 0; grow < detail::sablock_max_grow && run(lam_hi, false) > bc; ++grow)
    lam_hi = detail::sablock_grow(lam_hi);
  for (int it = 0; it < prm.steps; ++it) {
    const double mid = 0.5 * (lam_lo + lam_hi);
    if (run(mid, false) > bc)
      lam_lo = mid;
    else
      lam_hi = mid;
  }
  std::fill(keep, keep + n, 0);
  const std::int64_t kept = run(lam_hi, true);
  fill_best_unmarked(r, n, bc - static_cast<int>(std::min<std::int64_t>(kept, bc)), keep, idx);
}

}  // namespace kvevict::host_backend

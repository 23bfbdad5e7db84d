//! \file host/block_select.hpp
//! Host reference of segment- and block-level selection over the compressible range.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "../detail/sablock_core.hpp"

namespace kvevict::host_backend {

//! Marks the `k` highest-scored unmarked entries of `score[0, n)` (ties to the lower index) in
//! `keep[0, n)`. `idx`: scratch of n entries. The order is strict and total, so the set is unique;
//! a few (the usual remainder of a block selection) come from one pass with a heap of the best so
//! far, more from a selection over all the unmarked.
template <class Score>
void fill_best_unmarked(const Score* score, int n, int k, unsigned char* keep, std::int32_t* idx) {
  if (k <= 0) return;
  auto better = [&](std::int32_t a, std::int32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); };
  if (static_cast<std::int64_t>(k) * 32 <= n) {
    int h = 0;  // idx[0, h) is a heap whose front is the worst of the best h so far
    for (int t = 0; t < n; ++t) {
      if (keep[t]) continue;
      if (h < k) {
        idx[h++] = t;
        std::push_heap(idx, idx + h, better);
      } else if (better(t, idx[0])) {
        std::pop_heap(idx, idx + k, better);
        idx[k - 1] = t;
        std::push_heap(idx, idx + k, better);
      }
    }
    for (int i = 0; i < h; ++i) keep[idx[i]] = 1;
    return;
  }
  int m = 0;
  for (int t = 0; t < n; ++t)
    if (!keep[t]) idx[m++] = t;
  if (m == 0) return;
  k = std::min(k, m);
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
//! `hi - lo`, `bound` of one double per clause and one per sentence (2 (hi - lo)). O(steps x |P|)
//! at most: the bisection passes over sentences that can no longer keep a token. Every sum runs
//! inside one sentence, in order (the pieces of detail/sablock_core.hpp), so a device running
//! sentences in parallel gets the same plan.
template <class Score>
void sablock_select(const Score* a, int lo, int hi, const std::int32_t* offsets, int count, const std::int32_t* sent,
                    int num_sentences, int bc, const sablock_params& prm, unsigned char* keep, double* r,
                    double* prefix, std::int32_t* idx, double* bound) {
  const int n = hi - lo;
  const int S = sent ? num_sentences : count;
  auto first = [&](int k) { return sent ? sent[k] : k; };
  for (int t = 0; t < n; ++t) r[t] = static_cast<double>(a[lo + t]);
  for (int k = 0; k < S; ++k) detail::refine_sentence(r, prefix, offsets, lo, first(k), first(k + 1), prm.alpha, prm.beta);
  double rsum = 0;
  for (int u = 0; u < count; ++u) rsum += prefix[offsets[u + 1] - lo - 1];  // clause sums, in clause order
  const double rmax = *std::max_element(r, r + n);
  const double gamma = prm.g * (rsum / n);
  // The bisection visits only the sentences that may still keep a token at its price. At or
  // above `bound[k]` sentence k keeps nothing (detail::sentence_price_bound), so it is skipped
  // there, and so is a clause of a visited sentence at or above its own bound. And a sentence
  // that keeps nothing at a price keeps nothing at any higher one (every block's net is
  // non-increasing in the price, rounding included), while every later price is at least the
  // lower end: once the lower end rises to a price where a sentence keeps nothing, it is dropped
  // for good. The plan is the one of visiting them all. `idx` holds the live sentences and
  // `keep` their flags until the final run (both are free until then; S <= n).
  double lam_lo = 0.0, lam_hi = rmax + gamma;
  std::int32_t* live = idx;
  unsigned char* keeps_some = keep;
  int num_live = S;
  // One level: a sentence is its clause, and its bound is the clause's. Two levels: the clauses'
  // bounds follow the sentences' in `bound`, and the visits skip clauses too.
  double* clause_bound = sent ? bound + S : bound;
  for (int u = 0; u < count; ++u)
    clause_bound[u] = detail::clause_price_bound(prefix, offsets[u] - lo, offsets[u + 1] - offsets[u], gamma,
                                                 prm.max_candidates);
  for (int k = 0; k < S; ++k) {
    live[k] = k;
    if (sent)
      bound[k] = detail::sentence_price_bound(prefix, offsets, lo, first(k), first(k + 1), gamma,
                                              prm.max_candidates, prm.sentence_blocks, clause_bound);
  }
  const double* skip_clauses = sent ? clause_bound : nullptr;
  auto run = [&](double lam, unsigned char* mark) {
    std::int64_t cost = 0;
    for (int i = 0; i < num_live; ++i) {
      const int k = live[i];
      if (lam >= bound[k]) {
        if (!mark) keeps_some[i] = 0;
        continue;
      }
      const std::int64_t c = detail::sentence_cost(prefix, offsets, lo, first(k), first(k + 1), lam, gamma,
                                                   prm.max_candidates, prm.sentence_blocks, mark, skip_clauses);
      if (!mark) keeps_some[i] = c > 0;
      cost += c;
    }
    return cost;
  };
  auto raise_lower_end = [&](double lam) {
    lam_lo = lam;
    int m = 0;
    for (int i = 0; i < num_live; ++i)
      if (keeps_some[i]) live[m++] = live[i];
    num_live = m;
  };
  // At max r + gamma no block has a positive net in exact arithmetic; rounding can leave a block
  // a hair above zero. Keep the bisection's invariant (hi feasible), at most 64 doublings.
  for (int grow = 0; grow < detail::sablock_max_grow && run(lam_hi, nullptr) > bc; ++grow)
    lam_hi = detail::sablock_grow(lam_hi);
  for (int it = 0; it < prm.steps; ++it) {
    const double mid = 0.5 * (lam_lo + lam_hi);
    if (run(mid, nullptr) > bc)
      raise_lower_end(mid);
    else
      lam_hi = mid;
  }
  std::fill(keep, keep + n, 0);
  const std::int64_t kept = run(lam_hi, keep);
  fill_best_unmarked(r, n, bc - static_cast<int>(std::min<std::int64_t>(kept, bc)), keep, idx);
}

}  // namespace kvevict::host_backend

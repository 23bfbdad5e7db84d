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

//! Doubles of scratch `sablock_select` takes in `bound` for a range of `n` tokens: a price bound per
//! clause and per sentence, and three summaries (detail::sablock_summary, two doubles' room each)
//! per sentence.
constexpr std::size_t sablock_bound_doubles(std::size_t n) { return 8 * n; }

//! SABlock on one (sequence, head) compressible range `[lo, hi)` with clauses `offsets[0..count]`
//! (token positions) grouped in sentences `sent[0..num_sentences]` (clause ranges; null: every
//! clause its own sentence) and compressible budget `bc < hi - lo`: refined scores, budget-driven
//! block-size search by bisection on the price, then the fill, in double precision. Marks exactly
//! `bc` tokens in `keep[0, hi - lo)`. Scratch: `r` and `prefix` of `hi - lo + 1` doubles, `idx` of
//! `hi - lo`, `bound` of `sablock_bound_doubles(hi - lo)`. O(steps x |P|) at most: the bisection
//! passes over sentences whose kept set can no longer change. Every sum runs inside one sentence,
//! in order (the pieces of detail/sablock_core.hpp), so a device running sentences in parallel
//! gets the same plan.
template <class Score>
void sablock_select(const Score* a, int lo, int hi, const std::int32_t* offsets, int count, const std::int32_t* sent,
                    int num_sentences, int bc, const sablock_params& prm, unsigned char* keep, double* r,
                    double* prefix, std::int32_t* idx, double* bound) {
  const int n = hi - lo;
  const int S = sent ? num_sentences : count;
  auto first = [&](int k) { return sent ? sent[k] : k; };
  for (int t = 0; t < n; ++t) r[t] = static_cast<double>(a[lo + t]);
  for (int k = 0; k < S; ++k) detail::refine_sentence(r, prefix, offsets, lo, first(k), first(k + 1), prm.alpha, prm.beta);
  const double rsum = detail::clauses_total(prefix, offsets, lo, count);  // runs of clauses, in order
  const double rmax = *std::max_element(r, r + n);
  const double gamma = prm.g * (rsum / n);
  // One level: a sentence is its clause, and its bound is the clause's. Two levels: the clauses'
  // bounds follow the sentences' in `bound`, and the visits skip clauses too. At or above
  // `bound[k]` sentence k keeps nothing (detail::sentence_price_bound), so a step passes over it,
  // and over a clause of a visited sentence at or above its own bound.
  double* clause_bound = sent ? bound + S : bound;
  for (int u = 0; u < count; ++u)
    clause_bound[u] = detail::clause_price_bound(prefix, offsets[u] - lo, offsets[u + 1] - offsets[u], gamma,
                                                 prm.max_candidates);
  for (int k = 0; k < S; ++k)
    if (sent)
      bound[k] = detail::sentence_price_bound(prefix, offsets, lo, first(k), first(k + 1), gamma,
                                              prm.max_candidates, prm.sentence_blocks, clause_bound);
  const double* skip_clauses = sent ? clause_bound : nullptr;
  // Each step evaluates only the live sentences. A sentence leaves the live set when its kept set
  // is the same at every price of [lam_lo, lam_hi], certified by its evaluations at both ends
  // (detail::sablock_settled); every later price lies in that interval, so its kept length is a
  // constant from then on, and the final run at lam_hi marks it. The plan is the one of evaluating
  // them all. Summaries per sentence (detail::sablock_summary) for the lower end, the upper end and
  // the step's midpoint (which becomes one of them); `idx` holds the live sentences and `keep` flags
  // the left ones that keep tokens (both are free until the final run; S <= n).
  detail::sablock_summary* sides = reinterpret_cast<detail::sablock_summary*>(bound + (sent ? S + count : count));
  detail::sablock_summary *at_lo = sides, *at_hi = sides + S, *at_mid = sides + 2 * S;
  double lam_lo = 0.0, lam_hi = rmax + gamma;
  std::int32_t* live = idx;
  unsigned char* left_keeps = keep;
  int num_live = S;
  std::int64_t left_cost = 0;
  for (int k = 0; k < S; ++k) {
    live[k] = k;
    left_keeps[k] = 0;
    at_lo[k] = detail::sablock_summary{};  // nothing evaluated at the lower end yet
  }
  // A step stops once its cost passes bc (the midpoint becomes the lower end whatever the rest keep);
  // the sentences it did not reach have no summary there, and the next step starts with them.
  int start = 0;
  auto next = [&](int i) { return i + 1 < num_live ? i + 1 : 0; };
  auto run = [&](double lam) {
    std::int64_t cost = left_cost;
    int j = 0, i = start;
    for (; j < num_live && cost <= bc; ++j, i = next(i)) {
      const int k = live[i];
      if (lam >= bound[k]) continue;  // it keeps nothing; settling reads the bound, not a summary
      detail::sablock_probe pr;
      const std::int64_t c = detail::sentence_cost(prefix, offsets, lo, first(k), first(k + 1), lam, gamma,
                                                   prm.max_candidates, prm.sentence_blocks, nullptr, skip_clauses, &pr);
      at_mid[k] = detail::summarize(pr, c);
      cost += c;
    }
    if (j < num_live) start = i;  // stopped early: the rest have no summary at this price
    for (; j < num_live; ++j, i = next(i)) at_mid[live[i]].positive = -1;
    return cost;
  };
  auto settle = [&] {  // takes out the live sentences whose kept set is now fixed
    int m = 0;
    for (int i = 0; i < num_live; ++i) {
      const int k = live[i];
      const int fixed = detail::sablock_settled(lam_lo, lam_hi, bound[k], at_lo[k], at_hi[k]);
      if (fixed < 0) {
        live[m++] = k;
      } else {
        left_cost += fixed;
        left_keeps[k] = fixed > 0;
      }
    }
    num_live = m;
    start = start < m ? start : 0;
  };
  // At max r + gamma no block has a positive net in exact arithmetic; rounding can leave a block
  // a hair above zero. Keep the bisection's invariant (hi feasible), at most 64 doublings.
  bool over = run(lam_hi) > bc;
  for (int grow = 0; grow < detail::sablock_max_grow && over; ++grow) {
    lam_hi = detail::sablock_grow(lam_hi);
    over = run(lam_hi) > bc;
  }
  std::swap(at_hi, at_mid);
  for (int it = 0; it < prm.steps; ++it) {
    const double mid = 0.5 * (lam_lo + lam_hi);
    if (run(mid) > bc) {
      lam_lo = mid;
      std::swap(at_lo, at_mid);
    } else {
      lam_hi = mid;
      std::swap(at_hi, at_mid);
    }
    settle();
  }
  int num_marked = num_live;  // the live sentences, then the left ones that keep tokens
  for (int k = 0; k < S; ++k)
    if (left_keeps[k]) live[num_marked++] = k;
  std::fill(keep, keep + n, 0);
  std::int64_t kept = 0;
  auto mark = [&](int k) {
    kept += detail::sentence_cost(prefix, offsets, lo, first(k), first(k + 1), lam_hi, gamma, prm.max_candidates,
                                  prm.sentence_blocks, keep, skip_clauses);
  };
  for (int i = 0; i < num_marked; ++i)
    if (lam_hi < bound[live[i]]) mark(live[i]);
  fill_best_unmarked(r, n, bc - static_cast<int>(std::min<std::int64_t>(kept, bc)), keep, idx);
}

}  // namespace kvevict::host_backend

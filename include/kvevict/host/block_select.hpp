//! \file host/block_select.hpp
//! Host reference of segment- and block-level selection over the compressible range.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

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
template <class Score>
void select_units_then_fill(const Score* score, int lo, int hi, const std::int32_t* offsets, int count, int bc,
                            unsigned char* keep, std::int32_t* order, std::int32_t* idx, double* means) {
  for (int u = 0; u < count; ++u) {
    double s = 0;
    for (int t = offsets[u]; t < offsets[u + 1]; ++t) s += static_cast<double>(score[t]);
    means[u] = s / (offsets[u + 1] - offsets[u]);
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

//! SABlock parameters (see granularity/adaptive_block.hpp and the design specification).
struct sablock_params {
  double alpha = 0.5;      //!< segment guidance in [0, 1]
  double g = 2.0;          //!< fragmentation fee, in units of the mean refined score (>= 0)
  int steps = 32;          //!< bisection steps on the price
  int max_candidates = 0;  //!< 0: sizes 1, 2, 4, ... below |S| and |S|; c > 0: the single size c
};

//! SABlock on one (sequence, head) compressible range `[lo, hi)` with segments `offsets[0..count]`
//! and compressible budget `bc < hi - lo`: refined scores, budget-driven block-size search by
//! bisection on the price, then the fill, in double precision. Marks exactly `bc` tokens in
//! `keep[0, hi - lo)`. Scratch: `r` and `prefix` of `hi - lo + 1` doubles, `idx` of `hi - lo`.
//! O(steps x |P|).
template <class Score>
void sablock_select(const Score* a, int lo, int hi, const std::int32_t* offsets, int count, int bc,
                    const sablock_params& prm, unsigned char* keep, double* r, double* prefix, std::int32_t* idx) {
  const int n = hi - lo;
  // Refined scores r[i] = (1 - alpha) a[i] + alpha * mean of a over the segment of i.
  for (int u = 0; u < count; ++u) {
    double s = 0;
    for (int t = offsets[u]; t < offsets[u + 1]; ++t) s += static_cast<double>(a[t]);
    const double mean = s / (offsets[u + 1] - offsets[u]);
    for (int t = offsets[u]; t < offsets[u + 1]; ++t)
      r[t - lo] = (1.0 - prm.alpha) * static_cast<double>(a[t]) + prm.alpha * mean;
  }
  prefix[0] = 0;
  double rmax = r[0], rsum = 0;
  for (int i = 0; i < n; ++i) {
    prefix[i + 1] = prefix[i] + r[i];
    rsum += r[i];
    rmax = std::max(rmax, r[i]);
  }
  const double gamma = prm.g * (rsum / n);

  // For price lam: per segment the block size with the largest total positive net (ties to the
  // larger size); `apply` marks the kept blocks. Returns the kept length.
  auto run = [&](double lam, bool apply) {
    std::int64_t cost = 0;
    for (int u = 0; u < count; ++u) {
      const int s0 = offsets[u] - lo, len = offsets[u + 1] - offsets[u];
      double best = -1.0;
      int best_b = 0;
      auto total_for = [&](int b) {
        double tot = 0;
        for (int st = 0; st < len; st += b) {
          const int e = std::min(len, st + b);
          const double net = (prefix[s0 + e] - prefix[s0 + st]) - lam * (e - st) - gamma;
          if (net > 0) tot += net;
        }
        return tot;
      };
      auto consider = [&](int b) {
        const double tot = total_for(b);
        if (tot >= best) {  // sizes come in increasing order: ties go to the larger size
          best = tot;
          best_b = b;
        }
      };
      if (prm.max_candidates > 0) {
        consider(std::min(prm.max_candidates, len));
      } else {
        for (int b = 1; b < len; b *= 2) consider(b);
        consider(len);
      }
      for (int st = 0; st < len; st += best_b) {
        const int e = std::min(len, st + best_b);
        const double net = (prefix[s0 + e] - prefix[s0 + st]) - lam * (e - st) - gamma;
        if (net > 0) {
          cost += e - st;
          if (apply)
            for (int t = s0 + st; t < s0 + e; ++t) keep[t] = 1;
        }
      }
    }
    return cost;
  };

  double lam_lo = 0.0, lam_hi = rmax + gamma;
  // At max r + gamma no block has a positive net in exact arithmetic; rounding in the prefix
  // sums can leave a block a hair above zero. Keep the bisection's invariant (hi feasible).
  while (run(lam_hi, false) > bc) lam_hi = 2.0 * lam_hi + 1e-300;
  for (int it = 0; it < prm.steps; ++it) {
    const double mid = 0.5 * (lam_lo + lam_hi);
    if (run(mid, false) > bc)
      lam_lo = mid;
    else
      lam_hi = mid;
  }
  std::fill(keep, keep + n, 0);
  const std::int64_t kept = run(lam_hi, true);
  fill_best_unmarked(r, n, bc - static_cast<int>(kept), keep, idx);
}

}  // namespace kvevict::host_backend

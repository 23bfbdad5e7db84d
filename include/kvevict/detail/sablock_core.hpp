//! \file detail/sablock_core.hpp
//! SABlock's per-segment arithmetic, shared by the host backend and the CUDA kernels so both reach
//! the same plan bit for bit: every sum runs inside one segment in token order, and products are
//! rounded before they are added (no fused multiply-add). Not API.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "../config.hpp"

namespace kvevict::detail {

//! a * b and a + b rounded separately (the device would fuse them otherwise).
KVEVICT_HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
KVEVICT_HOST_DEVICE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

//! Mean of `v[s0, s0 + len)`, summed in order.
KVEVICT_HOST_DEVICE double segment_mean(const double* v, int s0, int len) {
  double s = 0;
  for (int t = s0; t < s0 + len; ++t) s = add_rn(s, v[t]);
  return s / len;
}

//! Refines the segment in place, `r = (1 - alpha) a + alpha * mean(a over the segment)`, and writes
//! its inclusive local prefix sums `prefix[t] = r[s0] + ... + r[t]`.
KVEVICT_HOST_DEVICE void refine_segment(double* r, double* prefix, int s0, int len, double alpha) {
  const double mean = segment_mean(r, s0, len), keep_share = 1.0 - alpha, seg_share = mul_rn(alpha, mean);
  double run = 0;
  for (int t = s0; t < s0 + len; ++t) {
    r[t] = add_rn(mul_rn(keep_share, r[t]), seg_share);
    run = add_rn(run, r[t]);
    prefix[t] = run;
  }
}

//! The fixed order of a row's clause-total sum (the mean in SABlock's fee gamma), so that a block of
//! threads adds it in parallel and still reaches the host's double: the clauses in runs of
//! `clause_run(count)` consecutive clauses, each run added in clause order, then the runs' sums
//! added in run order. The run length depends on the count alone: the least r >= 32 with
//! r * r >= count, so either stage is about sqrt(count) additions.
KVEVICT_HOST_DEVICE int clause_run(int count) {
  long long lo = 32, hi = 46341;  // 46341^2 > INT_MAX
  while (lo < hi) {
    const long long mid = (lo + hi) / 2;
    if (mid * mid >= count)
      hi = mid;
    else
      lo = mid + 1;
  }
  return static_cast<int>(lo);
}

//! Sum of the totals of clauses [u0, u1) (each the last local prefix sum of its clause, `off`
//! holding token positions, `base` subtracted), added in clause order.
KVEVICT_HOST_DEVICE double clause_run_total(const double* prefix, const std::int32_t* off, int base, int u0, int u1) {
  double s = 0;
  for (int u = u0; u < u1; ++u) s = add_rn(s, prefix[off[u + 1] - base - 1]);
  return s;
}

//! The sum of run `q` (runs of `run` clauses among `count`): clauses [q run, min(count, q run + run)).
KVEVICT_HOST_DEVICE double clause_run_sum(const double* prefix, const std::int32_t* off, int base, int count, int run,
                                          int q) {
  const int u0 = q * run;
  return clause_run_total(prefix, off, base, u0, count - u0 < run ? count : u0 + run);
}

//! The row's clause-total sum in the order of `clause_run` (the host's loop; a device block computes
//! the runs in parallel and adds their sums in run order).
KVEVICT_HOST_DEVICE double clauses_total(const double* prefix, const std::int32_t* off, int base, int count) {
  const int run = clause_run(count);
  double total = 0;
  for (int q = 0; q * run < count; ++q) total = add_rn(total, clause_run_sum(prefix, off, base, count, run, q));
  return total;
}

//! Value of block [s0 + st, s0 + e): the difference of the local prefix sums.
KVEVICT_HOST_DEVICE double block_value(const double* prefix, int s0, int st, int e) {
  return st > 0 ? prefix[s0 + e - 1] - prefix[s0 + st - 1] : prefix[s0 + e - 1];
}

//! Net of a block of value `value` and length `len` at price `lam`: value - lam * length - gamma.
KVEVICT_HOST_DEVICE double value_net(double value, int len, double lam, double gamma) {
  return (value - mul_rn(lam, len)) - gamma;
}

//! Net of block [s0 + st, s0 + e) at price `lam`.
KVEVICT_HOST_DEVICE double block_net(const double* prefix, int s0, int st, int e, double lam, double gamma) {
  return value_net(block_value(prefix, s0, st, e), e - st, lam, gamma);
}

//! What one evaluation at a price says beyond the kept length, for a bisection that stops
//! evaluating a sentence once its kept set cannot change any more (host/block_select.hpp). Every
//! candidate block's net is non-increasing in the price, rounding included, so a block positive at
//! the upper end of an interval is positive inside it, one not positive at the lower end is not
//! positive inside: equal `positive` counts at both ends mean the same positive blocks throughout.
//! With those fixed, each candidate's total is a linear function of the price up to `error()`, and
//! a decision won by more than `4 error()` at both ends (`margin`) is won inside too.
struct sablock_probe {
  int positive = 0;        //!< positive candidate blocks (every size of every clause, the whole sentence)
  int terms = 0;           //!< summands behind the totals: positive blocks and clauses
  double scale = 0;        //!< sum over the positive blocks of |value| + lam length + |gamma|
  double margin = DBL_MAX;  //!< the smallest gap between a decision's winner and its runner-up
  KVEVICT_HOST_DEVICE void block(double value, int len, double lam, double gamma) {
    ++positive;
    ++terms;
    scale += (value < 0 ? -value : value) + lam * len + (gamma < 0 ? -gamma : gamma);
  }
  KVEVICT_HOST_DEVICE void gap(double g) { margin = g < margin ? g : margin; }
  //! Bounds how far a total computed here (nets and their in-order sums, the sentence's split sum)
  //! lies from the exact linear function of the same positive blocks: each net within 3 units in
  //! the last place of its terms, each sum within (summands) units of its scale; taken twice.
  KVEVICT_HOST_DEVICE double error() const { return (terms + 8) * 0x1p-52 * scale; }
};

//! `x` as a float rounded toward -infinity (`float_down`) or +infinity (`float_up`): a float that
//! stands for `x` on the safe side of a comparison.
KVEVICT_HOST_DEVICE float float_down(double x) {
  if (!(x < static_cast<double>(FLT_MAX))) return x != x ? x : FLT_MAX;  // NaN stays NaN
  if (x < -static_cast<double>(FLT_MAX)) return -INFINITY;
  const float f = static_cast<float>(x);
  return static_cast<double>(f) > x ? nextafterf(f, -INFINITY) : f;
}
KVEVICT_HOST_DEVICE float float_up(double x) { return -float_down(-x); }

//! A sentence's evaluation at one end of the bisection's interval, as the search keeps it (16
//! bytes, so that the device finds room for three per sentence in its row scratch): the probe's
//! counts, its margin rounded down and its error rounded up, so a certificate drawn from the
//! summaries holds for the exact values too.
struct sablock_summary {
  int positive = -1;  //!< -1: not evaluated at this price
  int kept = 0;
  float margin = 0, error = 0;
};
static_assert(sizeof(sablock_summary) == 16 && alignof(sablock_summary) <= alignof(double),
              "three summaries take six doubles' room");
KVEVICT_HOST_DEVICE sablock_summary summarize(const sablock_probe& pr, std::int64_t kept) {
  return {pr.positive, static_cast<int>(kept), float_down(pr.margin), float_up(pr.error())};
}

//! Whether a sentence still live in the bisection leaves it, its kept set being the same at every
//! price of [lam_lo, lam_hi] (every later price lies there): -1 when it stays; else its kept length
//! from now on. `bound` is its price bound (at or above it nothing is kept; +infinity when the
//! caller has none), `lo` and `hi` its summaries at both ends (positive -1 where it was not
//! evaluated there). Certified: keeping nothing at `lam_lo` (nets do not rise with the price); or
//! the same positive blocks and kept length at both ends with every decision won by more than four
//! times the rounding bound at both (sablock_probe).
KVEVICT_HOST_DEVICE int sablock_settled(double lam_lo, double lam_hi, double bound, const sablock_summary& lo,
                                        const sablock_summary& hi) {
  if (lam_hi >= bound) return lam_lo < bound && lo.positive != 0 ? -1 : 0;
  const double err4 = 4.0 * static_cast<double>(lo.error > hi.error ? lo.error : hi.error);
  const bool fixed = lo.positive >= 0 && lo.positive == hi.positive && lo.kept == hi.kept &&
                     static_cast<double>(lo.margin) > err4 && static_cast<double>(hi.margin) > err4;
  return fixed ? hi.kept : -1;
}

//! The CUDA row's `idx` scratch (2 m ints) holds SABlock's price bounds from its start (two levels:
//! when they fit below the sentences), the sentences (two levels: S + 1 ints from m - 1) and, where
//! room is left above them, the bisection's live set: two lists of the live sentences and three
//! summaries per sentence, 14 ints per sentence. Returns the int where that room starts, or -1
//! when there is none (the kernel then evaluates every sentence at every step: the same plan).
inline constexpr int sablock_live_ints = 14;
KVEVICT_HOST_DEVICE long long sablock_live_room(int m, int count, int num_sentences, bool two_levels) {
  const long long begin = two_levels ? (m > 1 ? m - 1 : 0) + static_cast<long long>(num_sentences) + 1
                                     : 2LL * count;
  return 2LL * m - begin >= static_cast<long long>(sablock_live_ints) * num_sentences ? begin : -1;
}

//! Total positive net of the segment cut into blocks of `b`; counts its positive blocks in `pr`.
KVEVICT_HOST_DEVICE double blocks_total(const double* prefix, int s0, int len, int b, double lam, double gamma,
                                        sablock_probe* pr = nullptr) {
  double tot = 0;
  for (int st = 0; st < len; st += b) {
    const int e = len < st + b ? len : st + b;
    const double value = block_value(prefix, s0, st, e), net = value_net(value, e - st, lam, gamma);
    if (net > 0) {
      tot = add_rn(tot, net);
      if (pr) pr->block(value, e - st, lam, gamma);
    }
  }
  return tot;
}

//! The segment's block size at price `lam`: among 1, 2, 4, ... below `len` and `len` (or the single
//! size `min(max_candidates, len)`), the largest total positive net, ties to the larger size. Marks
//! its kept blocks in `keep` when not null; returns the kept length, and the chosen size's total
//! positive net in `*total` when not null. With `pr`, also counts every size's positive blocks and
//! the winner's lead over the best other size (none when nothing is positive: no block is kept
//! whichever size wins).
KVEVICT_HOST_DEVICE std::int64_t segment_cost(const double* prefix, int s0, int len, double lam, double gamma,
                                              int max_candidates, unsigned char* keep, double* total = nullptr,
                                              sablock_probe* pr = nullptr) {
  int best_b = 0;
  double best = -1.0;
  if (max_candidates > 0) {
    best_b = max_candidates < len ? max_candidates : len;
    if (total || pr) best = blocks_total(prefix, s0, len, best_b, lam, gamma, pr);
  } else {
    double other = -1.0;  // the best total of the sizes that lose
    for (int b = 1;; b *= 2) {
      const int size = b < len ? b : len;
      const double tot = blocks_total(prefix, s0, len, size, lam, gamma, pr);
      if (tot >= best) {  // sizes come in increasing order: ties go to the larger size
        other = best_b > 0 && best > other ? best : other;
        best = tot;
        best_b = size;
      } else if (tot > other) {
        other = tot;
      }
      if (b >= len) break;
    }
    if (pr && best > 0 && other >= 0) pr->gap(best - other);
  }
  if (pr) ++pr->terms;
  if (total) *total = best;
  std::int64_t cost = 0;
  for (int st = 0; st < len; st += best_b) {
    const int e = len < st + best_b ? len : st + best_b;
    if (block_net(prefix, s0, st, e, lam, gamma) > 0) {
      cost += e - st;
      if (keep)
        for (int t = s0 + st; t < s0 + e; ++t) keep[t] = 1;
    }
  }
  return cost;
}

// ---- SABlock's sentence level: sentence k is clauses [c0, c1) of the clause offsets `off`
// (token positions; `base` is subtracted to index r / prefix / keep). With one clause per
// sentence everything below is the one-level arithmetic, bit for bit. ----

//! Refines the sentence in place, `r = (1 - alpha - beta) a + alpha mean(clause) + beta mean(sentence)`,
//! and writes the clauses' local prefix sums. A one-clause sentence refines as one segment with
//! guidance `alpha + beta` (its clause is its sentence).
KVEVICT_HOST_DEVICE void refine_sentence(double* r, double* prefix, const std::int32_t* off, int base, int c0, int c1,
                                         double alpha, double beta) {
  if (c1 - c0 == 1) {
    refine_segment(r, prefix, off[c0] - base, off[c1] - off[c0], alpha + beta);
    return;
  }
  const double sent_share = mul_rn(beta, segment_mean(r, off[c0] - base, off[c1] - off[c0]));
  const double keep_share = (1.0 - alpha) - beta;
  for (int u = c0; u < c1; ++u) {
    const int s0 = off[u] - base, len = off[u + 1] - off[u];
    const double clause_share = mul_rn(alpha, segment_mean(r, s0, len));
    double run = 0;
    for (int t = s0; t < s0 + len; ++t) {
      r[t] = add_rn(add_rn(mul_rn(keep_share, r[t]), clause_share), sent_share);
      run = add_rn(run, r[t]);
      prefix[t] = run;
    }
  }
}

//! Whether clause `u` surely keeps nothing at `lam` (see clause_price_bound); false without bounds.
KVEVICT_HOST_DEVICE bool clause_idle(const double* clause_bound, int u, double lam) {
  return clause_bound != nullptr && lam >= clause_bound[u];
}

//! The sentence's kept length at price `lam`. Candidates: every clause on its own (its block sizes
//! as `segment_cost`, which include the whole clause), or, with `sentence_blocks` and more than one
//! clause, the whole sentence as one block (one fee). The larger total positive net wins, ties to
//! the whole sentence (the larger block). Marks the kept tokens in `keep` when not null. With
//! `clause_bound` (per clause, see clause_price_bound), a clause at or above its bound is passed
//! over: it keeps nothing and adds +0 to the split total, as its evaluation would. With `pr`
//! (and no `keep`), fills the probe (see sablock_probe).
KVEVICT_HOST_DEVICE std::int64_t sentence_cost(const double* prefix, const std::int32_t* off, int base, int c0, int c1,
                                               double lam, double gamma, int max_candidates, bool sentence_blocks,
                                               unsigned char* keep, const double* clause_bound = nullptr,
                                               sablock_probe* pr = nullptr) {
  std::int64_t cost = 0;
  if (c1 - c0 == 1 || !sentence_blocks || max_candidates > 0) {
    for (int u = c0; u < c1; ++u)
      if (!clause_idle(clause_bound, u, lam))
        cost += segment_cost(prefix, off[u] - base, off[u + 1] - off[u], lam, gamma, max_candidates, keep, nullptr, pr);
    return cost;
  }
  double value = 0, split = 0;
  for (int u = c0; u < c1; ++u) value = add_rn(value, prefix[off[u + 1] - base - 1]);
  const int len = off[c1] - off[c0];
  const double whole = value_net(value, len, lam, gamma);
  for (int u = c0; u < c1; ++u) {
    if (clause_idle(clause_bound, u, lam)) continue;
    double tot = 0;
    cost += segment_cost(prefix, off[u] - base, off[u + 1] - off[u], lam, gamma, max_candidates, nullptr, &tot, pr);
    split = add_rn(split, tot);
  }
  if (pr && whole > 0) {
    pr->block(value, len, lam, gamma);
    pr->gap(whole >= split ? whole - split : split - whole);
  }
  if (whole > 0 && whole >= split) {
    if (keep)
      for (int t = off[c0] - base; t < off[c1] - base; ++t) keep[t] = 1;
    return len;
  }
  if (keep)
    for (int u = c0; u < c1; ++u)
      if (!clause_idle(clause_bound, u, lam))
        segment_cost(prefix, off[u] - base, off[u + 1] - off[u], lam, gamma, max_candidates, keep);
  return cost;
}

//! A price at and above which a block of value `v` (as `block_net` computes it) and length `len`
//! has a net <= 0, rounding included; >= 0. At `lam >= 0` the net `fl(fl(v - fl(lam len)) - gamma)`
//! is <= 0 whenever `v <= gamma`, and otherwise once `fl(lam len) >= v - gamma`, which
//! `lam >= (v - gamma)(1 + 2^-52) / len` ensures in the normal range; the bound adds 1e-12
//! (relative) for its own rounding, and is DBL_MAX (no bound) outside [1e-280, 1e280].
//! Non-decreasing in `v`.
KVEVICT_HOST_DEVICE double price_bound(double v, int len, double gamma) {
  const double w = v - gamma;
  if (!(w > 0)) return 0.0;  // NaN nets are never positive either
  const double d = w / len;
  return d >= 1e-280 && d <= 1e280 ? d * (1.0 + 1e-12) : DBL_MAX;
}

//! The largest `price_bound` over the blocks of a segment cut into blocks of `size`.
KVEVICT_HOST_DEVICE double blocks_bound(const double* prefix, int s0, int len, int size, double gamma) {
  double full = -DBL_MAX, bound = 0;  // the best full block's value, one division for all of them
  for (int st = 0; st < len; st += size) {
    const int e = len < st + size ? len : st + size;
    const double value = block_value(prefix, s0, st, e);
    if (e - st == size) {
      full = value > full ? value : full;
    } else {
      bound = price_bound(value, e - st, gamma);
    }
  }
  const double b = full > -DBL_MAX ? price_bound(full, size, gamma) : 0.0;
  return b > bound ? b : bound;
}

//! A price at and above which every candidate block of a clause (`segment_cost`'s sizes) has a
//! net <= 0, so the clause keeps nothing and adds nothing to a total; >= 0.
KVEVICT_HOST_DEVICE double clause_price_bound(const double* prefix, int s0, int len, double gamma, int max_candidates) {
  double bound = 0;
  for (int b = max_candidates > 0 ? max_candidates : 1;; b *= 2) {
    const double x = blocks_bound(prefix, s0, len, b < len ? b : len, gamma);
    bound = x > bound ? x : bound;
    if (max_candidates > 0 || b >= len) break;
  }
  return bound;
}

//! A price at and above which `sentence_cost` keeps nothing of the sentence (every candidate block
//! it weighs, of every clause and size and the whole sentence, has a net <= 0), >= 0, from its
//! clauses' bounds `clause_bound[c0, c1)`. Lets a bisection skip the sentence at such prices
//! without changing what it keeps.
KVEVICT_HOST_DEVICE double sentence_price_bound(const double* prefix, const std::int32_t* off, int base, int c0, int c1,
                                                double gamma, int max_candidates, bool sentence_blocks,
                                                const double* clause_bound) {
  double bound = 0;
  for (int u = c0; u < c1; ++u) bound = clause_bound[u] > bound ? clause_bound[u] : bound;
  if (c1 - c0 > 1 && sentence_blocks && max_candidates == 0) {
    double value = 0;
    for (int u = c0; u < c1; ++u) value = add_rn(value, prefix[off[u + 1] - base - 1]);
    const double x = price_bound(value, off[c1] - off[c0], gamma);
    bound = x > bound ? x : bound;
  }
  return bound;
}

//! Raising the top price when rounding left a block positive there (see sablock_select).
inline constexpr int sablock_max_grow = 64;
KVEVICT_HOST_DEVICE double sablock_grow(double lam_hi) { return 2.0 * lam_hi + 1e-300; }

}  // namespace kvevict::detail

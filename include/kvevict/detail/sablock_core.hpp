//! \file detail/sablock_core.hpp
//! SABlock's per-segment arithmetic, shared by the host backend and the CUDA kernels so both reach
//! the same plan bit for bit: every sum runs inside one segment in token order, and products are
//! rounded before they are added (no fused multiply-add). Not API.
#pragma once

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

//! Net of block [s0 + st, s0 + e) at price `lam`: value - lam * length - gamma.
KVEVICT_HOST_DEVICE double block_net(const double* prefix, int s0, int st, int e, double lam, double gamma) {
  const double value = st > 0 ? prefix[s0 + e - 1] - prefix[s0 + st - 1] : prefix[s0 + e - 1];
  return (value - mul_rn(lam, e - st)) - gamma;
}

//! Total positive net of the segment cut into blocks of `b`.
KVEVICT_HOST_DEVICE double blocks_total(const double* prefix, int s0, int len, int b, double lam, double gamma) {
  double tot = 0;
  for (int st = 0; st < len; st += b) {
    const int e = len < st + b ? len : st + b;
    const double net = block_net(prefix, s0, st, e, lam, gamma);
    if (net > 0) tot = add_rn(tot, net);
  }
  return tot;
}

//! The segment's block size at price `lam`: among 1, 2, 4, ... below `len` and `len` (or the single
//! size `min(max_candidates, len)`), the largest total positive net, ties to the larger size. Marks
//! its kept blocks in `keep` when not null; returns the kept length.
KVEVICT_HOST_DEVICE std::int64_t segment_cost(const double* prefix, int s0, int len, double lam, double gamma,
                                              int max_candidates, unsigned char* keep) {
  int best_b = 0;
  if (max_candidates > 0) {
    best_b = max_candidates < len ? max_candidates : len;
  } else {
    double best = -1.0;
    for (int b = 1;; b *= 2) {
      const int size = b < len ? b : len;
      const double tot = blocks_total(prefix, s0, len, size, lam, gamma);
      if (tot >= best) {  // sizes come in increasing order: ties go to the larger size
        best = tot;
        best_b = size;
      }
      if (b >= len) break;
    }
  }
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

//! Raising the top price when rounding left a block positive there (see sablock_select).
inline constexpr int sablock_max_grow = 64;
KVEVICT_HOST_DEVICE double sablock_grow(double lam_hi) { return 2.0 * lam_hi + 1e-300; }

}  // namespace kvevict::detail

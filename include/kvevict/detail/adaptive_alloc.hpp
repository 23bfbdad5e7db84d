//! \file detail/adaptive_alloc.hpp
//! The arithmetic of Ada-KV's per-head allocation (`adaptive_budget::allocate`) as the CUDA backend
//! computes it, shared with the host tests. Not API.
//!
//! The host sorts a sequence's compressible candidates over all heads (score descending, then
//! head, then position) and walks them: head h's first `g_h` candidates are its guaranteed share,
//! each later one takes one entry from the pool, until the pool is empty. So head h gets
//! `max(0, C_h(P) - g_h)` extra entries, where `C_h(P)` counts its candidates in the shortest prefix
//! P of the order after which the extras `F(P) = sum_h max(0, C_h(P) - g_h)` reach the pool (all of
//! them when they never do). The device finds P without sorting, as a radix select over the
//! candidates' 32-bit order keys with one histogram per head: for each digit, from the top, the
//! largest digit d with `F(keys of digit >= d) >= pool` (`ada_pick_digit`); after the last digit the
//! threshold key is known, and the ties at it are taken in head order, each head's in position order
//! (`ada_extras`). `F` only grows along the order, so the pick is exact.
#pragma once

#include <cmath>
#include <cstdint>

#include "../config.hpp"

namespace kvevict::detail {

//! Every head's guaranteed share of the compressible budget `bc`: floor(fraction x bc), with the
//! host's tolerance and without a fused multiply-add on either side (the same int everywhere).
KVEVICT_HOST_DEVICE int ada_guaranteed(double fraction, int bc) {
#ifdef __CUDA_ARCH__
  return static_cast<int>(floor(__dadd_rn(__dmul_rn(fraction, static_cast<double>(bc)), 1e-9)));
#else
  volatile double product = fraction * static_cast<double>(bc);  // no contraction into an fma
  return static_cast<int>(std::floor(product + 1e-9));
#endif
}

//! Head h's extras when it holds `count` candidates of the prefix and `g` are guaranteed.
KVEVICT_HOST_DEVICE long long ada_excess(long long count, long long g) { return count > g ? count - g : 0; }

//! A head's budget: its `n` tokens outside the compressible range `[lo, hi)` (always kept), its
//! guaranteed share `g` and its `extra` tokens from the pool.
KVEVICT_HOST_DEVICE long long ada_budget(int lo, int hi, int n, int g, long long extra) {
  return static_cast<long long>(lo) + (n - hi) + g + extra;
}

//! One digit of the search. `hist[h * bins + d]`: head h's candidates in the current group (keys
//! agreeing with the threshold's digits so far) whose digit is d; `above[h]`: head h's candidates
//! above the group; `g[h]`: its guaranteed share. Requires F(group and above) >= pool >
//! F(above). Returns the largest digit d with F(above + group keys of digit >= d) >= pool and adds
//! to `above[h]` head h's group keys of digit > d. The reference the host tests drive: the device
//! (`cuda_backend::ada_pick`) computes the same pick a chunk of bins per thread.
KVEVICT_HOST_DEVICE int ada_pick_digit(const unsigned* hist, int bins, int heads, long long* above,
                                              const int* g, long long pool) {
  int d = bins - 1;
  for (; d > 0; --d) {
    long long f = 0;
    for (int h = 0; h < heads; ++h) {
      long long s = above[h];
      for (int e = d; e < bins; ++e) s += hist[h * bins + e];
      f += ada_excess(s, g[h]);
    }
    if (f >= pool) break;
  }
  for (int h = 0; h < heads; ++h)
    for (int e = d + 1; e < bins; ++e) above[h] += hist[h * bins + e];
  return d;
}

//! One head's step of the final tie-break: head h has `above` candidates above the threshold key
//! and `equal` at it; `f` is F with the heads before it counted with the ties they took and the
//! rest without, `reached` whether the pool was reached. Returns head h's candidates in the prefix.
KVEVICT_HOST_DEVICE long long ada_tie_count(long long above, long long equal, long long g, long long pool,
                                                   long long& f, bool& reached) {
  if (reached) return above;
  const long long with_all = f - ada_excess(above, g) + ada_excess(above + equal, g);
  if (with_all >= pool) {  // this head's ties reach the pool: only as many as it takes
    reached = true;
    return (above >= g ? above : g) + (pool - f);
  }
  f = with_all;
  return above + equal;
}

//! The final step: `above[h]` candidates of head h above the threshold key and `equal[h]` equal
//! to it, F(above) < pool <= F(above + equal). The ties go in head order, each head's in position
//! order, until the pool is reached; writes head h's extras.
KVEVICT_HOST_DEVICE void ada_extras(const long long* above, const long long* equal, const int* g, int heads,
                                           long long pool, int* extras) {
  long long f = 0;
  for (int h = 0; h < heads; ++h) f += ada_excess(above[h], g[h]);
  bool reached = false;
  for (int h = 0; h < heads; ++h)
    extras[h] = static_cast<int>(ada_excess(ada_tie_count(above[h], equal[h], g[h], pool, f, reached), g[h]));
}

}  // namespace kvevict::detail

//! \file select/top_k.hpp
//! Deterministic top-k over token scores.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../detail/row_rules.hpp"

namespace kvevict {

//! The selection order every policy uses: higher score first, ties to the lower position.
struct score_order {
  const float* scores;
  bool operator()(std::int32_t a, std::int32_t b) const {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  }
};

namespace host_backend {

//! Writes to `out[0, k)` the `k` positions of `[lo, hi)` with the highest `scores` (ties to the
//! lower position), sorted ascending. `0 <= k <= hi - lo`. `idx` is scratch of `hi - lo` entries.
//! Expected O(n + k log k); deterministic (a strict total order).
inline void top_k_positions(const float* scores, int lo, int hi, int k, std::int32_t* out, std::int32_t* idx) {
  const int n = hi - lo;
  if (k <= 0) return;
  for (int i = 0; i < n; ++i) idx[i] = lo + i;
  if (k < n) std::nth_element(idx, idx + k, idx + n, score_order{scores});
  std::sort(idx, idx + k);
  std::copy(idx, idx + k, out);
}

//! Keeps, of `n` tokens, the protected ones (the first `sinks`, the last `window`) and the
//! `budget - protected` highest-scored others, ties to the lower position. Writes the sorted
//! positions to `out` and returns their count, `min(budget, n)`. Requires `budget >= sinks +
//! window` or `budget >= n`. `idx`: scratch of n entries.
inline int select_protected_top_k(const float* scores, int n, int budget, int sinks, int window, std::int32_t* out,
                                  std::int32_t* idx) {
  if (n <= budget) {
    for (int t = 0; t < n; ++t) out[t] = t;
    return n;
  }
  const auto [lo, hi] = detail::compressible_range(n, sinks, window);
  int c = 0;
  for (int t = 0; t < lo; ++t) out[c++] = t;
  const int k = budget - lo - (n - hi);
  top_k_positions(scores, lo, hi, k, out + c, idx);
  c += k;
  for (int t = hi; t < n; ++t) out[c++] = t;
  return c;
}

}  // namespace host_backend
}  // namespace kvevict

//! \file host/window_attention.hpp
//! Host reference of window-attention scoring: two passes over the keys, O(tokens) scratch,
//! never a `[heads, window, tokens]` matrix.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstring>

#include "../config.hpp"
#include "../detail/math.hpp"
#include "../numeric.hpp"

namespace kvevict {
namespace detail {

#if defined(__GNUC__) || defined(__clang__)
#if defined(__AVX__)
inline constexpr int simd_floats = 8;  //!< one AVX register
#else
inline constexpr int simd_floats = 4;  //!< one SSE / NEON register
#endif
typedef float simd_float __attribute__((vector_size(simd_floats * 4)));
#endif

//! acc[c] = sum_d q[d] * kt[d * 16 + c] for c in [0, 16): one query against a tile of 16 keys
//! stored transposed. Accumulates in the order d = 0, 1, ... for every c (deterministic).
inline void dot_tile16(const float* q, const float* kt, int head_dim, float* acc) {
#if defined(__GNUC__) || defined(__clang__)
  constexpr int V = 16 / simd_floats;
  simd_float a[V] = {};
  for (int d = 0; d < head_dim; ++d, kt += 16) {
    const float qd = q[d];
    KVEVICT_UNROLL
    for (int v = 0; v < V; ++v) {
      simd_float k;
      std::memcpy(&k, kt + v * simd_floats, sizeof k);
      a[v] += qd * k;
    }
  }
  std::memcpy(acc, a, sizeof a);
#else
  float a[16] = {};
  for (int d = 0; d < head_dim; ++d, kt += 16)
    for (int c = 0; c < 16; ++c) a[c] += q[d] * kt[c];
  for (int c = 0; c < 16; ++c) acc[c] = a[c];
#endif
}

}  // namespace detail

namespace host_backend {

//! Keys scored together in one tile (the inner, vectorised loop runs over them).
inline constexpr int window_attention_key_tile = 16;

//! Floats of scratch `window_attention_group` needs.
inline std::size_t window_attention_scratch_floats(int head_dim, int window, int group) {
  const std::size_t rows = static_cast<std::size_t>(window) * group;
  return rows * head_dim                                                   // queries as float, pre-scaled
         + static_cast<std::size_t>(head_dim) * window_attention_key_tile  // key tile, transposed
         + 2 * rows                                                        // row max, 1 / row sum
         + static_cast<std::size_t>(group) * window_attention_key_tile;    // per-query-head column tile
}

//! Window attention of one KV head's query group over its keys.
//!
//! For each of the `group` query heads `j` and window query `r` (at position `n - window + r`),
//! the softmax of `q . k_t / sqrt(head_dim)` over keys `t <= n - window + r` (causal) is formed in
//! two passes (pass 1: running row max and sum; pass 2: normalised probabilities). For every key
//! `t` it calls `emit(t, col)` with `col[j]` = the probability mass query head `j` puts on `t`,
//! averaged over the window queries. Keys are read with `key(t)` -> `const T*` (head_dim
//! contiguous). Cost: 2 passes x group x window x n x head_dim FMAs. Deterministic.
//!
//! \param queries  the group's last `window` queries: query head j's row r at
//!                  `queries[j * query_head_stride + r * head_dim]` (dense: stride = window * head_dim)
//! \param scratch  window_attention_scratch_floats(head_dim, window, group) floats
template <class KeyFn, class Q, class Emit>
void window_attention_group(KeyFn key, int n, int head_dim, const Q* queries, std::size_t query_head_stride, int group,
                            int window, float* scratch, Emit emit) {
  constexpr int KT = window_attention_key_tile;
  const int rows = group * window;
  float* qf = scratch;
  float* kt = qf + static_cast<std::size_t>(rows) * head_dim;
  float* row_max = kt + static_cast<std::size_t>(head_dim) * KT;
  float* row_inv = row_max + rows;
  float* col = row_inv + rows;

  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int j = 0; j < group; ++j)
    for (std::size_t i = 0; i < static_cast<std::size_t>(window) * head_dim; ++i)
      qf[static_cast<std::size_t>(j) * window * head_dim + i] = to_float(queries[j * query_head_stride + i]) * scale;
  for (int r = 0; r < rows; ++r) {
    row_max[r] = -FLT_MAX;
    row_inv[r] = 0.0f;  // running sum in pass 1, its inverse in pass 2
  }

  auto load_tile = [&](int t0, int cnt) {
    for (int c = 0; c < KT; ++c) {
      if (c < cnt) {
        const auto* kp = key(t0 + c);
        for (int d = 0; d < head_dim; ++d) kt[static_cast<std::size_t>(d) * KT + c] = to_float(kp[d]);
      } else {
        for (int d = 0; d < head_dim; ++d) kt[static_cast<std::size_t>(d) * KT + c] = 0.0f;
      }
    }
  };
  auto logits = [&](int row, float* acc) {
    const float* q = qf + static_cast<std::size_t>(row) * head_dim;
    detail::dot_tile16(q, kt, head_dim, acc);
  };
  // Keys visible to window query r: t <= n - window + r.
  auto visible = [&](int row, int t0, int cnt) {
    const int last = n - window + row % window;
    const int v = last - t0 + 1;
    return v < cnt ? (v < 0 ? 0 : v) : cnt;
  };

  // Fixed-order pairwise reductions over a tile: deterministic, and they vectorise.
  auto tree_max = [](float* v) {
    for (int w = KT / 2; w > 0; w /= 2)
      for (int c = 0; c < w; ++c) v[c] = v[c + w] > v[c] ? v[c + w] : v[c];
    return v[0];
  };
  auto tree_sum = [](float* v) {
    for (int w = KT / 2; w > 0; w /= 2)
      for (int c = 0; c < w; ++c) v[c] += v[c + w];
    return v[0];
  };

  float acc[KT], tmp[KT];
  // Pass 1: row max and sum of exponentials (online over tiles).
  for (int t0 = 0; t0 < n; t0 += KT) {
    const int cnt = n - t0 < KT ? n - t0 : KT;
    load_tile(t0, cnt);
    for (int r = 0; r < rows; ++r) {
      const int vis = visible(r, t0, cnt);
      if (vis == 0) continue;
      logits(r, acc);
      for (int c = 0; c < KT; ++c) acc[c] = c < vis ? acc[c] : -FLT_MAX;  // masked keys
      for (int c = 0; c < KT; ++c) tmp[c] = acc[c];
      const float tile_max = tree_max(tmp);
      const float m = tile_max > row_max[r] ? tile_max : row_max[r];
      for (int c = 0; c < KT; ++c) tmp[c] = c < vis ? detail::exp_nonpositive(acc[c] - m) : 0.0f;
      row_inv[r] = row_inv[r] * detail::exp_nonpositive(row_max[r] - m) + tree_sum(tmp);
      row_max[r] = m;
    }
  }
  const float inv_window = 1.0f / static_cast<float>(window);
  for (int r = 0; r < rows; ++r) row_inv[r] = row_inv[r] > 0.0f ? inv_window / row_inv[r] : 0.0f;

  // Pass 2: normalised probabilities, summed over the window per query head.
  for (int t0 = 0; t0 < n; t0 += KT) {
    const int cnt = n - t0 < KT ? n - t0 : KT;
    load_tile(t0, cnt);
    for (int i = 0; i < group * KT; ++i) col[i] = 0.0f;
    for (int r = 0; r < rows; ++r) {
      const int vis = visible(r, t0, cnt);
      if (vis == 0) continue;
      logits(r, acc);
      float* cj = col + static_cast<std::size_t>(r / window) * KT;
      const float m = row_max[r], inv = row_inv[r];
      for (int c = 0; c < KT; ++c) cj[c] += c < vis ? detail::exp_nonpositive(acc[c] - m) * inv : 0.0f;
    }
    float vals[64];  // group <= 64 is checked by the scorer's validation
    for (int c = 0; c < cnt; ++c) {
      for (int j = 0; j < group; ++j) vals[j] = col[static_cast<std::size_t>(j) * KT + c];
      emit(t0 + c, static_cast<const float*>(vals));
    }
  }
}

}  // namespace host_backend
}  // namespace kvevict

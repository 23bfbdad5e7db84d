//! \file detail/wa_mma_core.hpp
//! The arithmetic of the tensor-core window-attention scorer (cuda/window_attention_mma.cuh) as
//! plain host-device functions, so the host tests drive the same steps the kernels run. Not API.
//!
//! The kernels compute logits `S^T = K Q^T` with `mma.sync.m16n8k16` (row.col, fp32 accumulate):
//! keys are the M dimension (16 per m-tile), window queries the N dimension (8 per n-tile), head
//! dims the K dimension (16 per k-step). Per lane, the accumulator holds 4 logits: keys
//! `g = lane / 4` and `g + 8` of the m-tile, queries `2 t` and `2 t + 1` of the n-tile
//! (`t = lane % 4`). Pass 1 keeps, per lane and per query it owns, a running (max, sum of 2^x) in
//! registers over its keys; the lanes that share a query merge with three butterfly steps
//! (xor 4, 8, 16); key slices merge in slice order. Pass 2 sums the normalised probabilities of a
//! key over each n-tile (lane pairs, then xor 1, 2), writes one partial per (n-tile, key), and one
//! thread per key adds the partials of each query head in n-tile order and reduces over the GQA
//! group. Every order is fixed, so results are deterministic.
//!
//! Logits are kept in log2 units: `x = (q . k) * (log2(e) / sqrt(head_dim))`, `p = 2^(x - m) / l`.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "../config.hpp"

namespace kvevict::detail {

// ---- mma.sync m16n8k16 fragment coordinates (PTX ISA, "Matrix Fragments for mma.m16n8k16") ----

//! Accumulator element `i` (0..3) of `lane`: row (key within the m-tile) and column (query within
//! the n-tile).
KVEVICT_HOST_DEVICE int mma_c_row(int lane, int i) { return lane / 4 + 8 * (i / 2); }
KVEVICT_HOST_DEVICE int mma_c_col(int lane, int i) { return (lane % 4) * 2 + (i % 2); }
//! A register `r` (0..3) of `lane` holds row `mma_a_row` and columns `mma_a_col`, `+ 1`.
KVEVICT_HOST_DEVICE int mma_a_row(int lane, int r) { return lane / 4 + 8 * (r % 2); }
KVEVICT_HOST_DEVICE int mma_a_col(int lane, int r) { return (lane % 4) * 2 + 8 * (r / 2); }
//! B register `r` (0..1) of `lane` holds column (query) `lane / 4`, rows (k) `mma_b_k`, `+ 1`.
KVEVICT_HOST_DEVICE int mma_b_n(int lane) { return lane / 4; }
KVEVICT_HOST_DEVICE int mma_b_k(int lane, int r) { return (lane % 4) * 2 + 8 * r; }
//! `ldmatrix.x4` row address each lane supplies so that the four 8x8 matrices arrive as the A
//! registers of one 16x16 tile: matrix `lane / 8` is (rows +8 for odd, columns +8 for >= 2).
KVEVICT_HOST_DEVICE int ldmatrix_a_row(int lane) { return lane % 8 + 8 * ((lane / 8) % 2); }
KVEVICT_HOST_DEVICE int ldmatrix_a_col(int lane) { return 8 * (lane / 16); }

// ---- the window queries of one (sequence, KV head), head-aligned ----

//! Rows of the query tile: query head `j` of the GQA group occupies rows `[j * wpad, j * wpad +
//! window)`, padded to whole n-tiles of 8, so an n-tile never straddles two heads.
struct wa_rows {
  int window = 0, group = 0, wpad = 0;

  KVEVICT_HOST_DEVICE static wa_rows make(int window, int group) {
    wa_rows r;
    r.window = window;
    r.group = group;
    r.wpad = (window + 7) / 8 * 8;
    return r;
  }
  KVEVICT_HOST_DEVICE int rows() const { return group * wpad; }
  KVEVICT_HOST_DEVICE int ntiles() const { return rows() / 8; }
  KVEVICT_HOST_DEVICE int head_of(int row) const { return row / wpad; }
  KVEVICT_HOST_DEVICE int index_of(int row) const { return row % wpad; }  //!< query within the window
  KVEVICT_HOST_DEVICE bool valid(int row) const { return row < rows() && row % wpad < window; }
  //! Whether window query `row` sees key `t` of a sequence of `n` tokens (causal: the query at
  //! position n - window + i sees keys t <= n - window + i).
  KVEVICT_HOST_DEVICE bool sees(int row, int t, int n) const { return valid(row) && t <= n - window + row % wpad; }
  //! The last key below `t_end` that window query `row` sees (-1 for a padding row): for t >= 0,
  //! `t < t_end && sees(row, t, n)` exactly when `t <= last_key(row, n, t_end)`.
  KVEVICT_HOST_DEVICE int last_key(int row, int n, int t_end) const {
    if (!valid(row)) return -1;
    const int last = n - window + row % wpad;
    return last < t_end - 1 ? last : t_end - 1;
  }
  //! Keys below this, and below `t_end`, are seen by every real (non-padding) query: for t >= 0,
  //! `t < seen_by_all(n, t_end)` and `valid(row)` give `t < t_end && sees(row, t, n)`. The kernels
  //! test a logit of such a key by the row's validity alone (a bit), and call `last_key` (a
  //! division) only in the few m-tiles past it: the window's own keys.
  KVEVICT_HOST_DEVICE int seen_by_all(int n, int t_end) const {
    const int e = n - window + 1;
    return e < t_end ? e : t_end;
  }
};

// ---- softmax statistics in log2 units ----

//! 2^x for the softmax terms (x <= 0, -inf -> 0): exp2f, which the device compiles to `ex2`
//! with its range handling (within 2 ulp of the host's exp2f).
KVEVICT_HOST_DEVICE float exp2_nonpositive(float x) { return exp2f(x); }

//! A running (max, sum of 2^(x - max)) over the logits one lane has seen for one query.
struct log2_stats {
  float m = -FLT_MAX, l = 0.0f;

  //! Adds logit `x` (log2 units). The sum is rescaled only when the max grows.
  KVEVICT_HOST_DEVICE void add(float x) {
    if (x > m) {
      l *= exp2_nonpositive(m - x);
      m = x;
    }
    l += exp2_nonpositive(x - m);
  }
  //! Merges another lane's, slice's or block's statistics for the same query.
  KVEVICT_HOST_DEVICE void merge(const log2_stats& o) {
    if (o.l == 0.0f) return;
    if (l == 0.0f) {
      *this = o;
      return;
    }
    const float mm = o.m > m ? o.m : m;
    l = l * exp2_nonpositive(m - mm) + o.l * exp2_nonpositive(o.m - mm);
    m = mm;
  }
};

//! One key's score from its per-n-tile probability sums `part[nt * stride]` (nt = 0 .. ntiles):
//! per query head, the n-tiles of that head added in order (each already the mean over the window,
//! the normalisation folds 1 / window), then `Reduce` over the group.
template <class Reduce>
KVEVICT_HOST_DEVICE float wa_key_score(const float* part, int stride, const wa_rows& rows) {
  float per_head[64];  // group <= 64: the scorer's validation bounds it
  const int tiles_per_head = rows.wpad / 8;
  for (int j = 0; j < rows.group; ++j) {
    float s = 0.0f;
    for (int k = 0; k < tiles_per_head; ++k) s += part[(j * tiles_per_head + k) * stride];
    per_head[j] = s;
  }
  return Reduce::reduce(per_head, rows.group);
}

}  // namespace kvevict::detail

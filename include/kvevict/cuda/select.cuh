//! \file cuda/select.cuh
//! Deterministic protected top-k per (sequence, KV head) on the device: an exact radix select of
//! the k-th largest score (four 8-bit digit passes over the row, in shared memory), then one
//! ordered pass that keeps the protected tokens, every score above the threshold, and the
//! lowest-positioned ties, writing sorted positions. The same set as the host's
//! `select_protected_top_k` bit for bit, for the same scores. Not API.
#pragma once

#include <cub/block/block_scan.cuh>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "../detail/radix_select.hpp"
#include "../keep_plan.hpp"
#include "geometry.cuh"
#include "rules.cuh"

namespace kvevict::cuda_backend {

inline constexpr int select_threads = 512;

using detail::order_key;

//! One block per (sequence, KV head) row. `scores` in slab layout.
template <class Cache>
__global__ void __launch_bounds__(select_threads)
    select_top_k_kernel(Cache c, seq_rules rules, const float* scores, keep_plan out, int* word) {
  using scan = cub::BlockScan<int, select_threads>;
  __shared__ typename scan::TempStorage scan_tmp;
  __shared__ unsigned hist[256];
  __shared__ std::uint32_t s_prefix, s_mask;
  __shared__ int s_krem, s_bad, s_base, s_eq_base;

  const int kvh = c.num_kv_heads(), r = blockIdx.x, s = r / kvh, h = r % kvh;
  if (block_failed(word)) return;
  const seq_info si = rules.info(c, s);
  const int n = c.seq_len(s, h);
  std::int32_t* row = out.row(r);
  if (si.kept_whole) {
    for (int t = threadIdx.x; t < n; t += blockDim.x) row[t] = t;
    if (threadIdx.x == 0) out.counts[r] = n;
    return;
  }
  const float* sc = scores + row_base(c, s, h);
  if (threadIdx.x == 0) s_bad = 0;
  __syncthreads();
  for (int t = threadIdx.x; t < n; t += blockDim.x)
    if (!isfinite(sc[t])) atomicOr(&s_bad, 1);
  __syncthreads();
  if (s_bad) {
    if (threadIdx.x == 0) raise(word, dc_score_non_finite);
    return;
  }
  const int lo = si.sinks < n ? si.sinks : n, hi = n - si.window > lo ? n - si.window : lo;
  const int k = si.budget - lo - (n - hi);  // unprotected tokens to keep, 0 <= k < hi - lo

  if (threadIdx.x == 0) {
    s_prefix = 0;
    s_mask = 0;
    s_krem = k;
  }
  __syncthreads();
  if (k > 0) {
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
      __syncthreads();
      const std::uint32_t prefix = s_prefix, mask = s_mask;
      for (int t = lo + threadIdx.x; t < hi; t += blockDim.x) {
        const std::uint32_t key = order_key(sc[t]);
        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        int krem = s_krem;
        const int digit = detail::pick_digit(hist, krem);
        s_krem = krem;
        s_prefix = prefix | (static_cast<std::uint32_t>(digit) << shift);
        s_mask = mask | (255u << shift);
      }
      __syncthreads();
    }
  }
  // Threshold key `thr`: keep keys above it and the first `krem` keys equal to it (by position).
  const std::uint32_t thr = s_prefix;
  const int krem = s_krem;
  if (threadIdx.x == 0) {
    s_base = 0;
    s_eq_base = 0;
  }
  __syncthreads();
  for (int t0 = 0; t0 < n; t0 += select_threads) {
    const int t = t0 + threadIdx.x;
    bool keep = false;
    int eq = 0;
    if (t < n) {
      if (t < lo || t >= hi) {
        keep = true;
      } else if (k > 0) {
        const std::uint32_t key = order_key(sc[t]);
        keep = key > thr;
        eq = key == thr;
      }
    }
    int eq_rank, eq_total;
    scan(scan_tmp).ExclusiveSum(eq, eq_rank, eq_total);
    __syncthreads();
    if (eq && s_eq_base + eq_rank < krem) keep = true;
    int pos, total;
    scan(scan_tmp).ExclusiveSum(keep ? 1 : 0, pos, total);
    if (keep) row[s_base + pos] = t;
    __syncthreads();
    if (threadIdx.x == 0) {
      s_base += total;
      s_eq_base += eq_total;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out.counts[r] = s_base;
}

}  // namespace kvevict::cuda_backend

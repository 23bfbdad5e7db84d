//! \file cuda/adaptive.cuh
//! Ada-KV's per-head budgets (`adaptive_budget`) on the device: each sequence's compressible
//! budget shared by its KV heads, the same budgets as the host's `adaptive_budget::allocate`, bit
//! for bit, without sorting. Not API.
//!
//! Three launches before the top-k (grid: blocks per row x rows, as the top-k's passes), one per
//! digit of the candidates' 32-bit order keys (11, 11, 10 bits): each block counts its slice of a
//! row's compressible keys that agree with the sequence's threshold so far, by digit, into the
//! row's global histogram; the sequence's last block picks the digit from its heads' histograms
//! (`ada_pick`: `detail::ada_pick_digit`'s pick, a chunk of bins per thread). The first pass's last block also takes
//! the short way when the extras never exhaust the pool (every head takes all it wants). After the
//! third digit the threshold key is known and the ties at it go in head order
//! (`detail::ada_tie_count`, head by head as `detail::ada_extras` does); the last block writes the
//! heads' budgets, which the top-k then reads (`seq_rules::row_budgets`). The per-head arithmetic is
//! detail/adaptive_alloc.hpp, which the host tests drive against the host's allocation; the chunked
//! pick itself runs only on a device (tests/cuda/test_cuda.cu). Traffic: three reads of the scores (4 MiB at 131,072 tokens
//! and 8 KV heads).
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "../detail/adaptive_alloc.hpp"
#include "../detail/radix_select.hpp"
#include "geometry.cuh"
#include "rules.cuh"
#include "select.cuh"

namespace kvevict::cuda_backend {

//! A sequence's search: the threshold's digits so far, the pool, whether it is settled.
struct ada_state {
  std::uint32_t prefix;
  int done;
  long long pool;
};

template <class Cache>
struct ada_args {
  Cache cache;
  seq_rules rules;
  const float* scores;  // slab layout
  unsigned* hist;       // [rows, 3, topk_bins]  zeroed per call
  int* seq_blocks;      // [num_seqs, 3] blocks done per pass; zeroed per call
  long long* above;     // [rows] candidates above the current group
  int* guaranteed;      // [rows] g_h
  ada_state* state;     // [num_seqs]
  std::int32_t* budgets;  // [rows] output: each head's budget
  int capacity;         // the plan's row capacity
  int* word;
};

//! Scratch: histograms and block counters (zeroed by the call's memset), then the plain arrays.
struct ada_layout {
  std::size_t zeroed, plain;
  int rows, seqs;
  template <class Cache>
  static ada_layout of(const Cache& c) {
    ada_layout l{};
    l.seqs = c.num_seqs();
    l.rows = l.seqs * c.num_kv_heads();
    const std::size_t rows = static_cast<std::size_t>(l.rows), seqs = static_cast<std::size_t>(l.seqs);
    l.zeroed = sizeof(unsigned) * rows * 3 * topk_bins + sizeof(int) * seqs * 3;
    l.plain = detail::workspace_layout<4>{{sizeof(long long) * rows, sizeof(int) * rows, sizeof(ada_state) * seqs,
                                           sizeof(std::int32_t) * rows}}
                  .total();
    return l;
  }
};

//! One head's guaranteed share and compressible range of sequence `s` under `si`.
template <class Cache>
__device__ int ada_head_guaranteed(const Cache& c, const row_rule& si, double fraction, int s, int h) {
  const int bc = si.entries - si.sinks - si.window;
  const detail::token_range range = si.range(c.seq_len(s, h));
  const int g = detail::ada_guaranteed(fraction, bc), room = range.hi - range.lo;
  return g < room ? g : room;
}

//! The sequence's last block, after pass `Pass`: picks the digit (or settles the sequence) and,
//! when settled, writes the heads' budgets.
template <int Pass, class Cache>
__device__ void ada_pick(const ada_args<Cache>& a, int s, const row_rule& si) {
  constexpr int bins = Pass == 2 ? 1 << 10 : topk_bins, per = bins / topk_threads;
  using scan = cub::BlockScan<long long, topk_threads>;
  using reduce = cub::BlockReduce<long long, topk_threads>;
  __shared__ typename scan::TempStorage scan_tmp;
  __shared__ typename reduce::TempStorage reduce_tmp;
  __shared__ long long s_sum;
  __shared__ int s_digit;
  const int kvh = a.cache.num_kv_heads(), r0 = s * kvh;
  const unsigned* hist = a.hist + static_cast<std::size_t>(r0) * 3 * topk_bins + static_cast<std::size_t>(Pass) * topk_bins;
  auto h_hist = [&](int h) { return hist + static_cast<std::size_t>(h) * 3 * topk_bins; };
  ada_state st = a.state[s];
  if (Pass == 0) {  // every head's share, the pool, its totals: settle now when the pool is never exhausted
    long long pool = static_cast<long long>(kvh) * (si.entries - si.sinks - si.window);
    for (int h = 0; h < kvh; ++h) {
      const int g = ada_head_guaranteed(a.cache, si, a.rules.floor_fraction, s, h);
      pool -= g;
      long long mine = 0;
      for (int d = threadIdx.x; d < bins; d += topk_threads) mine += __ldcg(&h_hist(h)[d]);
      const long long total = reduce(reduce_tmp).Sum(mine);
      if (threadIdx.x == 0) {
        a.guaranteed[r0 + h] = g;
        a.above[r0 + h] = total;  // until settled below or reset for the search
        s_sum = (h == 0 ? 0 : s_sum) + detail::ada_excess(total, g);
      }
      __syncthreads();
    }
    st = ada_state{0u, pool <= 0 || s_sum <= pool, pool};
    if (st.done) {  // extras: all each head wants (none with an empty pool)
      for (int h = threadIdx.x; h < kvh; h += topk_threads) {
        const int r = r0 + h, n = a.cache.seq_len(s, h), g = a.guaranteed[r];
        const detail::token_range range = si.range(n);
        const long long extra = pool <= 0 ? 0 : detail::ada_excess(a.above[r], g);
        const long long b = detail::ada_budget(range.lo, range.hi, n, g, extra);
        if (b > a.capacity) raise(a.word, ck_plan_capacity_kept);
        a.budgets[r] = static_cast<std::int32_t>(b);
      }
      if (threadIdx.x == 0) a.state[s] = st;
      return;
    }
    for (int h = threadIdx.x; h < kvh; h += topk_threads) a.above[r0 + h] = 0;
    __syncthreads();
  }
  // F(d) for this thread's bins [lo, hi) (thread 0 owns the top chunk) and F(hi), over every head.
  const int hi = bins - static_cast<int>(threadIdx.x) * per, lo = hi - per;
  long long f[per], f_hi = 0;
  for (int j = 0; j < per; ++j) f[j] = 0;
  if (threadIdx.x == 0) s_digit = 0;  // (always overwritten: F(lowest bin) >= pool > F(above))
  for (int h = 0; h < kvh; ++h) {
    const unsigned* hh = h_hist(h);
    long long mine = 0;
    for (int d = lo; d < hi; ++d) mine += __ldcg(&hh[d]);
    long long over;  // this head's group keys in the bins above the chunk
    scan(scan_tmp).ExclusiveSum(mine, over);
    __syncthreads();
    const long long base = a.above[r0 + h] + over;
    const int g = a.guaranteed[r0 + h];
    f_hi += detail::ada_excess(base, g);
    long long s_h = base;
    for (int j = per - 1; j >= 0; --j) {  // bins from hi - 1 down to lo
      s_h += __ldcg(&hh[lo + j]);
      f[j] += detail::ada_excess(s_h, g);
    }
  }
  for (int j = per - 1; j >= 0; --j) {
    const long long prev = j == per - 1 ? f_hi : f[j + 1];
    if (f[j] >= st.pool && prev < st.pool) s_digit = lo + j;  // exactly one bin of the block
  }
  __syncthreads();
  const int d = s_digit;
  // Each head's group keys above the digit join `above`; at the last digit the ones equal to it
  // are the ties.
  for (int h = 0; h < kvh; ++h) {
    const unsigned* hh = h_hist(h);
    long long mine = 0;
    for (int e = d + 1 + static_cast<int>(threadIdx.x); e < bins; e += topk_threads) mine += __ldcg(&hh[e]);
    const long long over = reduce(reduce_tmp).Sum(mine);
    if (threadIdx.x == 0) a.above[r0 + h] += over;
    __syncthreads();
  }
  st.prefix |= static_cast<std::uint32_t>(d) << detail::topk_shift(Pass);
  if (Pass < 2) {
    if (threadIdx.x == 0) a.state[s] = st;
    return;
  }
  if (threadIdx.x == 0) {  // the ties in head order, then every head's budget
    long long f = 0;
    for (int h = 0; h < kvh; ++h) f += detail::ada_excess(a.above[r0 + h], a.guaranteed[r0 + h]);
    bool reached = false;
    for (int h = 0; h < kvh; ++h) {
      const int r = r0 + h, g = a.guaranteed[r], n = a.cache.seq_len(s, h);
      const long long above = a.above[r], equal = __ldcg(&h_hist(h)[d]);
      const long long c = detail::ada_tie_count(above, equal, g, st.pool, f, reached);
      const detail::token_range range = si.range(n);
      const long long b = detail::ada_budget(range.lo, range.hi, n, g, detail::ada_excess(c, g));
      if (b > a.capacity) raise(a.word, ck_plan_capacity_kept);
      a.budgets[r] = static_cast<std::int32_t>(b);
    }
    st.done = 1;
    a.state[s] = st;
  }
}

//! Pass `Pass` of the allocation. Grid (blocks per row, rows).
template <int Pass, class Cache>
__global__ void __launch_bounds__(topk_threads) ada_hist_kernel(ada_args<Cache> a) {
  __shared__ unsigned sh[topk_bins];
  __shared__ int s_last;
  const int r = blockIdx.y, b = blockIdx.x;
  if (block_failed(a.word)) return;
  const int kvh = a.cache.num_kv_heads(), s = r / kvh, h = r % kvh;
  const row_rule si = a.rules.info(a.cache, s);
  if (si.kept_whole()) return;
  if (Pass > 0 && a.state[s].done) return;
  const int n = a.cache.seq_len(s, h), t_begin = b * topk_items;
  if (t_begin >= n) return;
  int blocks = 0;  // the sequence's blocks in this pass: every row's slices
  for (int x = 0; x < kvh; ++x) blocks += (a.cache.seq_len(s, x) + topk_items - 1) / topk_items;
  const detail::token_range range = si.range(n);
  const float* sc = a.scores + row_base(a.cache, s, h);
  const std::uint32_t prefix = Pass == 0 ? 0u : a.state[s].prefix;
  for (int i = threadIdx.x; i < topk_bins; i += topk_threads) sh[i] = 0;
  __syncthreads();
  for (int j = 0; j < topk_per_thread; ++j) {
    const int t = t_begin + j * topk_threads + static_cast<int>(threadIdx.x);
    const bool cand = t < n && t >= range.lo && t < range.hi;
    const float v = cand ? sc[t] : 0.0f;
    const std::uint32_t key = cand ? detail::order_key(isfinite(v) ? v : 0.0f) : 0u;  // the top-k rejects them
    const bool match = cand && detail::topk_matches(key, prefix, Pass);
    warp_aggregated_add(sh, detail::topk_digit(key, Pass), match);
  }
  __syncthreads();
  unsigned* gh = a.hist + (static_cast<std::size_t>(r) * 3 + Pass) * topk_bins;
  for (int i = threadIdx.x; i < topk_bins; i += topk_threads)
    if (sh[i]) atomicAdd(&gh[i], sh[i]);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(&a.seq_blocks[s * 3 + Pass], 1) == blocks - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  ada_pick<Pass>(a, s, si);
}

//! Enqueues the allocation (three launches) on scratch the call's memset zeroed; afterwards
//! `budgets` holds every (sequence, head) row's budget for the sequences not kept whole.
template <class Cache>
status enqueue_adaptive(cudaStream_t st, const Cache& c, const seq_rules& rules, const float* scores, int capacity,
                        void* zeroed, void* plain, int* word, std::int32_t*& budgets) {
  const ada_layout l = ada_layout::of(c);
  const topk_layout tl = topk_layout::of(c);
  ada_args<Cache> a{};
  a.cache = c;
  a.rules = rules;
  a.scores = scores;
  a.hist = static_cast<unsigned*>(zeroed);
  a.seq_blocks = reinterpret_cast<int*>(a.hist + static_cast<std::size_t>(l.rows) * 3 * topk_bins);
  void* p[4];
  const std::size_t rows = static_cast<std::size_t>(l.rows), seqs = static_cast<std::size_t>(l.seqs);
  detail::workspace_layout<4>{{sizeof(long long) * rows, sizeof(int) * rows, sizeof(ada_state) * seqs,
                               sizeof(std::int32_t) * rows}}
      .carve(plain, p);
  a.above = static_cast<long long*>(p[0]);
  a.guaranteed = static_cast<int*>(p[1]);
  a.state = static_cast<ada_state*>(p[2]);
  a.budgets = static_cast<std::int32_t*>(p[3]);
  a.capacity = capacity;
  a.word = word;
  budgets = a.budgets;
  const dim3 grid(static_cast<unsigned>(tl.blocks_per_row), static_cast<unsigned>(l.rows));
  ada_hist_kernel<0><<<grid, topk_threads, 0, st>>>(a);
  KVEVICT_TRY(check_launch("per-head budgets pass 1: kernel launch"));
  ada_hist_kernel<1><<<grid, topk_threads, 0, st>>>(a);
  KVEVICT_TRY(check_launch("per-head budgets pass 2: kernel launch"));
  ada_hist_kernel<2><<<grid, topk_threads, 0, st>>>(a);
  return check_launch("per-head budgets pass 3: kernel launch");
}

}  // namespace kvevict::cuda_backend

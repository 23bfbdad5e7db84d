//! \file cuda/select.cuh
//! Deterministic protected top-k per (sequence, KV head) on the device, spread over many blocks per
//! row: an exact radix select of the k-th largest score in three digits (11, 11, 10 bits), then one
//! stable write of the kept positions. The same set as the host's `select_protected_top_k` bit for
//! bit, for the same scores. Not API.
//!
//!  * pass 1 (grid: blocks per row x rows): each block counts the top digit of its slice of the
//!    compressible range in shared memory (warp-aggregated atomics) and adds its bins to the row's
//!    global histogram; it also rejects non-finite scores over the whole row. The last block of a
//!    row picks the digit. For a pooled scorer it first pools its slice of the unpooled scores into
//!    the slab (`topk_source`): the pooling pass fused into this one, one launch fewer.
//!  * pass 2: the same for the second digit among the keys that share the first, which are also
//!    gathered (positions) into a candidate list; the row's last block picks the second digit, then
//!    the third over the candidates alone, giving the threshold key and how many keys equal to it
//!    are kept (the first ones by position).
//!  * write: blocks take rows' slices in ticket order and publish their counts (kept-for-sure,
//!    equal to the threshold) for a decoupled look-back, so each block knows how many positions the
//!    slices before it keep and writes its own, in order.
//! The arithmetic (digits, the chunked digit pick, offsets, look-back words) is
//! detail/radix_select.hpp, which the host tests drive. Global traffic at 131,072 tokens and 8 KV
//! heads: three reads of the 4 MiB of scores plus the candidates, about 5 us of bandwidth.
#pragma once

#include <cub/block/block_scan.cuh>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "../detail/radix_select.hpp"
#include "../keep_plan.hpp"
#include "../scorer/pooling.hpp"
#include "geometry.cuh"
#include "rules.cuh"

namespace kvevict::cuda_backend {

inline constexpr int topk_threads = 512, topk_per_thread = 8, topk_items = topk_threads * topk_per_thread;
inline constexpr int topk_bins = 2048;

//! A row's threshold: keep keys above `prefix`, and `krem` keys equal to it (the first by position).
struct topk_state {
  std::uint32_t prefix;
  int krem;
};

//! Where pass 1 reads the scores: the slab as the scorer left it (`Pool` = no_pool), or the
//! scorer's unpooled scores `raw` (slab layout), which pass 1 pools as the pooling pass would
//! (`pool_at` over the keys before the window, the window's own copied) into `pooled`: the slab
//! the later passes read (`topk_args::scores`).
template <class Pool>
struct topk_source {
  const float* raw = nullptr;
  float* pooled = nullptr;
  int kernel = 1;
};

template <class Cache, class Pool = no_pool>
struct topk_args {
  Cache cache;
  seq_rules rules;
  topk_source<Pool> source;
  const float* scores;  // slab layout (written by pass 1 when it pools)
  keep_plan out;
  unsigned* hist;                 // [rows, 2, topk_bins]   zeroed per call
  int* counters;                  // [rows, 3]: candidates, pass-1 blocks done, pass-2 blocks done; zeroed
  unsigned long long* lookback;   // [rows, blocks per row] zeroed per call
  int* ticket;                    // [1] zeroed per call
  std::int32_t* cand;             // [rows, cand_stride]
  topk_state* state;              // [rows]
  int cand_stride, blocks_per_row;
  int* word;
};

//! Scratch of the top-k: counters, histograms and look-back words (zeroed by the call's memset),
//! then candidates and row states.
struct topk_layout {
  std::size_t zeroed, cand, state;
  int rows, blocks_per_row, cand_stride;
  template <class Cache>
  static topk_layout of(const Cache& c) {
    topk_layout l{};
    l.rows = c.num_seqs() * c.num_kv_heads();
    l.cand_stride = max_row_cap(c);
    l.blocks_per_row = (l.cand_stride + topk_items - 1) / topk_items;
    const std::size_t rows = static_cast<std::size_t>(l.rows);
    // look-back words (8-byte aligned at the base), histograms, counters, the ticket
    l.zeroed = sizeof(unsigned long long) * rows * l.blocks_per_row + sizeof(unsigned) * rows * 2 * topk_bins +
               sizeof(int) * rows * 3 + sizeof(int);
    l.cand = sizeof(std::int32_t) * rows * static_cast<std::size_t>(l.cand_stride);
    l.state = sizeof(topk_state) * rows;
    return l;
  }
  scratch_request request() const { return {zeroed, detail::workspace_layout<2>{{cand, state}}.total()}; }
};

//! One row's selection parameters.
struct topk_row {
  int s, h, n, lo, hi, k, count, window;
  bool whole;  //!< kept whole: every position, nothing scored
};
template <class Args>
__device__ topk_row topk_row_of(const Args& a, int r) {
  topk_row w{};
  const int kvh = a.cache.num_kv_heads();
  w.s = r / kvh;
  w.h = r % kvh;
  const row_rule si = a.rules.info(a.cache, w.s);
  w.n = a.cache.seq_len(w.s, w.h);
  // The row's budget: the sequence's, or the head's own (per-head allocation) unless kept whole.
  const int budget = a.rules.row_budgets != nullptr && !si.kept_whole() ? a.rules.row_budgets[r] : si.budget;
  w.whole = si.kept_whole() || w.n <= budget;
  const detail::token_range range = si.range(w.n);
  w.lo = range.lo;
  w.hi = range.hi;
  w.k = w.whole ? 0 : budget - w.lo - (w.n - w.hi);
  w.count = w.whole ? w.n : budget;
  w.window = si.window;
  return w;
}

//! Adds 1 to `hist[digit]` for every active lane, one atomic per distinct digit in the warp.
__device__ __forceinline__ void warp_aggregated_add(unsigned* hist, int digit, bool active) {
  const unsigned mask = __ballot_sync(0xffffffffu, active);
  if (!active) return;
  const unsigned peers = __match_any_sync(mask, digit);
  if ((threadIdx.x % 32) == __ffs(peers) - 1) atomicAdd(&hist[digit], static_cast<unsigned>(__popc(peers)));
}

//! The block's digit pick over `bins` bins of `hist` (shared memory): thread i checks a chunk of
//! bins from the top; exactly one finds the k-th largest key.
template <int Bins>
__device__ void block_pick_digit(const unsigned* hist, int krem, int* s_digit, int* s_krem) {
  using scan = cub::BlockScan<int, topk_threads>;
  __shared__ typename scan::TempStorage tmp;
  constexpr int per = Bins / topk_threads;
  const int hi = Bins - threadIdx.x * per, lo = hi - per;  // thread 0 owns the top chunk
  if (threadIdx.x == 0) {  // pick_digit's answer when no bin holds the k-th key (not reached)
    *s_digit = 0;
    *s_krem = krem;
  }
  __syncthreads();
  int mine = 0;
  for (int d = lo; d < hi; ++d) mine += static_cast<int>(hist[d]);
  int above;
  scan(tmp).ExclusiveSum(mine, above);
  int digit, k2;
  if (detail::pick_digit_in_chunk(hist, lo, hi, above, krem, digit, k2)) {
    *s_digit = digit;
    *s_krem = k2;
  }
  __syncthreads();
}

//! Passes 1 (`Pass` 0) and 2 (`Pass` 1) of the radix select. Grid (blocks per row, rows).
template <int Pass, class Cache, class Pool>
__global__ void __launch_bounds__(topk_threads) topk_hist_kernel(topk_args<Cache, Pool> a) {
  __shared__ unsigned sh[topk_bins];
  __shared__ int s_last, s_bad, s_digit, s_krem;
  const int r = blockIdx.y, b = blockIdx.x;
  if (block_failed(a.word)) return;
  const topk_row w = topk_row_of(a, r);
  const int t_begin = b * topk_items, t_end = w.n < t_begin + topk_items ? w.n : t_begin + topk_items;
  if (w.whole || t_begin >= w.n || (Pass == 1 && w.k <= 0)) return;
  const int blocks = (w.n + topk_items - 1) / topk_items;
  const std::size_t base = row_base(a.cache, w.s, w.h);
  const float* sc = a.scores + base;
  for (int i = threadIdx.x; i < topk_bins; i += topk_threads) sh[i] = 0;
  if (threadIdx.x == 0) s_bad = 0;
  __syncthreads();
  const std::uint32_t prefix = Pass == 0 ? 0u : a.state[r].prefix;
  // Items in warp-contiguous order: lanes of a warp read consecutive positions.
  for (int j = 0; j < topk_per_thread; ++j) {
    const int t = t_begin + j * topk_threads + static_cast<int>(threadIdx.x);
    const bool in = t < t_end;
    float v = 0.0f;
    if constexpr (Pass == 0 && Pool::enabled) {  // pool this slice into the slab (read by pass 2 and the write)
      const int m = w.n - w.window;
      if (in) {
        v = t < m ? detail::pool_at<Pool>(a.source.raw + base, m, a.source.kernel, t) : a.source.raw[base + t];
        a.source.pooled[base + t] = v;
      }
    } else if (in) {
      v = sc[t];
    }
    if (Pass == 0 && in && !isfinite(v)) s_bad = 1;
    const bool compressible = in && t >= w.lo && t < w.hi && w.k > 0;
    const std::uint32_t key = compressible ? detail::order_key(isfinite(v) ? v : 0.0f) : 0u;
    const bool match = compressible && detail::topk_matches(key, prefix, Pass);
    warp_aggregated_add(sh, detail::topk_digit(key, Pass), match);
    if (Pass == 1) {  // gather the candidates (any order: the threshold does not depend on it)
      const unsigned mask = __ballot_sync(0xffffffffu, match);
      int base = 0;
      if ((threadIdx.x % 32) == 0 && mask) base = atomicAdd(&a.counters[r * 3], __popc(mask));
      base = __shfl_sync(0xffffffffu, base, 0);
      if (match) a.cand[static_cast<std::size_t>(r) * a.cand_stride + base + __popc(mask & ((1u << (threadIdx.x % 32)) - 1u))] = t;
    }
  }
  __syncthreads();
  if (s_bad) raise(a.word, ck_score_non_finite);
  if (w.k <= 0) return;
  unsigned* gh = a.hist + (static_cast<std::size_t>(r) * 2 + Pass) * topk_bins;
  for (int i = threadIdx.x; i < topk_bins; i += topk_threads)
    if (sh[i]) atomicAdd(&gh[i], sh[i]);
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(&a.counters[r * 3 + 1 + Pass], 1) == blocks - 1;
  __syncthreads();
  if (!s_last) return;
  // The row's last block: pick this pass's digit from the row histogram.
  __threadfence();
  for (int i = threadIdx.x; i < topk_bins; i += topk_threads) sh[i] = __ldcg(&gh[i]);
  __syncthreads();
  block_pick_digit<topk_bins>(sh, Pass == 0 ? w.k : a.state[r].krem, &s_digit, &s_krem);
  std::uint32_t pre = prefix | static_cast<std::uint32_t>(s_digit) << detail::topk_shift(Pass);
  int krem = s_krem;
  if (Pass == 1) {  // the last 10 bits over the candidates
    __syncthreads();
    for (int i = threadIdx.x; i < topk_bins; i += topk_threads) sh[i] = 0;
    __syncthreads();
    const int nc = __ldcg(&a.counters[r * 3]);
    const std::int32_t* cand = a.cand + static_cast<std::size_t>(r) * a.cand_stride;
    for (int i0 = 0; i0 < nc; i0 += topk_threads) {
      const int i = i0 + static_cast<int>(threadIdx.x);
      const std::uint32_t key = i < nc ? detail::order_key(sc[__ldcg(&cand[i])]) : 0u;
      const bool match = i < nc && detail::topk_matches(key, pre, 2);
      warp_aggregated_add(sh, detail::topk_digit(key, 2), match);
    }
    __syncthreads();
    block_pick_digit<1 << 10>(sh, krem, &s_digit, &s_krem);
    pre |= static_cast<std::uint32_t>(s_digit);
    krem = s_krem;
  }
  if (threadIdx.x == 0) a.state[r] = topk_state{pre, krem};
}

//! The stable write: blocks take (row, slice) by ticket, so every slice before theirs belongs to a
//! running block; counts travel by decoupled look-back.
template <class Cache, class Pool>
__global__ void __launch_bounds__(topk_threads) topk_write_kernel(topk_args<Cache, Pool> a) {
  using scan = cub::BlockScan<int, topk_threads>;
  __shared__ typename scan::TempStorage tmp;
  __shared__ int s_r, s_b, s_sure, s_equal;
  if (block_failed(a.word)) return;
  if (threadIdx.x == 0) {
    const int g = atomicAdd(a.ticket, 1);
    s_r = g / a.blocks_per_row;
    s_b = g % a.blocks_per_row;
  }
  __syncthreads();
  const int r = s_r, b = s_b;
  const topk_row w = topk_row_of(a, r);
  const int t_begin = b * topk_items;
  if (t_begin >= w.n) return;  // no later slice of this row waits on this one
  const float* sc = a.scores + row_base(a.cache, w.s, w.h);
  const topk_state st = w.whole || w.k <= 0 ? topk_state{0xffffffffu, 0} : a.state[r];
  // Blocked arrangement: thread i owns positions t_begin + i * per_thread + j, in order.
  bool sure[topk_per_thread], equal[topk_per_thread];
  int n_sure = 0, n_equal = 0;
  for (int j = 0; j < topk_per_thread; ++j) {
    const int t = t_begin + static_cast<int>(threadIdx.x) * topk_per_thread + j;
    const bool in = t < w.n;
    const bool prot = in && (w.whole || t < w.lo || t >= w.hi);
    const std::uint32_t key = in && !prot ? detail::order_key(sc[t]) : 0u;
    sure[j] = prot || (in && !prot && key > st.prefix);
    equal[j] = in && !prot && key == st.prefix;
    n_sure += sure[j];
    n_equal += equal[j];
  }
  int sure_excl, sure_total, equal_excl, equal_total;
  scan(tmp).ExclusiveSum(n_sure, sure_excl, sure_total);
  __syncthreads();
  scan(tmp).ExclusiveSum(n_equal, equal_excl, equal_total);
  unsigned long long* lb = a.lookback + static_cast<std::size_t>(r) * a.blocks_per_row;
  if (threadIdx.x == 0) {
    int sure_before = 0, equal_before = 0;
    if (b > 0) {
      atomicExch(&lb[b], detail::lookback_pack(detail::lookback_aggregate, sure_total, equal_total));
      for (int j = b - 1; j >= 0; --j) {
        unsigned long long v;
        while (detail::lookback_flag(v = *reinterpret_cast<volatile unsigned long long*>(&lb[j])) == 0)
          __nanosleep(32);
        sure_before += detail::lookback_above(v);
        equal_before += detail::lookback_equal(v);
        if (detail::lookback_flag(v) == detail::lookback_inclusive) break;
      }
    }
    atomicExch(&lb[b], detail::lookback_pack(detail::lookback_inclusive, sure_before + sure_total,
                                             equal_before + equal_total));
    s_sure = sure_before;
    s_equal = equal_before;
  }
  __syncthreads();
  int kept[topk_per_thread], n_kept = 0;
  int eq_rank = s_equal + equal_excl;
  for (int j = 0; j < topk_per_thread; ++j) {
    kept[j] = sure[j] || (equal[j] && eq_rank < st.krem);
    eq_rank += equal[j];
    n_kept += kept[j];
  }
  int kept_excl, kept_total;
  __syncthreads();
  scan(tmp).ExclusiveSum(n_kept, kept_excl, kept_total);
  std::int32_t* row = a.out.row(r);
  int at = detail::topk_block_offset(s_sure, s_equal, st.krem) + kept_excl;
  for (int j = 0; j < topk_per_thread; ++j)
    if (kept[j]) row[at++] = t_begin + static_cast<int>(threadIdx.x) * topk_per_thread + j;
  if (b == 0 && threadIdx.x == 0) a.out.counts[r] = w.count;
}

//! Enqueues the top-k of every row on scratch the call's memset zeroed: two histogram passes and
//! the write. With a pooling `source`, pass 1 pools `source.raw` into `source.pooled` (= `scores`).
template <class Cache, class Pool = no_pool>
status enqueue_top_k(cudaStream_t st, const Cache& c, const seq_rules& rules, const float* scores, keep_plan out,
                     void* zeroed, void* plain, int* word, topk_source<Pool> source = {}) {
  const topk_layout l = topk_layout::of(c);
  void* p[3];
  p[0] = zeroed;
  detail::workspace_layout<2>{{l.cand, l.state}}.carve(plain, p + 1);
  topk_args<Cache, Pool> a{};
  a.cache = c;
  a.rules = rules;
  a.source = source;
  a.scores = scores;
  a.out = out;
  const std::size_t rows = static_cast<std::size_t>(l.rows);
  a.lookback = static_cast<unsigned long long*>(p[0]);
  a.hist = reinterpret_cast<unsigned*>(a.lookback + rows * l.blocks_per_row);
  a.counters = reinterpret_cast<int*>(a.hist + rows * 2 * topk_bins);
  a.ticket = a.counters + rows * 3;
  a.cand = static_cast<std::int32_t*>(p[1]);
  a.state = static_cast<topk_state*>(p[2]);
  a.cand_stride = l.cand_stride;
  a.blocks_per_row = l.blocks_per_row;
  a.word = word;
  const dim3 grid(static_cast<unsigned>(l.blocks_per_row), static_cast<unsigned>(l.rows));
  topk_hist_kernel<0><<<grid, topk_threads, 0, st>>>(a);
  KVEVICT_TRY(check_launch(Pool::enabled ? "pooling and selection pass 1: kernel launch"
                                         : "selection pass 1: kernel launch"));
  topk_hist_kernel<1><<<grid, topk_threads, 0, st>>>(a);
  KVEVICT_TRY(check_launch("selection pass 2: kernel launch"));
  topk_write_kernel<<<grid, topk_threads, 0, st>>>(a);
  return check_launch("selection write: kernel launch");
}

}  // namespace kvevict::cuda_backend

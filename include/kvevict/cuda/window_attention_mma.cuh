//! \file cuda/window_attention_mma.cuh
//! Window-attention scoring on tensor cores (bf16 / fp16 keys, head_dim a multiple of 8, at most
//! 256): the agent behind `window_attention` on the CUDA backend when the shape allows, with the
//! CUDA-core kernels of window_attention.cuh as the fallback. Not API.
//!
//! Two passes over the keys, as on the host, never the attention matrix:
//!  * pass 1, grid (key slice, KV head, sequence): the block stages its window queries once
//!    (cp.async, 16-byte), keeps each warp's query fragments in registers for the whole slice,
//!    streams key tiles of 64 through a double-buffered cp.async pipeline (page ids looked up while
//!    the previous tile computes), computes `S^T = K Q^T` with `mma.sync.m16n8k16` and keeps a
//!    (max, sum) per query in registers; the lanes sharing a query merge by butterfly, the block
//!    writes one pair per query and slice, and the last block of a (sequence, KV head) merges the
//!    slices in order into (max, 1 / (window x sum));
//!  * pass 2, same grid: the same tiles, the normalised probabilities summed per key over each
//!    n-tile by shuffles, one partial per (n-tile, key) in shared memory, and one thread per key
//!    adding each query head's partials in order and reducing over the GQA group.
//! The arithmetic (fragment coordinates, statistics, reduction order) is detail/wa_mma_core.hpp,
//! which the host tests run; this file moves data.
//!
//! Roofline (H100 SXM, one layer, 131,072 tokens, 8 KV heads, 32 query heads, d = 128, window 64):
//! each pass reads K once (256 MiB, 91 us at 2.95 TB/s) and does 68.7 GFLOP of mma (about 0.1 ms
//! at the ~660 TFLOP/s mma.sync reaches) and 268 M exponentials (72 us at 16 per clock per SM);
//! these overlap, so about 0.1 ms per pass, 0.2 ms for both (docs/performance.md's floor).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../detail/wa_mma_core.hpp"
#include "../numeric.hpp"
#include "device_info.cuh"
#include "ptx.cuh"
#include "geometry.cuh"
#include "rules.cuh"

namespace kvevict::cuda_backend {

// ---- configuration ----

//! Compile-time shape of the tensor-core scorer: head dims up to `D` (a multiple of 16), `Warps`
//! warps owning `NTiles` n-tiles (8 window queries each) apiece, so up to Warps x NTiles x 8 query
//! rows (GQA group x padded window) per (sequence, KV head), and 64-key tiles.
template <int D, int NTiles, int Warps>
struct wa_mma_config {
  static constexpr int head_dim_cap = D, ksteps = D / 16, ntiles = NTiles, warps = Warps, threads = Warps * 32;
  static constexpr int rows_cap = Warps * NTiles * 8;
  //! Blocks per SM the launch bounds ask for: at most 128 registers a thread (ptxas otherwise
  //! takes more for pass 2 at 8 warps and halves the resident blocks).
  static constexpr int min_blocks = Warps <= 8 ? 2 : 1;
  static constexpr int key_tile = 64, mtiles = key_tile / 16;
  static constexpr int dp = D + 8;  // shared row stride in elements: ldmatrix rows land on distinct banks
  static constexpr std::size_t q_bytes = static_cast<std::size_t>(rows_cap) * dp * 2;
  static constexpr std::size_t k_bytes = static_cast<std::size_t>(2) * key_tile * dp * 2;
  static constexpr std::size_t part_bytes = static_cast<std::size_t>(rows_cap / 8) * key_tile * sizeof(float);
  static constexpr std::size_t smem_bytes = q_bytes > k_bytes + part_bytes ? q_bytes : k_bytes + part_bytes;
};

template <class Cache, class T>
struct wa_mma_args {
  Cache cache;
  const T* queries;  // [num_seqs, num_q_heads, query_rows, head_dim]
  int num_q_heads, query_rows, group, slice;
  float scale_log2;  //!< log2(e) / sqrt(head_dim)
  seq_rules rules;
  float2* part;      // [slice entries, rows_cap] (max, sum) per query and slice
  float2* stat;      // [num_seqs * kv_heads, rows_cap] (max, 1 / (window x sum))
  int* done;         // [num_seqs * kv_heads] slices finished, zeroed before pass 1
  float* out;        // per-token scores, slab layout
  int* word;
};

// ---- the block's shared steps ----

//! Stages the block's window queries (head-aligned rows, zeros in padding) in shared memory.
template <class Cfg, class Cache, class T>
__device__ void wa_stage_queries(const wa_mma_args<Cache, T>& a, int s, int h, const detail::wa_rows& rows, T* qs) {
  const int d = a.cache.head_dim(), parts = Cfg::head_dim_cap / 8;
  const int qrows = a.query_rows > 0 ? a.query_rows : rows.window;
  for (int i = threadIdx.x; i < Cfg::rows_cap * parts; i += Cfg::threads) {
    const int r = i / parts, p = i % parts;
    const bool live = rows.valid(r) && p * 8 < d;
    const T* src = a.queries;
    if (live)
      src = a.queries +
            ((static_cast<std::size_t>(s) * a.num_q_heads + static_cast<std::size_t>(h) * a.group + rows.head_of(r)) *
                 qrows +
             (qrows - rows.window) + rows.index_of(r)) *
                d +
            p * 8;
    cp_async16(qs + static_cast<std::size_t>(r) * Cfg::dp + p * 8, src, live ? 16 : 0);
  }
  cp_async_commit();
}

//! This warp's query fragments (B operands) for every k-step, from the staged queries.
template <class Cfg, class T>
__device__ void wa_load_b(const T* qs, std::uint32_t (&b)[Cfg::ntiles][Cfg::ksteps][2]) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int nt = 0; nt < Cfg::ntiles; ++nt) {
    const T* row = qs + static_cast<std::size_t>((warp * Cfg::ntiles + nt) * 8 + detail::mma_b_n(lane)) * Cfg::dp;
#pragma unroll
    for (int ks = 0; ks < Cfg::ksteps; ++ks) {
      b[nt][ks][0] = *reinterpret_cast<const std::uint32_t*>(row + ks * 16 + detail::mma_b_k(lane, 0));
      b[nt][ks][1] = *reinterpret_cast<const std::uint32_t*>(row + ks * 16 + detail::mma_b_k(lane, 1));
    }
  }
}

//! Issues the loads of keys [t0, t0 + 64) (those below `t_end`) of (s, h) into `ks`.
template <class Cfg, class Cache, class T>
__device__ void wa_issue_keys(const Cache& c, int s, int h, int t0, int t_end, T* ks) {
  const int d = c.head_dim(), ps = c.page_size(), parts = Cfg::head_dim_cap / 8;
  for (int i = threadIdx.x; i < Cfg::key_tile * parts; i += Cfg::threads) {
    const int r = i / parts, p = i % parts, t = t0 + r;
    const bool live = t < t_end && p * 8 < d;
    const T* src = live ? c.key(c.page(s, h, t / ps), t % ps, h) + p * 8 : c.k;
    cp_async16(ks + static_cast<std::size_t>(r) * Cfg::dp + p * 8, src, live ? 16 : 0);
  }
}

//! Logits of m-tile `mt` of the staged key tile against this warp's n-tiles (unscaled).
template <class Cfg, class T>
__device__ void wa_mma_tile(const T* ks, int mt, const std::uint32_t (&b)[Cfg::ntiles][Cfg::ksteps][2],
                            float (&acc)[Cfg::ntiles][4]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int nt = 0; nt < Cfg::ntiles; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
  const T* base =
      ks + static_cast<std::size_t>(mt * 16 + detail::ldmatrix_a_row(lane)) * Cfg::dp + detail::ldmatrix_a_col(lane);
#pragma unroll
  for (int k = 0; k < Cfg::ksteps; ++k) {
    std::uint32_t af[4];
    ldmatrix_x4(af, base + k * 16);
#pragma unroll
    for (int nt = 0; nt < Cfg::ntiles; ++nt) mma_op<T>::run(acc[nt], af, b[nt][k]);
  }
}

//! Streams the block's keys through the double-buffered pipeline: `f(ks, t0)` runs on each staged
//! 64-key tile; a barrier follows it, so `f` may end with shared-memory work of its own.
template <class Cfg, class Cache, class T, class F>
__device__ void wa_for_each_key_tile(const Cache& c, int s, int h, int t_begin, int t_end, T* kbuf, F&& f) {
  wa_issue_keys<Cfg>(c, s, h, t_begin, t_end, kbuf);
  cp_async_commit();
  int stage = 0;
  for (int t0 = t_begin; t0 < t_end; t0 += Cfg::key_tile, stage ^= 1) {
    if (t0 + Cfg::key_tile < t_end)
      wa_issue_keys<Cfg>(c, s, h, t0 + Cfg::key_tile, t_end,
                         kbuf + static_cast<std::size_t>(stage ^ 1) * Cfg::key_tile * Cfg::dp);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    f(static_cast<const T*>(kbuf + static_cast<std::size_t>(stage) * Cfg::key_tile * Cfg::dp), t0);
    __syncthreads();  // the stage is refilled next iteration
  }
}

//! What a block of either pass shares: the (sequence, head, slice) it owns and the row layout.
struct wa_block {
  int s, h, n, t_begin, t_end, nslices;
  detail::wa_rows rows;
  bool live;
};
template <class Cache, class T>
__device__ wa_block wa_block_of(const wa_mma_args<Cache, T>& a) {
  wa_block b{};
  b.s = blockIdx.z;
  b.h = blockIdx.y;
  b.live = false;
  if (block_failed(a.word)) return b;
  const row_rule si = a.rules.info(a.cache, b.s);
  b.n = a.cache.seq_len(b.s, b.h);
  b.t_begin = static_cast<int>(blockIdx.x) * a.slice;
  if (si.kept_whole() || si.window < 1 || b.t_begin >= b.n) return b;
  b.t_end = b.n < b.t_begin + a.slice ? b.n : b.t_begin + a.slice;
  b.nslices = (b.n + a.slice - 1) / a.slice;
  b.rows = detail::wa_rows::make(si.window, a.group);
  b.live = true;
  return b;
}

//! Whether this lane's logits count: in an m-tile of keys below `all`, a bit of `real` (bit
//! 2 nt + j: the query of accumulator elements j and j + 2 of n-tile nt is not padding); in the
//! m-tiles past it (the window's own keys), `wa_rows::last_key`. `for_tile` hands `f` the test for
//! the m-tile at `tm`, so the loop over its logits is compiled once per case and the common case
//! has no division in it.
template <class Cfg>
struct wa_seen {
  unsigned real = 0;
  int all = 0;
  //! The query row of this lane's accumulator element `i` in n-tile `nt`.
  __device__ static int row(int nt, int i) {
    return (static_cast<int>(threadIdx.x / 32) * Cfg::ntiles + nt) * 8 + detail::mma_c_col(threadIdx.x % 32, i);
  }
  __device__ explicit wa_seen(const wa_block& blk) {
#pragma unroll
    for (int nt = 0; nt < Cfg::ntiles; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) real |= static_cast<unsigned>(blk.rows.valid(row(nt, j))) << (2 * nt + j);
    all = blk.rows.seen_by_all(blk.n, blk.t_end);
  }
  template <class F>
  __device__ void for_tile(const wa_block& blk, int tm, F&& f) const {
    if (tm + 16 <= all) {
      f([&](int nt, int i) { return ((real >> (2 * nt + i % 2)) & 1u) != 0; });
    } else {
      f([&](int nt, int i) {
        return tm + detail::mma_c_row(threadIdx.x % 32, i) <= blk.rows.last_key(row(nt, i), blk.n, blk.t_end);
      });
    }
  }
};

// ---- pass 1 ----

template <class Cfg, class Cache, class T>
__global__ void __launch_bounds__(Cfg::threads, Cfg::min_blocks) wa_mma_pass1_kernel(wa_mma_args<Cache, T> a) {
  extern __shared__ __align__(128) unsigned char wa_mma_smem[];
  __shared__ int s_last;
  const wa_block blk = wa_block_of(a);
  if (!blk.live) return;
  const Cache& c = a.cache;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T* qs = reinterpret_cast<T*>(wa_mma_smem);
  wa_stage_queries<Cfg>(a, blk.s, blk.h, blk.rows, qs);
  cp_async_wait<0>();
  __syncthreads();
  std::uint32_t b[Cfg::ntiles][Cfg::ksteps][2];
  wa_load_b<Cfg>(qs, b);
  __syncthreads();  // the query staging area becomes the key pipeline

  detail::log2_stats st[Cfg::ntiles][2];
  const wa_seen<Cfg> seen(blk);
  wa_for_each_key_tile<Cfg>(c, blk.s, blk.h, blk.t_begin, blk.t_end, reinterpret_cast<T*>(wa_mma_smem),
                            [&](const T* ks, int t0) {
    for (int mt = 0; mt < Cfg::mtiles && t0 + mt * 16 < blk.t_end; ++mt) {
      float acc[Cfg::ntiles][4];
      wa_mma_tile<Cfg>(ks, mt, b, acc);
      seen.for_tile(blk, t0 + mt * 16, [&](auto sees) {
#pragma unroll
        for (int nt = 0; nt < Cfg::ntiles; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i)
            if (sees(nt, i)) st[nt][i % 2].add(acc[nt][i] * a.scale_log2);
      });
    }
  });

  // Lanes sharing a query (same lane % 4) merge: xor 4, 8, 16.
  const std::size_t sh = static_cast<std::size_t>(blk.s) * c.num_kv_heads() + blk.h;
  const std::size_t entry = chunk_base(c, blk.s, blk.h, a.slice) + blockIdx.x;
#pragma unroll
  for (int nt = 0; nt < Cfg::ntiles; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int off = 4; off < 32; off *= 2) {
        detail::log2_stats o;
        o.m = __shfl_xor_sync(0xffffffffu, st[nt][j].m, off);
        o.l = __shfl_xor_sync(0xffffffffu, st[nt][j].l, off);
        st[nt][j].merge(o);
      }
      if (lane < 4) {
        const int row = (warp * Cfg::ntiles + nt) * 8 + lane * 2 + j;
        a.part[entry * Cfg::rows_cap + row] = make_float2(st[nt][j].m, st[nt][j].l);
      }
    }

  // The last block of this (sequence, KV head) merges the slices in slice order.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(&a.done[sh], 1) == blk.nslices - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const std::size_t first = chunk_base(c, blk.s, blk.h, a.slice);
  for (int row = threadIdx.x; row < Cfg::rows_cap; row += Cfg::threads) {
    detail::log2_stats m;
    for (int k = 0; k < blk.nslices; ++k) {
      const float2 p = __ldcg(a.part + (first + k) * Cfg::rows_cap + row);  // other blocks' writes: skip L1
      detail::log2_stats o;
      o.m = p.x;
      o.l = p.y;
      m.merge(o);
    }
    const bool ok = blk.rows.valid(row) && m.l > 0.0f;
    a.stat[sh * Cfg::rows_cap + row] =
        make_float2(ok ? m.m : 0.0f, ok ? 1.0f / (m.l * static_cast<float>(blk.rows.window)) : 0.0f);
  }
}

// ---- pass 2 ----

template <class Cfg, class Reduce, class Cache, class T>
__global__ void __launch_bounds__(Cfg::threads, Cfg::min_blocks) wa_mma_pass2_kernel(wa_mma_args<Cache, T> a) {
  extern __shared__ __align__(128) unsigned char wa_mma_smem[];
  const wa_block blk = wa_block_of(a);
  if (!blk.live) return;
  const Cache& c = a.cache;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  T* qs = reinterpret_cast<T*>(wa_mma_smem);
  wa_stage_queries<Cfg>(a, blk.s, blk.h, blk.rows, qs);
  cp_async_wait<0>();
  __syncthreads();
  std::uint32_t b[Cfg::ntiles][Cfg::ksteps][2];
  wa_load_b<Cfg>(qs, b);
  const std::size_t sh = static_cast<std::size_t>(blk.s) * c.num_kv_heads() + blk.h;
  float2 stat[Cfg::ntiles][2];  // (max, 1 / (window x sum)) of the two queries this lane owns per n-tile
#pragma unroll
  for (int nt = 0; nt < Cfg::ntiles; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      stat[nt][j] = a.stat[sh * Cfg::rows_cap + (warp * Cfg::ntiles + nt) * 8 + (lane % 4) * 2 + j];
  __syncthreads();

  const wa_seen<Cfg> seen(blk);
  float* part = reinterpret_cast<float*>(wa_mma_smem + Cfg::k_bytes);  // [rows_cap / 8][key_tile]
  const std::size_t base = row_base(c, blk.s, blk.h);
  wa_for_each_key_tile<Cfg>(c, blk.s, blk.h, blk.t_begin, blk.t_end, reinterpret_cast<T*>(wa_mma_smem),
                            [&](const T* ks, int t0) {
    for (int mt = 0; mt < Cfg::mtiles && t0 + mt * 16 < blk.t_end; ++mt) {
      float acc[Cfg::ntiles][4];
      wa_mma_tile<Cfg>(ks, mt, b, acc);
      float sum[Cfg::ntiles][2];  // per n-tile, keys g and g + 8 over this lane's two queries
      seen.for_tile(blk, t0 + mt * 16, [&](auto sees) {
#pragma unroll
        for (int nt = 0; nt < Cfg::ntiles; ++nt) {
          sum[nt][0] = sum[nt][1] = 0.0f;
#pragma unroll
          for (int i = 0; i < 4; ++i)
            if (sees(nt, i))
              sum[nt][i / 2] +=
                  detail::exp2_nonpositive(acc[nt][i] * a.scale_log2 - stat[nt][i % 2].x) * stat[nt][i % 2].y;
        }
      });
#pragma unroll
      for (int nt = 0; nt < Cfg::ntiles; ++nt) {
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          sum[nt][k] += __shfl_xor_sync(0xffffffffu, sum[nt][k], 1);
          sum[nt][k] += __shfl_xor_sync(0xffffffffu, sum[nt][k], 2);
        }
        if (lane % 4 == 0) {
          float* p = part + (warp * Cfg::ntiles + nt) * Cfg::key_tile + mt * 16 + lane / 4;
          p[0] = sum[nt][0];
          p[8] = sum[nt][1];
        }
      }
    }
    __syncthreads();
    for (int k = threadIdx.x; k < Cfg::key_tile; k += Cfg::threads)
      if (t0 + k < blk.t_end) a.out[base + t0 + k] = detail::wa_key_score<Reduce>(part + k, Cfg::key_tile, blk.rows);
  });  // its barrier guards `part` too
}

// ---- dispatch ----

//! Whether the tensor-core scorer serves this shape: 16-bit keys, head_dim a multiple of 8 and at
//! most 256, 16-byte aligned K and queries, and the group's padded window rows within a block.
template <class Cache, class T>
bool wa_mma_eligible(const Cache& c, const signals<T>& sig, int window) {
  if constexpr (!(std::is_same_v<T, bfloat16> || std::is_same_v<T, half>) ||
                !std::is_same_v<typename Cache::value_type, T>) {  // keys stored as the queries' type only
    return false;
  } else {
    const int d = c.head_dim();
    if (d % 8 != 0 || d > 256) return false;
    if (reinterpret_cast<std::uintptr_t>(c.k) % 16 != 0 || reinterpret_cast<std::uintptr_t>(sig.queries) % 16 != 0)
      return false;
    const int rows = detail::wa_rows::make(window, sig.num_q_heads / c.num_kv_heads()).rows();
    return d <= 128 ? rows <= 512 : rows <= 256;
  }
}

//! Calls `f(config{})` with the configuration that serves head_dim `d` and `rows` query rows.
template <class F>
void wa_mma_with_config(int d, int rows, F&& f) {
  if (d <= 64) {
    if (rows <= 256)
      f(wa_mma_config<64, 4, 8>{});
    else
      f(wa_mma_config<64, 4, 16>{});
  } else if (d <= 128) {
    if (rows <= 256)
      f(wa_mma_config<128, 4, 8>{});
    else
      f(wa_mma_config<128, 4, 16>{});
  } else {
    f(wa_mma_config<256, 2, 16>{});
  }
}

//! Keys per block: about 512 blocks over the table's capacity (two waves of two blocks on 132
//! SMs), in whole 64-key tiles, between 256 and 8192 keys.
template <class Cache>
int wa_mma_slice(const Cache& c) {
  const std::size_t keys = static_cast<std::size_t>(max_row_cap(c)) * c.num_kv_heads() * c.num_seqs();
  std::size_t slice = (keys / 512 + 63) / 64 * 64;
  slice = slice < 256 ? 256 : (slice > 8192 ? 8192 : slice);
  return static_cast<int>(slice);
}

//! Scratch of the tensor-core scorer: slice statistics, per-row statistics, slice counters.
struct wa_mma_layout {
  std::size_t part, stat, done;
  template <class Cache>
  static wa_mma_layout of(const Cache& c) {
    const std::size_t rows = 512, sh = static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads();
    return {sizeof(float2) * chunk_entries(c, wa_mma_slice(c)) * rows, sizeof(float2) * sh * rows, sizeof(int) * sh};
  }
};

}  // namespace kvevict::cuda_backend

//! \file cuda/window_attention.cuh
//! Window-attention scoring on the device: the host backend's two passes, parallel over chunks of
//! keys, with the query-key products on tensor cores (bf16 / fp16 keys, head_dim a multiple of 16)
//! or on CUDA cores (float keys, other head dims). Never forms the attention matrix: scratch is a
//! (row max, row sum) pair per window query and key chunk, and one float per token. Not API.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../detail/math.hpp"
#include "../numeric.hpp"
#include "../scorer/pooling.hpp"
#include "geometry.cuh"
#include "rules.cuh"

namespace kvevict::cuda_backend {

inline constexpr int wa_key_tile = 128;   //!< keys per shared-memory tile
inline constexpr int wa_row_tile = 64;    //!< window-query rows per logits tile
inline constexpr int wa_chunk = 512;      //!< keys per block (one (row max, row sum) pair per chunk)
inline constexpr int wa_threads = 256;    //!< 8 warps
inline constexpr int wa_s_ld = wa_key_tile + 4;

template <class T>
struct mma_element {
  using type = void;
};
template <>
struct mma_element<bfloat16> {
  using type = __nv_bfloat16;
};
template <>
struct mma_element<half> {
  using type = __half;
};

//! Shared-memory layout of the scoring kernels (byte offsets, 128-aligned).
struct wa_smem {
  int dpad, rows_pad, group;
  std::size_t q, k, s, m, l, col, ksc, total;

  __host__ __device__ static std::size_t up(std::size_t b) { return (b + 127) / 128 * 128; }
  __host__ __device__ static wa_smem make(int head_dim, int group, int max_window, int elem_bytes, bool vec) {
    wa_smem p{};
    p.dpad = vec ? head_dim + 16 / elem_bytes : head_dim + 1;
    p.group = group;
    const int rows = group * max_window;
    p.rows_pad = (rows + wa_row_tile - 1) / wa_row_tile * wa_row_tile;
    std::size_t o = 0;
    p.q = o;
    o += up(static_cast<std::size_t>(p.rows_pad) * p.dpad * elem_bytes);
    p.k = o;
    o += up(static_cast<std::size_t>(wa_key_tile) * p.dpad * elem_bytes);
    p.s = o;
    o += up(sizeof(float) * wa_row_tile * wa_s_ld);
    p.m = o;
    o += up(sizeof(float) * p.rows_pad);
    p.l = o;
    o += up(sizeof(float) * p.rows_pad);
    p.col = o;
    o += up(sizeof(float) * 2 * group * wa_key_tile);
    p.ksc = o;
    o += up(sizeof(float) * wa_key_tile);
    p.total = o;
    return p;
  }
};

template <class Cache, class T>
struct wa_args {
  Cache cache;
  const T* queries;
  int num_q_heads, query_rows, group;
  float scale;
  seq_rules rules;
  wa_smem sm;
  float* part_m;    // [chunk entries, rows_pad]
  float* part_l;    // [chunk entries, rows_pad]
  float* stat_m;    // [seqs * kv_heads, rows_pad]
  float* stat_inv;  // [seqs * kv_heads, rows_pad]
  float* out;       // per-token scores, slab layout
  int* word;
};

//! exp(x) for the softmax terms of the scores: the hardware's ex2 (about 2 ulp), the exponent pass's
//! hot spot. The row statistics and their merge keep the exact `exp_nonpositive`. NaN stays NaN.
__device__ __forceinline__ float fast_exp(float x) { return __expf(x); }

//! A stored key element as the queries' type `T`: itself, or a quantised code decoded (exactly: every
//! e4m3, e5m2 and int8 value is a bf16, an fp16 and a float; the view's k_scale is applied to the
//! logits, as the host folds it into the queries' scale).
template <class T, class E>
__device__ __forceinline__ T key_as(E e) {
  if constexpr (std::is_same_v<T, E>)
    return e;
  else
    return from_float<T>(to_float(e));
}

//! Copies keys [t0, t0 + tile) of (s, h) into shared rows of `dpad` elements (zeros past `n`), and
//! each key's token scale into `ksc` (1 without: a logit times 1 is the same logit).
template <bool Vec, class Cache, class T>
__device__ void load_key_tile(const Cache& c, int s, int h, int t0, int n, T* ks, int dpad, float* ksc) {
  using E = typename Cache::value_type;
  const int d = c.head_dim(), ps = c.page_size();
  const bool scaled = detail::holds_token_scales(c, true);
  for (int r = threadIdx.x; r < wa_key_tile; r += blockDim.x) {
    const int t = t0 + r;
    ksc[r] = scaled && t < n ? detail::key_token_scale_of(c, c.page(s, h, t / ps), t % ps, h) : 1.0f;
  }
  if constexpr (Vec && !std::is_same_v<E, T>) {  // 16 one-byte codes per load, decoded into T
    static_assert(sizeof(E) == 1, "kvevict: quantised key elements are one byte");
    const int per_row = d / 16;
    for (int i = threadIdx.x; i < wa_key_tile * per_row; i += blockDim.x) {
      const int r = i / per_row, v = i % per_row, t = t0 + r;
      uint4 x = make_uint4(0, 0, 0, 0);
      if (t < n) x = reinterpret_cast<const uint4*>(c.key(c.page(s, h, t / ps), t % ps, h))[v];
      const unsigned char* b = reinterpret_cast<const unsigned char*>(&x);
      T* dst = ks + static_cast<std::size_t>(r) * dpad + v * 16;
#pragma unroll
      for (int e = 0; e < 16; ++e) dst[e] = key_as<T>(detail::bit_copy<E>(b[e]));
    }
  } else if constexpr (Vec) {
    const int per_row = d * static_cast<int>(sizeof(T)) / 16;
    for (int i = threadIdx.x; i < wa_key_tile * per_row; i += blockDim.x) {
      const int r = i / per_row, v = i % per_row, t = t0 + r;
      uint4 x = make_uint4(0, 0, 0, 0);
      if (t < n) x = reinterpret_cast<const uint4*>(c.key(c.page(s, h, t / ps), t % ps, h))[v];
      reinterpret_cast<uint4*>(ks + static_cast<std::size_t>(r) * dpad)[v] = x;
    }
  } else {
    for (int i = threadIdx.x; i < wa_key_tile * d; i += blockDim.x) {
      const int r = i / d, x = i % d, t = t0 + r;
      T val{};
      if (t < n) val = key_as<T>(c.key(c.page(s, h, t / ps), t % ps, h)[x]);
      ks[static_cast<std::size_t>(r) * dpad + x] = val;
    }
  }
}

//! logits[i][c] = q_row(i) . k(c) for the 64 rows from `qs` and the 128 keys in `ks` (unscaled).
template <bool Mma, class T>
__device__ void logits_tile(const T* qs, const T* ks, int dpad, int d, float* st) {
  if constexpr (Mma) {
    using E = typename mma_element<T>::type;
    namespace w = nvcuda::wmma;
    const int warp = threadIdx.x / 32, rb = warp & 3, cb = warp >> 2;
    w::fragment<w::accumulator, 16, 16, 16, float> acc[4];
#pragma unroll
    for (int f = 0; f < 4; ++f) w::fill_fragment(acc[f], 0.0f);
    const E* qe = reinterpret_cast<const E*>(qs) + static_cast<std::size_t>(rb) * 16 * dpad;
    const E* ke = reinterpret_cast<const E*>(ks) + static_cast<std::size_t>(cb) * 64 * dpad;
    for (int k0 = 0; k0 < d; k0 += 16) {
      w::fragment<w::matrix_a, 16, 16, 16, E, w::row_major> a;
      w::load_matrix_sync(a, qe + k0, dpad);
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        w::fragment<w::matrix_b, 16, 16, 16, E, w::col_major> b;
        w::load_matrix_sync(b, ke + static_cast<std::size_t>(f) * 16 * dpad + k0, dpad);
        w::mma_sync(acc[f], a, b, acc[f]);
      }
    }
#pragma unroll
    for (int f = 0; f < 4; ++f)
      w::store_matrix_sync(st + rb * 16 * wa_s_ld + cb * 64 + f * 16, acc[f], wa_s_ld, w::mem_row_major);
  } else {
    // Thread (c, half): column c, rows half*32 .. +32; head_dim in order, like the host.
    const int c = threadIdx.x % wa_key_tile, i0 = threadIdx.x / wa_key_tile * 32;
    const T* kr = ks + static_cast<std::size_t>(c) * dpad;
    for (int i = i0; i < i0 + 32; ++i) {
      const T* qr = qs + static_cast<std::size_t>(i) * dpad;
      float acc = 0.0f;
      for (int x = 0; x < d; ++x) acc += to_float(qr[x]) * to_float(kr[x]);
      st[i * wa_s_ld + c] = acc;
    }
  }
}

//! Pass 1 (`Pass == 1`): per window query, the max and the sum of exponentials over this block's
//! keys. Pass 2: normalised probabilities averaged over the window, reduced over the GQA group.
//! Grid: (key chunks, kv heads, sequences); 256 threads.
template <int Pass, class Reduce, bool Vec, bool Mma, class Cache, class T>
__global__ void __launch_bounds__(wa_threads) window_attention_kernel(wa_args<Cache, T> a) {
  extern __shared__ __align__(128) unsigned char wa_smem_raw[];
  unsigned char* smem = wa_smem_raw;
  const int s = blockIdx.z, h = blockIdx.y, chunk = blockIdx.x;
  if (block_failed(a.word)) return;
  const Cache& c = a.cache;
  const row_rule si = a.rules.info(c, s);
  const int n = c.seq_len(s, h), t_begin = chunk * wa_chunk;
  if (si.kept_whole() || t_begin >= n) return;
  const int t_end = n < t_begin + wa_chunk ? n : t_begin + wa_chunk;
  const int w = si.window, group = a.group, rows = group * w, d = c.head_dim(), dpad = a.sm.dpad;
  const int qrows = a.query_rows > 0 ? a.query_rows : w;
  T* qs = reinterpret_cast<T*>(smem + a.sm.q);
  T* ks = reinterpret_cast<T*>(smem + a.sm.k);
  float* st = reinterpret_cast<float*>(smem + a.sm.s);
  float* rm = reinterpret_cast<float*>(smem + a.sm.m);
  float* rl = reinterpret_cast<float*>(smem + a.sm.l);  // pass 1: running sum; pass 2: 1 / (window * sum)
  float* col = reinterpret_cast<float*>(smem + a.sm.col);
  float* ksc = reinterpret_cast<float*>(smem + a.sm.ksc);  // the tile's token scales (1 without)
  const std::size_t stat_row = (static_cast<std::size_t>(s) * c.num_kv_heads() + h) * a.sm.rows_pad;

  // The group's window queries, row r = j * w + i (query head j, window query i); zero rows pad.
  for (std::size_t i = threadIdx.x; i < static_cast<std::size_t>(a.sm.rows_pad) * d; i += blockDim.x) {
    const int r = static_cast<int>(i / d), x = static_cast<int>(i % d);
    T val{};
    if (r < rows) {
      const int j = r / w, wi = r % w;
      val = a.queries[((static_cast<std::size_t>(s) * a.num_q_heads + static_cast<std::size_t>(h) * group + j) * qrows +
                       (qrows - w) + wi) *
                          d +
                      x];
    }
    qs[static_cast<std::size_t>(r) * dpad + x] = val;
  }
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    if (Pass == 1) {
      rm[r] = -FLT_MAX;
      rl[r] = 0.0f;
    } else {
      rm[r] = a.stat_m[stat_row + r];
      rl[r] = a.stat_inv[stat_row + r];
    }
  }
  __syncthreads();

  const std::size_t base = row_base(c, s, h);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int t0 = t_begin; t0 < t_end; t0 += wa_key_tile) {
    load_key_tile<Vec>(c, s, h, t0, n, ks, dpad, ksc);
    if (Pass == 2)
      for (int i = threadIdx.x; i < 2 * group * wa_key_tile; i += blockDim.x) col[i] = 0.0f;
    __syncthreads();
    for (int rt = 0; rt < rows; rt += wa_row_tile) {
      logits_tile<Mma>(qs + static_cast<std::size_t>(rt) * dpad, ks, dpad, d, st);
      __syncthreads();
      if (Pass == 1) {
        // Warp `warp` updates rows rt + warp*8 .. +8; lane covers keys lane + 32 q.
        for (int i = warp * 8; i < warp * 8 + 8; ++i) {
          const int r = rt + i;
          if (r >= rows) break;
          const int last = n - w + r % w;  // keys t <= last are visible to this query
          if (t0 > last) continue;
          float x[4], tmax = -FLT_MAX;
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const int cc = lane + 32 * q;
            x[q] = t0 + cc <= last ? st[i * wa_s_ld + cc] * ksc[cc] * a.scale : -FLT_MAX;
            tmax = x[q] > tmax ? x[q] : tmax;
          }
#pragma unroll
          for (int o = 16; o > 0; o /= 2) {
            const float y = __shfl_xor_sync(0xffffffffu, tmax, o);
            tmax = y > tmax ? y : tmax;
          }
          const float m_old = rm[r], m_new = tmax > m_old ? tmax : m_old;
          float sum = 0.0f;
#pragma unroll
          for (int q = 0; q < 4; ++q)
            sum += t0 + lane + 32 * q <= last ? fast_exp(x[q] - m_new) : 0.0f;
#pragma unroll
          for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
          __syncwarp();
          if (lane == 0) {
            rl[r] = rl[r] * detail::exp_nonpositive(m_old - m_new) + sum;
            rm[r] = m_new;
          }
          __syncwarp();
        }
      } else {
        // Thread (cc, half) owns column cc of accumulator half `half`: a fixed summation order.
        const int cc = threadIdx.x % wa_key_tile, half = threadIdx.x / wa_key_tile, t = t0 + cc;
        for (int i = half * 32; i < half * 32 + 32; ++i) {
          const int r = rt + i;
          if (r >= rows) break;
          if (t > n - w + r % w) continue;
          const float p = fast_exp(st[i * wa_s_ld + cc] * ksc[cc] * a.scale - rm[r]) * rl[r];
          col[(half * group + r / w) * wa_key_tile + cc] += p;
        }
      }
      __syncthreads();
    }
    if (Pass == 2) {
      const int cc = threadIdx.x;
      if (cc < wa_key_tile && t0 + cc < t_end) {
        float vals[64];  // group <= 64, checked by the scorer's validation
        for (int j = 0; j < group; ++j) vals[j] = col[j * wa_key_tile + cc] + col[(group + j) * wa_key_tile + cc];
        a.out[base + t0 + cc] = Reduce::reduce(vals, group);
      }
      __syncthreads();
    }
  }
  if (Pass == 1) {
    const std::size_t e = (chunk_base(c, s, h, wa_chunk) + chunk) * a.sm.rows_pad;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
      a.part_m[e + r] = rm[r];
      a.part_l[e + r] = rl[r];
    }
  }
}

//! Merges the per-chunk (max, sum) pairs of every window query in chunk order (deterministic) and
//! stores the row max and `1 / (window * sum)`. Grid: (ceil(rows_pad / 256), kv heads, sequences).
template <class Cache, class T>
__global__ void window_attention_merge_kernel(wa_args<Cache, T> a) {
  const int s = blockIdx.z, h = blockIdx.y, r = blockIdx.x * blockDim.x + threadIdx.x;
  if (failed(a.word)) return;
  const Cache& c = a.cache;
  const row_rule si = a.rules.info(c, s);
  const int n = c.seq_len(s, h), rows = a.group * si.window;
  if (si.kept_whole() || r >= rows) return;
  const int chunks = (n + wa_chunk - 1) / wa_chunk;
  const std::size_t e0 = chunk_base(c, s, h, wa_chunk);
  float m = -FLT_MAX;
  for (int k = 0; k < chunks; ++k) {
    const float v = a.part_m[(e0 + k) * a.sm.rows_pad + r];
    m = v > m ? v : m;
  }
  float l = 0.0f;
  for (int k = 0; k < chunks; ++k) {
    const std::size_t e = (e0 + k) * a.sm.rows_pad + r;
    l += a.part_l[e] * detail::exp_nonpositive(a.part_m[e] - m);
  }
  const std::size_t o = (static_cast<std::size_t>(s) * c.num_kv_heads() + h) * a.sm.rows_pad + r;
  a.stat_m[o] = m;
  a.stat_inv[o] = l > 0.0f ? (1.0f / static_cast<float>(si.window)) / l : 0.0f;
}

//! Pools the scores of the keys before each window, `raw` -> `out` (the window's own keys copied).
template <class Pool, class Cache>
__global__ void pool_kernel(Cache c, seq_rules rules, int kernel, const float* raw, float* out, int* word) {
  const int s = blockIdx.z, h = blockIdx.y;
  if (failed(word)) return;
  const row_rule si = rules.info(c, s);
  if (si.kept_whole()) return;
  const int n = c.seq_len(s, h), m = n - si.window;
  const std::size_t base = row_base(c, s, h);
  for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x)
    out[base + t] = t < m ? detail::pool_at<Pool>(raw + base, m, kernel, t) : raw[base + t];
}

}  // namespace kvevict::cuda_backend

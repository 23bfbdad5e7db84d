//! \file host/window_attention.hpp
//! Host reference of window-attention scoring: two passes over the keys, O(tokens) scratch,
//! never a `[heads, window, tokens]` matrix.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include "../config.hpp"
#include "../detail/math.hpp"
#include "../numeric.hpp"

namespace kvevict {
namespace detail {

// GCC/clang vector extensions; not under nvcc, whose front end rejects vector comparisons (the
// scalar code below computes the same bits).
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define KVEVICT_VECTOR_EXT 1
#if defined(__AVX512F__)
inline constexpr int simd_floats = 16;  //!< one AVX-512 register
#elif defined(__AVX__)
inline constexpr int simd_floats = 8;  //!< one AVX register
#else
inline constexpr int simd_floats = 4;  //!< one SSE / NEON register
#endif

//! A vector of W floats (GCC/clang vector extension).
template <int W>
struct float_vec {
  typedef float type __attribute__((vector_size(W * sizeof(float))));
};
#else
inline constexpr int simd_floats = 1;
#endif

//! Query rows a micro-kernel handles at once with vectors of W floats: R x 16 / W accumulators
//! plus 16 / W key vectors stay in registers (16 of them on x86-64 with AVX2, 32 with AVX-512,
//! where 8 rows keep 8 independent accumulators in flight).
template <int W>
inline constexpr int micro_rows = W >= 16 ? 8 : W >= 8 ? 4 : 2;

//! acc[i * 16 + c] = sum_d q[i * q_stride + d] * kt[d * 16 + c] for R query rows i and a tile of
//! 16 keys stored transposed: the register tile of the window-attention scorer. Every (row, key)
//! accumulates in the order d = 0, 1, ..., one multiply then one add, whatever W and R are, so
//! the logits are bit for bit those of one row at a time (no FMA contraction: the dispatched
//! variants enable AVX2 without FMA).
template <int W, int R>
KVEVICT_ALWAYS_INLINE void dot_rows_tile16(const float* q, std::size_t q_stride, const float* kt, int head_dim,
                                           float* acc) {
  KVEVICT_FP_CONTRACT_OFF
#if defined(KVEVICT_VECTOR_EXT)
  using V = typename float_vec<W>::type;
  constexpr int NV = 16 / W;
  V a[R][NV];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) a[i][v] = V{};
  for (int d = 0; d < head_dim; ++d, kt += 16) {
    V k[NV];
    KVEVICT_UNROLL
    for (int v = 0; v < NV; ++v) std::memcpy(&k[v], kt + v * W, sizeof(V));
    KVEVICT_UNROLL
    for (int i = 0; i < R; ++i) {
      const float qd = q[static_cast<std::size_t>(i) * q_stride + d];
      KVEVICT_UNROLL
      for (int v = 0; v < NV; ++v) {
        V prod = qd * k[v];
        round_here(prod);  // no FMA: the same bits on every instruction set
        a[i][v] += prod;
      }
    }
  }
  std::memcpy(acc, a, sizeof a);
#else
  for (int i = 0; i < R; ++i) {
    float a[16] = {};
    for (int d = 0; d < head_dim; ++d)
      for (int c = 0; c < 16; ++c) a[c] += q[static_cast<std::size_t>(i) * q_stride + d] * kt[d * 16 + c];
    for (int c = 0; c < 16; ++c) acc[i * 16 + c] = a[c];
  }
#endif
}

//! For NT consecutive tiles of 16 keys, tile i's `out[c] = exp_nonpositive(acc[c] - m[i]) * s`
//! (with `Scale = false`, without the factor `s`), and 0 for the keys from `vis` on in the last
//! tile (the others are whole). W lanes at a time, all the tiles' vectors side by side; every
//! lane runs the scalar `exp_nonpositive`'s operations in the same order, so the results are
//! its bits.
template <int W, bool Scale, int NT = 1>
KVEVICT_ALWAYS_INLINE void exp_tiles(const float* acc, const float* m, float s, int vis, float* out) {
  KVEVICT_FP_CONTRACT_OFF
#if defined(KVEVICT_VECTOR_EXT)
  using V = typename float_vec<W>::type;
  typedef std::uint32_t U __attribute__((vector_size(W * sizeof(float))));
  typedef std::int32_t I __attribute__((vector_size(W * sizeof(float))));
  constexpr float magic = 12582912.0f;
  std::uint32_t mb;
  std::memcpy(&mb, &magic, sizeof mb);
  constexpr int NV = 16 / W;
  V arg[NT * NV], t[NT * NV], p[NT * NV];
  KVEVICT_UNROLL
  for (int v = 0; v < NT * NV; ++v) {
    std::memcpy(&arg[v], acc + v * W, sizeof(V));
    arg[v] = arg[v] - m[v / NV];
  }
  exp_nonpositive_parts_k<V, NT * NV>(arg, t, p);  // the tiles' vectors side by side
  KVEVICT_UNROLL
  for (int v = 0; v < NT * NV; ++v) {
    const U bits = ((U)t[v] - mb + 127u) << 23;
    V e = p[v] * (V)bits;
    if (Scale) e = e * s;
    round_here(e);  // callers add it
    if (v >= (NT - 1) * NV && vis < 16) {
      V lane;
      for (int i = 0; i < W; ++i) lane[i] = static_cast<float>(v % NV * W + i);
      const I keep = lane < static_cast<float>(vis);
      e = keep ? e : V{};
    }
    std::memcpy(out + v * W, &e, sizeof e);
  }
#else
  for (int c = 0; c < 16 * NT; ++c) {
    const float e = exp_nonpositive(acc[c] - m[c / 16]);
    out[c] = c < 16 * (NT - 1) + vis ? (Scale ? e * s : e) : 0.0f;
  }
#endif
}

#if defined(KVEVICT_VECTOR_EXT)
//! Lane `l` of the two-source shuffle that swaps the off-diagonal J x J blocks of two rows `a`
//! (rows with bit J clear) and `b = a's row + J` of a B x B tile: the new `a` (`Hi = false`)
//! takes `b[l - J]` where bit J of `l` is set, else `a[l]`; the new `b` (`Hi = true`) takes
//! `a[l + J]` where it is clear, else `b[l]`. Indices address the concatenation (a, b).
template <int B, int J, bool Hi>
constexpr int swap_lane(int l) {
  return Hi ? ((l & J) ? B + l : l + J) : ((l & J) ? B + l - J : l);
}

//! `a, b = new a, new b` (see `swap_lane`). By reference: a vector passed or returned by value
//! would change the ABI between the instruction sets.
template <int B, int J, class V, int... L>
KVEVICT_ALWAYS_INLINE void swap_blocks(V& a, V& b, std::integer_sequence<int, L...>) {
#if defined(__clang__)
  const V lo = __builtin_shufflevector(a, b, swap_lane<B, J, false>(L)...);
  const V hi = __builtin_shufflevector(a, b, swap_lane<B, J, true>(L)...);
#else
  typedef std::int32_t I __attribute__((vector_size(B * sizeof(float))));
  const V lo = __builtin_shuffle(a, b, I{swap_lane<B, J, false>(L)...});
  const V hi = __builtin_shuffle(a, b, I{swap_lane<B, J, true>(L)...});
#endif
  a = lo;
  b = hi;
}

//! Transposes the B x B tile held in `r[0..B)` (row i, lane l) in registers: log2(B) rounds of B
//! two-source shuffles, each swapping the off-diagonal J x J blocks (J = B/2, ..., 1). Moves only.
template <int B, class V>
KVEVICT_ALWAYS_INLINE void transpose_in_registers(V* r) {
  auto round = [&](auto j) KVEVICT_ALWAYS_INLINE_LAMBDA {
    constexpr int J = decltype(j)::value;
    KVEVICT_UNROLL
    for (int i = 0; i < B; ++i) {
      if (!(i & J)) swap_blocks<B, J>(r[i], r[i + J], std::make_integer_sequence<int, B>{});
    }
  };
  if constexpr (B >= 16) round(std::integral_constant<int, 8>{});
  if constexpr (B >= 8) round(std::integral_constant<int, 4>{});
  round(std::integral_constant<int, 2>{});
  round(std::integral_constant<int, 1>{});
}
#endif

//! `out[d * 16 + c] = in[c * ld + d]` for 16 rows of DC floats (DC a multiple of B): a tile of
//! keys, converted along their rows, stored transposed for the micro-kernel, in B x B blocks
//! transposed in registers (B = 4, 8 or 16 floats: the widest vector the caller's variant has).
//! Moves only.
template <int DC, int B = 4>
KVEVICT_ALWAYS_INLINE void transpose_16xdc(const float* in, float* out, int ld = DC) {
  static_assert((B == 4 || B == 8 || B == 16) && DC % B == 0, "B x B blocks of a 16 x DC tile");
#if defined(KVEVICT_VECTOR_EXT)
  using V = typename float_vec<B>::type;
  for (int c0 = 0; c0 < 16; c0 += B) {
    KVEVICT_UNROLL
    for (int d0 = 0; d0 < DC; d0 += B) {
      V r[B];
      KVEVICT_UNROLL
      for (int i = 0; i < B; ++i) std::memcpy(&r[i], in + (c0 + i) * ld + d0, sizeof(V));
      transpose_in_registers<B>(r);
      KVEVICT_UNROLL
      for (int i = 0; i < B; ++i) std::memcpy(out + (d0 + i) * 16 + c0, &r[i], sizeof(V));
    }
  }
#else
  for (int c = 0; c < 16; ++c)
    for (int d = 0; d < DC; ++d) out[d * 16 + c] = in[c * ld + d];
#endif
}

//! One step of a pairwise tree reduction: v[c] = op(v[c], v[c + Stride]) for c < Stride.
template <int Stride, class Op>
KVEVICT_ALWAYS_INLINE void tree_step(float* v, Op op) {
  KVEVICT_UNROLL
  for (int c = 0; c < Stride; ++c) v[c] = op(v[c], v[c + Stride]);
}

//! Run-time instruction-set dispatch on x86-64 with GCC or clang: a build with default flags still
//! runs the scorer with AVX-512 or AVX2 where the CPU has them. Off under nvcc's host pass and where the build
//! already targets AVX2 (then the baseline path is the AVX2 one).
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(__CUDACC__) && !defined(__AVX2__) && \
    !defined(KVEVICT_NO_DISPATCH)
#define KVEVICT_X86_DISPATCH 1
inline bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}
//! AVX-512 F (the 512-bit float instructions; the scorer needs nothing beyond them).
inline bool cpu_has_avx512f() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
}
#endif

template <class KeyFn, class = void>
struct has_scale_fn : std::false_type {};
template <class KeyFn>
struct has_scale_fn<KeyFn, std::void_t<decltype(std::declval<const KeyFn&>().scale(0))>> : std::true_type {};
//! The per-token scale a key reader gives (`key.scale(t)`), 1 for a reader without one.
template <class KeyFn>
KVEVICT_ALWAYS_INLINE float token_scale_at(const KeyFn& key, int t) {
  if constexpr (has_scale_fn<KeyFn>::value)
    return key.scale(t);
  else
    return 1.0f;
}
}  // namespace detail

namespace host_backend {

//! Keys scored together in one tile (the inner, vectorised loop runs over them).
inline constexpr int window_attention_key_tile = 16;

//! The unit of query rows whose logits `window_attention_group` keeps at once.
inline constexpr int window_attention_row_block = 64;

//! `n` keys rounded up to whole key tiles (a kept row of logits, a column sum).
inline std::size_t window_attention_padded_keys(int n) {
  return (static_cast<std::size_t>(n < 0 ? 0 : n) + window_attention_key_tile - 1) / window_attention_key_tile *
         window_attention_key_tile;
}

//! Query rows per block for `rows` window rows and `n` keys: as many multiples of
//! `window_attention_row_block` as keep the block's logits within 8 MiB (every row at once for
//! short sequences: each block converts the keys once more), at least one (all rows if fewer).
inline int window_attention_block_rows(int rows, int n) {
  const int unit = window_attention_row_block;
  if (rows <= unit) return rows;
  const std::size_t padded = window_attention_padded_keys(n);
  const std::size_t cap = (std::size_t{8} << 20) / sizeof(float);
  int units = padded == 0 ? rows : static_cast<int>(cap / (padded * static_cast<std::size_t>(unit)));
  const int all = (rows + unit - 1) / unit;
  if (units > all) units = all;
  if (units < 1) units = 1;
  return units * unit < rows ? units * unit : rows;
}

//! Floats of scratch `window_attention_group` needs for `n` keys: O(tokens), a row block's logits
//! (the larger of 8 MiB and 64 floats per key, see `window_attention_block_rows`), `group`
//! floats per key and the queries.
inline std::size_t window_attention_scratch_floats(int head_dim, int window, int group, int n) {
  const std::size_t rows = static_cast<std::size_t>(window) * group;
  const std::size_t padded = window_attention_padded_keys(n);
  const std::size_t block = static_cast<std::size_t>(window_attention_block_rows(window * group, n));
  return rows * head_dim                                                   // queries as float, pre-scaled
         + static_cast<std::size_t>(head_dim) * window_attention_key_tile  // key tile, transposed
         + static_cast<std::size_t>(group) * padded                        // per-query-head column sums
         + block * padded;                                                 // a row block's logits
}

//! Window attention of one KV head's query group over its keys.
//!
//! For each of the `group` query heads `j` and window query `r` (at position `n - window + r`),
//! the softmax of `q . k_t / sqrt(head_dim)` over keys `t <= n - window + r` (causal) is formed
//! per block of `window_attention_block_rows` query rows: the block's logits against every key are
//! computed once (one matmul's worth of work) and kept in scratch; then, row by row, the running
//! max and sum of exponentials over 16-key tiles in key order, and the normalised probabilities
//! added to per-query-head column sums. For every key `t` it calls
//! `emit(t, col)` with `col[j]` = the probability mass query head `j` puts on `t`, averaged over
//! the window queries. Keys are read with `key(t)` -> `const T*` (head_dim contiguous). Cost:
//! group x window x n x head_dim multiply-adds; scratch O(n). Deterministic: every sum runs in a
//! fixed order.
//!
//! \param queries  the group's last `window` queries: query head j's row r at
//!                  `queries[j * query_head_stride + r * head_dim]` (dense: stride = window * head_dim)
//! \param scratch  window_attention_scratch_floats(head_dim, window, group, n) floats
//! \param key_scale  the keys are key_scale x what `key` returns (a quantised cache's k_scale)
template <class KeyFn, class Q, class Emit>
void window_attention_group(KeyFn key, int n, int head_dim, const Q* queries, std::size_t query_head_stride, int group,
                            int window, float* scratch, Emit emit, float key_scale = 1.0f);

namespace wa_detail {
//! `window_attention_group` with vectors of W floats (the dispatcher below picks W).
template <int W, class KeyFn, class Q, class Emit>
KVEVICT_ALWAYS_INLINE void window_attention_group_w(KeyFn& key, int n, int head_dim, const Q* queries,
                                                    std::size_t query_head_stride, int group, int window,
                                                    float* scratch, Emit& emit, float key_scale) {
  KVEVICT_FP_CONTRACT_OFF
  constexpr int KT = host_backend::window_attention_key_tile;
  constexpr int R = kvevict::detail::micro_rows<W>;
  const int rows = group * window;
  const std::size_t np = host_backend::window_attention_padded_keys(n);  // padded row length
  const int RB = host_backend::window_attention_block_rows(rows, n);
  float* qf = scratch;
  float* kt = qf + static_cast<std::size_t>(rows) * head_dim;
  float* col = kt + static_cast<std::size_t>(head_dim) * KT;  // [group, np]
  float* lg = col + static_cast<std::size_t>(group) * np;  // [RB, np]: the row block's logits

  // The keys' scale folds into the queries' (1 for a cache without one: the same bits as before).
  const float scale = key_scale / std::sqrt(static_cast<float>(head_dim));
  for (int j = 0; j < group; ++j)
    for (std::size_t i = 0; i < static_cast<std::size_t>(window) * head_dim; ++i)
      qf[static_cast<std::size_t>(j) * window * head_dim + i] = to_float(queries[j * query_head_stride + i]) * scale;
  for (std::size_t i = 0; i < static_cast<std::size_t>(group) * np; ++i) col[i] = 0.0f;

  // The tile's keys as float, transposed: kt[d * KT + c] (16 contiguous floats per d, the
  // micro-kernel's key vectors).
  // A key with a per-(token, head) scale is dequantised here, times its scale (x * 1 is x: a
  // cache without token scales keeps its bits).
  auto load_tile = [&](int t0, int cnt) KVEVICT_ALWAYS_INLINE_LAMBDA {
    decltype(key(t0)) kp[KT];
    float ks[KT];
    for (int c = 0; c < KT; ++c) {
      kp[c] = key(t0 + (c < cnt ? c : 0));
      ks[c] = kvevict::detail::token_scale_at(key, t0 + (c < cnt ? c : 0));
    }
    // Runs of up to HB dimensions in multiples of DC: each key's run converted along its row
    // (one contiguous read per key, and it vectorises), then the run transposed in B x B blocks.
    constexpr int DC = 32, HB = 128, TB = W >= 16 ? 16 : W >= 8 ? 8 : 4;
    alignas(64) float buf[KT][HB];
    int d0 = 0;
    while (head_dim - d0 >= DC) {
      const int len = head_dim - d0 < HB ? (head_dim - d0) / DC * DC : HB;
      for (int c = 0; c < KT; ++c) {
        const auto* src = kp[c] + d0;
        if (c < cnt) {
          const float s = ks[c];
          for (int i = 0; i < len; ++i) buf[c][i] = to_float(src[i]) * s;
        } else {
          for (int i = 0; i < len; ++i) buf[c][i] = 0.0f;
        }
      }
      for (int d = 0; d < len; d += DC)
        kvevict::detail::transpose_16xdc<DC, TB>(&buf[0][d], kt + static_cast<std::size_t>(d0 + d) * KT, HB);
      d0 += len;
    }
    for (int d = d0; d < head_dim; ++d) {
      float* row = kt + static_cast<std::size_t>(d) * KT;
      KVEVICT_UNROLL
      for (int c = 0; c < KT; ++c) row[c] = c < cnt ? to_float(kp[c][d]) * ks[c] : 0.0f;
    }
  };
  // Logits of rows [r0, r0 + nr) against the tile: accR[i * KT + c].
  auto logits = [&](int r0, int nr, float* accR) KVEVICT_ALWAYS_INLINE_LAMBDA {
    const float* q = qf + static_cast<std::size_t>(r0) * head_dim;
    if (nr == R) {
      kvevict::detail::dot_rows_tile16<W, R>(q, static_cast<std::size_t>(head_dim), kt, head_dim, accR);
    } else {
      for (int i = 0; i < nr; ++i)
        kvevict::detail::dot_rows_tile16<W, 1>(q + static_cast<std::size_t>(i) * head_dim, 0, kt, head_dim,
                                               accR + i * KT);
    }
  };
  // Keys visible to window query r: t <= n - window + r.
  auto visible = [&](int row, int t0, int cnt) KVEVICT_ALWAYS_INLINE_LAMBDA {
    const int last = n - window + row % window;
    const int v = last - t0 + 1;
    return v < cnt ? (v < 0 ? 0 : v) : cnt;
  };
  // Fixed-order pairwise reductions over a tile (strides 8, 4, 2, 1): deterministic, and the
  // constant-length steps unroll and vectorise.
  auto tree_max = [](float* v) KVEVICT_ALWAYS_INLINE_LAMBDA {
    kvevict::detail::tree_step<8>(v, [](float a, float b) KVEVICT_ALWAYS_INLINE_LAMBDA { return b > a ? b : a; });
    kvevict::detail::tree_step<4>(v, [](float a, float b) KVEVICT_ALWAYS_INLINE_LAMBDA { return b > a ? b : a; });
    kvevict::detail::tree_step<2>(v, [](float a, float b) KVEVICT_ALWAYS_INLINE_LAMBDA { return b > a ? b : a; });
    kvevict::detail::tree_step<1>(v, [](float a, float b) KVEVICT_ALWAYS_INLINE_LAMBDA { return b > a ? b : a; });
    return v[0];
  };
  auto tree_sum = [](float* v) KVEVICT_ALWAYS_INLINE_LAMBDA {
    kvevict::detail::tree_step<8>(v, [](float a, float b) KVEVICT_ALWAYS_INLINE_LAMBDA { return a + b; });
    kvevict::detail::tree_step<4>(v, [](float a, float b) KVEVICT_ALWAYS_INLINE_LAMBDA { return a + b; });
    kvevict::detail::tree_step<2>(v, [](float a, float b) KVEVICT_ALWAYS_INLINE_LAMBDA { return a + b; });
    kvevict::detail::tree_step<1>(v, [](float a, float b) KVEVICT_ALWAYS_INLINE_LAMBDA { return a + b; });
    return v[0];
  };
  auto block_visible = [&](int r0, int nr, int t0, int cnt) KVEVICT_ALWAYS_INLINE_LAMBDA {
    for (int i = 0; i < nr; ++i)
      if (visible(r0 + i, t0, cnt) > 0) return true;
    return false;
  };

  float accR[R * KT];
  const float inv_window = 1.0f / static_cast<float>(window);
  for (int b0 = 0; b0 < rows; b0 += RB) {
    const int b1 = rows - b0 < RB ? rows : b0 + RB;
    // Step 1: the block's logits against every key, kept.
    for (int t0 = 0; t0 < n; t0 += KT) {
      const int cnt = n - t0 < KT ? n - t0 : KT;
      load_tile(t0, cnt);
      for (int r0 = b0; r0 < b1; r0 += R) {
        const int nr = b1 - r0 < R ? b1 - r0 : R;
        if (!block_visible(r0, nr, t0, cnt)) continue;
        logits(r0, nr, accR);
        for (int r = r0; r < r0 + nr; ++r)
          if (visible(r, t0, cnt) > 0)
            std::memcpy(lg + static_cast<std::size_t>(r - b0) * np + t0, accR + (r - r0) * KT, sizeof(float) * KT);
      }
    }
    // Rows in order, each from its kept logits (in cache while both steps read them). Both
    // steps go NT tiles at a time while the last of them is visible (then the others are whole),
    // so their exponentials run side by side, then tile by tile.
    constexpr int NT = W >= 8 ? W / 4 : 1;  // tiles per step: four vectors' exponentials side by side
    for (int r = b0; r < b1; ++r) {
      const float* lr = lg + static_cast<std::size_t>(r - b0) * np;
      auto vis_at = [&](int t0) KVEVICT_ALWAYS_INLINE_LAMBDA { return visible(r, t0, n - t0 < KT ? n - t0 : KT); };
      // The tile's logits with the masked keys at -FLT_MAX, and their max (a read tile holds 16
      // written logits, so the read is unconditional).
      auto tile_max = [&](int t0, int vis) KVEVICT_ALWAYS_INLINE_LAMBDA {
        float tmp[KT];
        for (int c = 0; c < KT; ++c) {
          const float x = lr[t0 + c];
          tmp[c] = c < vis ? x : -FLT_MAX;
        }
        return tree_max(tmp);
      };
      // step 2, the running max and sum of exponentials over the tiles in key order: a tile's
      // exponentials `e` at the running max `m` are added to the sum rescaled from `row_m`.
      float row_m = -FLT_MAX, row_s = 0.0f;
      auto add_tile = [&](float m, float* e) KVEVICT_ALWAYS_INLINE_LAMBDA {
        // exp(0) is exactly 1 (and x * 1 is x): skip it when the max did not move.
        const float shift = row_m - m;
        if (shift != 0.0f) {
          row_s = row_s * kvevict::detail::exp_nonpositive(shift);
          kvevict::detail::round_here(row_s);
        }
        row_s = row_s + tree_sum(e);
        row_m = m;
      };
      // Runs body(K, t0, vis_last) over the row's visible tiles in key order: K = NT tiles at a
      // time while the K-th is visible, then one at a time (exp_tiles of one tile is that tile's).
      auto by_tiles = [&](auto body) KVEVICT_ALWAYS_INLINE_LAMBDA {
        auto run = [&](auto tiles, int t0) KVEVICT_ALWAYS_INLINE_LAMBDA {
          constexpr int K = decltype(tiles)::value;
          for (; t0 + (K - 1) * KT < n; t0 += K * KT) {
            const int vis_last = vis_at(t0 + (K - 1) * KT);
            if (vis_last == 0) break;  // later tiles are invisible too
            body(tiles, t0, vis_last);
          }
          return t0;
        };
        run(std::integral_constant<int, 1>{}, run(std::integral_constant<int, NT>{}, 0));
      };
      by_tiles([&](auto tiles, int t0, int vis_last) KVEVICT_ALWAYS_INLINE_LAMBDA {
        constexpr int K = decltype(tiles)::value;
        float mm[K];
        for (int i = 0; i < K; ++i) {
          const float mx = tile_max(t0 + i * KT, i + 1 < K ? KT : vis_last);
          const float before = i ? mm[i - 1] : row_m;
          mm[i] = mx > before ? mx : before;
        }
        float e[K * KT];
        kvevict::detail::exp_tiles<W, false, K>(lr + t0, mm, 1.0f, vis_last, e);
        for (int i = 0; i < K; ++i) add_tile(mm[i], e + i * KT);
      });
      // step 3, the normalised probabilities into the column sums.
      const float inv = row_s > 0.0f ? inv_window / row_s : 0.0f;
      float* cj = col + static_cast<std::size_t>(r / window) * np;
      by_tiles([&](auto tiles, int t0, int vis_last) KVEVICT_ALWAYS_INLINE_LAMBDA {
        constexpr int K = decltype(tiles)::value;
        float mm[K], e[K * KT];
        for (int i = 0; i < K; ++i) mm[i] = row_m;
        kvevict::detail::exp_tiles<W, true, K>(lr + t0, mm, inv, vis_last, e);
        for (int c = 0; c < K * KT; ++c) cj[t0 + c] += e[c];
      });
    }
  }
  float vals[64];  // group <= 64 is checked by the scorer's validation
  for (int t = 0; t < n; ++t) {
    for (int j = 0; j < group; ++j) vals[j] = col[static_cast<std::size_t>(j) * np + t];
    emit(t, static_cast<const float*>(vals));
  }
}
}  // namespace wa_detail

#if defined(KVEVICT_X86_DISPATCH)
namespace wa_detail {
//! The scorer compiled for AVX2 and for AVX-512 F, both without FMA, so the arithmetic is the
//! baseline's bit for bit: every (row, key) logit is the same chain of multiplies and adds in the
//! same order whatever the vector width (lanes are keys). The scorer body, its micro-kernel and
//! its exponential are always inlined into them (so they are compiled for the target); what they
//! call (key reader, conversions, `emit`) is inlined as usual.
template <class KeyFn, class Q, class Emit>
__attribute__((target("avx2"))) void window_attention_group_avx2(KeyFn& key, int n, int head_dim, const Q* queries,
                                                                 std::size_t query_head_stride, int group, int window,
                                                                 float* scratch, Emit& emit, float key_scale) {
  window_attention_group_w<8>(key, n, head_dim, queries, query_head_stride, group, window, scratch, emit, key_scale);
}
template <class KeyFn, class Q, class Emit>
__attribute__((target("avx2,avx512f"))) void window_attention_group_avx512(KeyFn& key, int n, int head_dim,
                                                                           const Q* queries,
                                                                           std::size_t query_head_stride, int group,
                                                                           int window, float* scratch, Emit& emit,
                                                                           float key_scale) {
  window_attention_group_w<16>(key, n, head_dim, queries, query_head_stride, group, window, scratch, emit, key_scale);
}
}  // namespace wa_detail
#endif

//! Instruction sets the scorer can run with (`window_attention_group_isa` forces one; tests and
//! benchmarks use it to compare them), in increasing order after `automatic`. `automatic` takes
//! AVX-512 F where the CPU has it, else AVX2, capped by the environment variable
//! `KVEVICT_SCORER_ISA` (see `scorer_isa_cap`). Measured (bench/RESULTS.md): on an AMD EPYC Zen 4,
//! since the tile-wise schedule of 2026-11-30, the AVX-512 variant plans one layer 1.03x to 1.32x
//! faster than the AVX2 one; Zen 5 (full-width 512-bit units) was measured on 2026-12-06. On a CPU
//! where AVX-512 lowers the clock, `KVEVICT_SCORER_ISA=avx2` keeps the scorer on AVX2.
enum class scorer_isa { automatic, baseline, avx2, avx512 };

//! `text` as a `scorer_isa` cap: "baseline", "avx2", "avx512", or "auto" / empty / null for no cap
//! (`automatic`). Anything else: `ok` is false and the result `automatic`.
inline scorer_isa parse_scorer_isa(const char* text, bool& ok) {
  ok = true;
  if (text == nullptr || *text == '\0' || std::strcmp(text, "auto") == 0) return scorer_isa::automatic;
  if (std::strcmp(text, "baseline") == 0) return scorer_isa::baseline;
  if (std::strcmp(text, "avx2") == 0) return scorer_isa::avx2;
  if (std::strcmp(text, "avx512") == 0) return scorer_isa::avx512;
  ok = false;
  return scorer_isa::automatic;
}

//! The process's cap on `automatic`: `KVEVICT_SCORER_ISA` read once, at the first plan that scores
//! on the host (`automatic`, no cap, when it is unset). Every variant computes the same bits, so the
//! cap changes only the speed: an escape hatch for CPUs where AVX-512 lowers the clock, or to
//! compare variants in one's own engine. It acts only where the scorer dispatches at run time
//! (x86-64 with GCC or clang, a build without -mavx2). An unknown value is reported once on stderr
//! and ignored.
inline scorer_isa scorer_isa_cap() {
  static const scorer_isa cap = [] {
    const char* text = std::getenv("KVEVICT_SCORER_ISA");
    bool ok = true;
    const scorer_isa isa = parse_scorer_isa(text, ok);
    if (!ok)
      std::fprintf(stderr, "kvevict: KVEVICT_SCORER_ISA=%s is not one of auto, baseline, avx2, avx512; ignored\n",
                   text);
    return isa;
  }();
  return cap;
}

//! The instruction set `isa` resolves to on this CPU and build with `automatic` capped at `cap`
//! (`automatic`: AVX-512 F, else AVX2, where the CPU has it, but not above `cap`; an explicit set the
//! CPU or build lacks: `baseline`).
inline scorer_isa resolve_scorer_isa(scorer_isa isa, scorer_isa cap) {
#if defined(KVEVICT_X86_DISPATCH)
  const bool a512 = kvevict::detail::cpu_has_avx512f() && kvevict::detail::cpu_has_avx2();
  const bool a2 = kvevict::detail::cpu_has_avx2();
  if (isa == scorer_isa::automatic) {
    isa = a512 ? scorer_isa::avx512 : scorer_isa::avx2;
    if (cap != scorer_isa::automatic && cap < isa) isa = cap;
  }
  if (isa == scorer_isa::avx512) return a512 ? isa : scorer_isa::baseline;
  if (isa == scorer_isa::avx2) return a2 ? isa : scorer_isa::baseline;
#else
  (void)isa;
  (void)cap;
#endif
  return scorer_isa::baseline;
}

//! The instruction set `isa` resolves to on this CPU and build, `automatic` capped by
//! `KVEVICT_SCORER_ISA` (`scorer_isa_cap`).
inline scorer_isa resolve_scorer_isa(scorer_isa isa) { return resolve_scorer_isa(isa, scorer_isa_cap()); }

//! `window_attention_group` on the instruction set `isa` (resolved as above). Every set computes
//! the same bits.
template <class KeyFn, class Q, class Emit>
void window_attention_group_isa(scorer_isa isa, KeyFn key, int n, int head_dim, const Q* queries,
                                std::size_t query_head_stride, int group, int window, float* scratch, Emit emit,
                                float key_scale = 1.0f) {
  switch (resolve_scorer_isa(isa)) {
#if defined(KVEVICT_X86_DISPATCH)
    case scorer_isa::avx512:
      return wa_detail::window_attention_group_avx512(key, n, head_dim, queries, query_head_stride, group, window,
                                                      scratch, emit, key_scale);
    case scorer_isa::avx2:
      return wa_detail::window_attention_group_avx2(key, n, head_dim, queries, query_head_stride, group, window,
                                                    scratch, emit, key_scale);
#endif
    default:
      return wa_detail::window_attention_group_w<kvevict::detail::simd_floats>(
          key, n, head_dim, queries, query_head_stride, group, window, scratch, emit, key_scale);
  }
}

//! Dispatches to AVX-512 F or AVX2 where the CPU runs them (x86-64 with GCC or clang; see
//! `scorer_isa`), else the build's baseline; every variant computes the same bits.
template <class KeyFn, class Q, class Emit>
void window_attention_group(KeyFn key, int n, int head_dim, const Q* queries, std::size_t query_head_stride, int group,
                            int window, float* scratch, Emit emit, float key_scale) {
  window_attention_group_isa(scorer_isa::automatic, key, n, head_dim, queries, query_head_stride, group, window,
                             scratch, emit, key_scale);
}

}  // namespace host_backend
}  // namespace kvevict

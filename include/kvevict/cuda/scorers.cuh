//! \file cuda/scorers.cuh
//! Device implementations of the scorers, one `device_scorer<Scorer>` each: host-side checks of
//! scalar arguments, scratch size, and the kernels they enqueue. A scorer without one fails to
//! compile with kvevict::cuda, naming itself. Not API.
#pragma once

#include <cmath>
#include <cstddef>
#include <type_traits>

#include "../scorer/accumulated_attention.hpp"
#include "../scorer/key_norm.hpp"
#include "../scorer/positional.hpp"
#include "../scorer/precomputed.hpp"
#include "../scorer/window_attention.hpp"
#include "device_info.cuh"
#include "window_attention.cuh"
#include "window_attention_mma.cuh"

namespace kvevict::cuda_backend {

template <class Scorer>
struct device_scorer {
  static_assert(always_false<Scorer>, "kvevict::cuda: this scorer has no CUDA implementation (see cuda/scorers.cuh)");
};

// ---- scorers that read per-token data: one thread per token ----

template <class Cache, class F>
__global__ void per_token_kernel(Cache c, seq_rules rules, float* out, int* word, F f) {
  const int s = blockIdx.z, h = blockIdx.y;
  if (failed(word)) return;
  if (rules.info(c, s).kept_whole()) return;
  const int n = c.seq_len(s, h);
  const std::size_t base = row_base(c, s, h);
  for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x)
    out[base + t] = f(c, s, h, t);
}

template <class Cache, class F>
status launch_per_token(cudaStream_t st, const Cache& c, const seq_rules& rules, float* out, int* word, F f) {
  const dim3 grid(grid_for(static_cast<std::size_t>(max_row_cap(c)), threads_per_block, 1024), c.num_kv_heads(),
                  c.num_seqs());
  per_token_kernel<<<grid, threads_per_block, 0, st>>>(c, rules, out, word, f);
  return check_launch("scorer: kernel launch");
}

//! A scorer that reads only the cache: nothing to check on the host, no scratch, one thread per
//! token computing `Fn{}(cache, s, h, t)`.
template <class Scorer, class Fn>
struct cache_only_device_scorer {
  template <class Cache, class T>
  static status host_check(const Scorer&, const Cache&, const signals<T>&, int) {
    return ok_status();
  }
  template <class Cache, class T>
  static scratch_request request(const Scorer&, const Cache&, const signals<T>&, int) {
    return {};
  }
  template <class Cache, class T>
  static status enqueue(const Scorer&, cudaStream_t st, const Cache& c, const signals<T>&, const seq_rules& rules,
                        float* out, void*, void*, int* word) {
    return launch_per_token(st, c, rules, out, word, Fn{});
  }
};

struct positional_fn {
  template <class Cache>
  __device__ float operator()(const Cache&, int, int, int t) const {
    return static_cast<float>(t);
  }
};
template <>
struct device_scorer<positional> : cache_only_device_scorer<positional, positional_fn> {};

//! -||k||: the host scorer's own formula (key_norm::of), bit for bit.
struct key_norm_fn {
  template <class Cache>
  __device__ float operator()(const Cache& c, int s, int h, int t) const {
    return key_norm::of(c, s, h, t);
  }
};
template <>
struct device_scorer<key_norm> : cache_only_device_scorer<key_norm, key_norm_fn> {};

//! Caller scores (device memory); a row longer than the stride fails the call.
struct precomputed_fn {
  const float* scores;
  int stride;
  int* word;
  template <class Cache>
  __device__ float operator()(const Cache& c, int s, int h, int t) const {
    if (t == 0) raise(word, detail::check_stride(c.seq_len(s, h), stride, ck_precomputed_stride));
    if (t >= stride) return 0.0f;
    return scores[(static_cast<std::size_t>(s) * c.num_kv_heads() + h) * static_cast<std::size_t>(stride) + t];
  }
};
template <>
struct device_scorer<precomputed> {
  template <class Cache, class T>
  static status host_check(const precomputed& p, const Cache&, const signals<T>&, int) {
    if (p.scores == nullptr) return make_error(errc::invalid_argument, "scorer.scores", "null scores");
    if (p.stride < 0) return make_error(errc::invalid_argument, "scorer.stride", "must be >= 0");
    return ok_status();
  }
  template <class Cache, class T>
  static scratch_request request(const precomputed&, const Cache&, const signals<T>&, int) {
    return {};
  }
  template <class Cache, class T>
  static status enqueue(const precomputed& p, cudaStream_t st, const Cache& c, const signals<T>&,
                        const seq_rules& rules, float* out, void*, void*, int* word) {
    return launch_per_token(st, c, rules, out, word, precomputed_fn{p.scores, p.stride, word});
  }
};

//! H2O: the engine's accumulated attention sums, reduced over the GQA group.
template <class Reduce>
struct accumulated_fn {
  const float* sums;
  int num_q_heads, stride;
  int* word;
  template <class Cache>
  __device__ float operator()(const Cache& c, int s, int h, int t) const {
    const int group = num_q_heads / c.num_kv_heads();
    if (t == 0) raise(word, detail::check_stride(c.seq_len(s, h), stride, ck_sums_stride));
    if (t >= stride) return 0.0f;
    float vals[64];
    const float* base = sums + (static_cast<std::size_t>(s) * num_q_heads + static_cast<std::size_t>(h) * group) * stride;
    for (int j = 0; j < group; ++j) {
      vals[j] = base[static_cast<std::size_t>(j) * stride + t];
      if (!isfinite(vals[j])) raise(word, ck_sums_non_finite);
    }
    return Reduce::reduce(vals, group);
  }
};
template <class Reduce>
struct device_scorer<accumulated_attention<Reduce>> {
  template <class Cache, class T>
  static status host_check(const accumulated_attention<Reduce>& sc, const Cache& c, const signals<T>& sig, int) {
    KVEVICT_TRY(sc.check_signals(c, sig));
    if (sig.sums_stride < 0) return make_error(errc::invalid_argument, "signals.sums_stride", "must be >= 0");
    return ok_status();
  }
  template <class Cache, class T>
  static scratch_request request(const accumulated_attention<Reduce>&, const Cache&, const signals<T>&, int) {
    return {};
  }
  template <class Cache, class T>
  static status enqueue(const accumulated_attention<Reduce>&, cudaStream_t st, const Cache& c, const signals<T>& sig,
                        const seq_rules& rules, float* out, void*, void*, int* word) {
    return launch_per_token(st, c, rules, out, word,
                            accumulated_fn<Reduce>{sig.attention_sums, sig.num_q_heads, sig.sums_stride, word});
  }
};

// ---- window attention ----

//! Window attention: the tensor-core agent (window_attention_mma.cuh) where the shape allows, the
//! CUDA-core kernels (window_attention.cuh) otherwise; pooling as a last light pass.
template <class Reduce, class Pool>
struct device_scorer<window_attention<Reduce, Pool>> {
  using scorer = window_attention<Reduce, Pool>;

  template <class Cache>
  static bool vec_rows(const Cache& c) {
    using T = typename Cache::value_type;
    const std::size_t row = c.head_dim() * sizeof(T);
    return row % 16 == 0 && reinterpret_cast<std::uintptr_t>(c.k) % 16 == 0;
  }
  template <class Cache, class T>
  static wa_smem smem_of(const Cache& c, const signals<T>& sig, int window) {
    return wa_smem::make(c.head_dim(), sig.num_q_heads / c.num_kv_heads(), window, static_cast<int>(sizeof(T)),
                         vec_rows(c));
  }
  //! Shared memory of the tensor-core configuration for this shape, 0 when it does not apply.
  template <class Cache, class T>
  static std::size_t mma_smem(const Cache& c, const signals<T>& sig, int window) {
    if (!wa_mma_eligible(c, sig, window)) return 0;
    std::size_t bytes = 0;
    wa_mma_with_config(c.head_dim(), detail::wa_rows::make(window, sig.num_q_heads / c.num_kv_heads()).rows(),
                       [&](auto cfg) { bytes = decltype(cfg)::smem_bytes; });
    return bytes;
  }
  template <class Cache, class T>
  static bool use_mma(const Cache& c, const signals<T>& sig, int window, const device_info& info) {
    const std::size_t bytes = mma_smem(c, sig, window);
    return bytes > 0 && info.cc_major >= 8 && bytes <= static_cast<std::size_t>(info.max_smem_optin) &&
           !detail::holds_token_scales(c, true);  // token scales: the CUDA-core kernels apply them
  }
  template <class Cache, class T>
  static status host_check(const scorer& sc, const Cache& c, const signals<T>& sig, int window) {
    KVEVICT_TRY(sc.validate(c, sig, window));  // scalar checks only
    device_info info;
    KVEVICT_TRY(current_device_info(info));
    if (!use_mma(c, sig, window, info) && smem_of(c, sig, window).total > static_cast<std::size_t>(info.max_smem_optin))
      return make_error(errc::invalid_argument, "selector.window",
                        "window x query heads per KV head x head_dim exceeds the CUDA scorer's shared memory");
    return ok_status();
  }

  //! Scratch: raw scores before pooling, then the larger of the two agents' statistics.
  struct layout {
    std::size_t raw, part, stat;  // CUDA-core agent
    wa_mma_layout mma;            // tensor-core agent
    std::size_t agent() const {
      const std::size_t cuda_core = detail::workspace_layout<4>{{part, part, stat, stat}}.total();
      const std::size_t tensor = detail::workspace_layout<2>{{mma.part, mma.stat}}.total();
      return cuda_core > tensor ? cuda_core : tensor;
    }
  };
  template <class Cache, class T>
  static layout sizes(const Cache& c, const signals<T>& sig, int window) {
    const wa_smem sm = smem_of(c, sig, window);
    return {Pool::enabled ? sizeof(float) * slab_tokens(c) : 0,
            sizeof(float) * chunk_entries(c, wa_chunk) * static_cast<std::size_t>(sm.rows_pad),
            sizeof(float) * static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads() * sm.rows_pad,
            wa_mma_layout::of(c)};
  }
  //! Zeroed: the tensor-core agent's slice counters; plain: raw scores before pooling, then the
  //! larger of the two agents' statistics.
  template <class Cache, class T>
  static scratch_request request(const scorer&, const Cache& c, const signals<T>& sig, int window) {
    const layout l = sizes(c, sig, window);
    return {l.mma.done, detail::workspace_layout<2>{{l.raw, l.agent()}}.total()};
  }

  template <bool Vec, bool Mma, class Cache, class T>
  static status run(cudaStream_t st, const wa_args<Cache, T>& a, dim3 grid, dim3 merge_grid) {
    auto k1 = window_attention_kernel<1, Reduce, Vec, Mma, Cache, T>;
    auto k2 = window_attention_kernel<2, Reduce, Vec, Mma, Cache, T>;
    const std::size_t bytes = a.sm.total;
    KVEVICT_TRY(allow_dynamic_smem(k1, bytes));
    KVEVICT_TRY(allow_dynamic_smem(k2, bytes));
    k1<<<grid, wa_threads, bytes, st>>>(a);
    KVEVICT_TRY(check_launch("window attention pass 1: kernel launch"));
    window_attention_merge_kernel<<<merge_grid, 256, 0, st>>>(a);
    KVEVICT_TRY(check_launch("window attention merge: kernel launch"));
    k2<<<grid, wa_threads, bytes, st>>>(a);
    return check_launch("window attention pass 2: kernel launch");
  }

  template <class Cache, class T>
  static status enqueue_cuda_core(cudaStream_t st, const Cache& c, const signals<T>& sig, const seq_rules& rules,
                                  const layout& l, void* scratch, float* out, int* word) {
    void* buf[4];
    detail::workspace_layout<4>{{l.part, l.part, l.stat, l.stat}}.carve(scratch, buf);
    wa_args<Cache, T> a{};
    a.cache = c;
    a.queries = sig.queries;
    a.num_q_heads = sig.num_q_heads;
    a.query_rows = sig.query_rows;
    a.group = sig.num_q_heads / c.num_kv_heads();
    a.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim())) * detail::key_scale_of(c);  // k_scale folded in
    a.rules = rules;
    a.sm = smem_of(c, sig, rules.src.window);
    a.part_m = static_cast<float*>(buf[0]);
    a.part_l = static_cast<float*>(buf[1]);
    a.stat_m = static_cast<float*>(buf[2]);
    a.stat_inv = static_cast<float*>(buf[3]);
    a.out = out;
    a.word = word;
    const dim3 grid((max_row_cap(c) + wa_chunk - 1) / wa_chunk, c.num_kv_heads(), c.num_seqs());
    const dim3 merge_grid((a.sm.rows_pad + 255) / 256, c.num_kv_heads(), c.num_seqs());
    constexpr bool sixteen_bit = !std::is_same_v<typename mma_element<T>::type, void>;
    if (vec_rows(c)) {
      if (sixteen_bit && c.head_dim() % 16 == 0) return run<true, sixteen_bit>(st, a, grid, merge_grid);
      return run<true, false>(st, a, grid, merge_grid);
    }
    return run<false, false>(st, a, grid, merge_grid);
  }

  template <class Cache, class T>
  static status enqueue_tensor_core(cudaStream_t st, const Cache& c, const signals<T>& sig, const seq_rules& rules,
                                    const layout& l, void* zeroed, void* scratch, float* out, int* word) {
    void* buf[2];
    detail::workspace_layout<2>{{l.mma.part, l.mma.stat}}.carve(scratch, buf);
    wa_mma_args<Cache, T> a{};
    a.cache = c;
    a.queries = sig.queries;
    a.num_q_heads = sig.num_q_heads;
    a.query_rows = sig.query_rows;
    a.group = sig.num_q_heads / c.num_kv_heads();
    a.slice = wa_mma_slice(c);
    a.scale_log2 = 1.4426950408889634f / std::sqrt(static_cast<float>(c.head_dim())) * detail::key_scale_of(c);
    a.rules = rules;
    a.part = static_cast<float2*>(buf[0]);
    a.stat = static_cast<float2*>(buf[1]);
    a.done = static_cast<int*>(zeroed);
    a.out = out;
    a.word = word;
    const dim3 grid((max_row_cap(c) + a.slice - 1) / a.slice, c.num_kv_heads(), c.num_seqs());
    status result = ok_status();
    wa_mma_with_config(c.head_dim(), detail::wa_rows::make(rules.src.window, a.group).rows(), [&](auto cfg) {
      using Cfg = decltype(cfg);
      auto k1 = wa_mma_pass1_kernel<Cfg, Cache, T>;
      auto k2 = wa_mma_pass2_kernel<Cfg, Reduce, Cache, T>;
      result = allow_dynamic_smem(k1, Cfg::smem_bytes);
      if (result.ok()) result = allow_dynamic_smem(k2, Cfg::smem_bytes);
      if (!result.ok()) return;
      k1<<<grid, Cfg::threads, Cfg::smem_bytes, st>>>(a);
      result = check_launch("window attention (tensor cores) pass 1: kernel launch");
      if (!result.ok()) return;
      k2<<<grid, Cfg::threads, Cfg::smem_bytes, st>>>(a);
      result = check_launch("window attention (tensor cores) pass 2: kernel launch");
    });
    return result;
  }

  //! The scores before pooling: into the scorer's scratch when it pools (`raw` is set to it), else
  //! into `out` (`raw` = out). Two or three launches.
  template <class Cache, class T>
  static status enqueue_unpooled(const scorer&, cudaStream_t st, const Cache& c, const signals<T>& sig,
                                 const seq_rules& rules, float* out, void* zeroed, void* plain, int* word,
                                 const float*& raw) {
    const layout l = sizes(c, sig, rules.src.window);
    void* buf[2];
    detail::workspace_layout<2>{{l.raw, l.agent()}}.carve(plain, buf);
    float* dst = Pool::enabled ? static_cast<float*>(buf[0]) : out;
    raw = dst;
    device_info info;
    KVEVICT_TRY(current_device_info(info));
    bool tensor = false;
    if constexpr ((std::is_same_v<T, bfloat16> || std::is_same_v<T, half>) &&
                  std::is_same_v<typename Cache::value_type, T>) {  // quantised keys: the CUDA-core kernels
      tensor = use_mma(c, sig, rules.src.window, info);
      if (tensor) KVEVICT_TRY(enqueue_tensor_core(st, c, sig, rules, l, zeroed, buf[1], dst, word));
    }
    if (!tensor) KVEVICT_TRY(enqueue_cuda_core(st, c, sig, rules, l, buf[1], dst, word));
    return ok_status();
  }

  //! The scores, pooled into `out` by a last light pass when the scorer pools. (`plan` and `evict`
  //! with token-level selection run the pooling inside the selection's first pass instead.)
  template <class Cache, class T>
  static status enqueue(const scorer& sc, cudaStream_t st, const Cache& c, const signals<T>& sig,
                        const seq_rules& rules, float* out, void* zeroed, void* plain, int* word) {
    const float* raw = nullptr;
    KVEVICT_TRY(enqueue_unpooled(sc, st, c, sig, rules, out, zeroed, plain, word, raw));
    if constexpr (Pool::enabled) {
      const dim3 pgrid(grid_for(static_cast<std::size_t>(max_row_cap(c)), threads_per_block, 1024), c.num_kv_heads(),
                       c.num_seqs());
      pool_kernel<Pool><<<pgrid, threads_per_block, 0, st>>>(c, rules, sc.pool_kernel, raw, out, word);
      KVEVICT_TRY(check_launch("pooling: kernel launch"));
    }
    return ok_status();
  }
};

//! The pooling a scorer ends with, when a selection may run it inside its own first pass
//! (`no_pool` for every scorer but pooled window attention).
template <class Scorer>
struct deferred_pooling {
  using pool = no_pool;
};
template <class Reduce, class Pool>
struct deferred_pooling<window_attention<Reduce, Pool>> {
  using pool = Pool;
};

}  // namespace kvevict::cuda_backend

//! \file cuda/shard.cuh
//! Tensor-parallel shards on the CUDA backend: `score` and `select`, the two halves of `plan` for an
//! engine whose KV heads are split across GPUs (algorithm/shard.hpp says which policies need them).
//! Each GPU scores its own heads into `[num_seqs, kv_heads, stride]`, the engine all-gathers the
//! scores of every head of the layer (for one sequence an NCCL all-gather of the shards' blocks, in
//! shard order, lands in the layout `select` reads), and each GPU selects its own rows from them.
//! Same arguments, checks and plans as `score(host, ...)` and `select(host, ...)`; device-resident
//! tables (lengths, the gathered scores) are checked on the device and reported by
//! `device_status(exec, workspace)`. Per-head adaptive budgets (Ada-KV) on shards have no CUDA implementation.
//!
//! \code
//! kvevict::score(exec, policy, shard_cache, sig, my_scores, stride, ws, ws_bytes);
//! ncclAllGather(my_scores, gathered, seqs * kv_heads * stride, ncclFloat, comm, stream);  // one sequence
//! kvevict::select(exec, policy, shard_cache, sig, kvevict::head_shard{first, total, all_lens},
//!                 gathered, stride, plan, ws, ws_bytes);
//! \endcode
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>

#include "../algorithm/shard.hpp"
#include "algorithm.cuh"

namespace kvevict {
namespace cuda_backend {

//! Every head of the layer as `select` sees it from one shard: lengths `[num_seqs, total]` (or,
//! when null, the shard's own length for every head) and scores in the gathered layout. Models
//! what the device granularities read of a cache: lengths, and where a row's scratch lives.
template <class Cache>
struct gathered_heads {
  static constexpr bool per_head_rows = Cache::per_head_rows;
  Cache shard;
  int total = 0;
  std::size_t stride = 0;
  const std::int32_t* lens = nullptr;  // device, [num_seqs, total], or null

  KVEVICT_HOST_DEVICE int num_seqs() const { return shard.num_seqs(); }
  KVEVICT_HOST_DEVICE int num_kv_heads() const { return total; }
  __device__ int seq_len(int s, int h) const {
    return lens != nullptr ? lens[static_cast<std::size_t>(s) * total + h] : shard.seq_len(s, 0);
  }
};
template <class Cache>
KVEVICT_HOST_DEVICE std::size_t slab_tokens(const gathered_heads<Cache>& g) {
  return static_cast<std::size_t>(g.num_seqs()) * g.total * g.stride;
}
template <class Cache>
int max_row_cap(const gathered_heads<Cache>& g) {
  return static_cast<int>(g.stride);
}
template <class Cache>
__device__ std::size_t row_base(const gathered_heads<Cache>& g, int s, int h) {
  return (static_cast<std::size_t>(s) * g.total + h) * g.stride;
}

//! `score`'s checks: the cache's tables, every sequence's rules, and rows no longer than `stride`.
template <class Cache>
__global__ void score_check_kernel(Cache c, seq_rules rules, bool needs_window_queries, std::size_t stride,
                                   std::size_t items, int* word) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    if (i < table_check_items(c)) check_item(c, i, word);
    if (i < static_cast<std::size_t>(c.num_seqs())) {
      const int s = static_cast<int>(i);
      check_sequence_rules(c, rules, s, needs_window_queries, INT_MAX, word);
      for (int h = 0; h < c.num_kv_heads(); ++h)
        if (static_cast<std::size_t>(c.seq_len(s, h)) > stride) raise(word, ck_stride_short);
    }
  }
}

//! Copies the slab's scores into the caller's `[num_seqs, kv_heads, stride]` and rejects non-finite
//! ones (as `score(host, ...)` does); writes nothing after a failed check.
template <class Cache>
__global__ void score_copy_kernel(Cache c, const float* slab, float* out, std::size_t stride, int* word) {
  if (failed(word)) return;
  const std::size_t rows = static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads();
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < rows * stride;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::size_t r = i / stride, t = i % stride;
    const int s = static_cast<int>(r / c.num_kv_heads()), h = static_cast<int>(r % c.num_kv_heads());
    if (t >= static_cast<std::size_t>(c.seq_len(s, h))) continue;
    const float v = slab[row_base(c, s, h) + t];
    if (!isfinite(v)) raise(word, ck_score_non_finite);
    out[i] = v;
  }
}

//! `select`'s checks: the shard's tables, every sequence's rules over every head (the caller's
//! plan capacity), the gathered lengths against `stride` and the shard's own, finite scores.
template <class Cache>
__global__ void select_check_kernel(gathered_heads<Cache> all, int first, seq_rules rules, int capacity,
                                    const float* scores, std::size_t items, int* word) {
  const Cache& c = all.shard;
  const std::size_t elems = slab_tokens(all);
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    if (i < table_check_items(c)) check_item(c, i, word);
    if (i < static_cast<std::size_t>(c.num_seqs())) {
      const int s = static_cast<int>(i);
      for (int h = 0; h < all.total; ++h) {
        const int n = all.seq_len(s, h);
        if (n < 0) raise(word, ck_shard_len_range);
        if (n > 0 && static_cast<std::size_t>(n) > all.stride) raise(word, ck_stride_short);
      }
      for (int h = 0; h < c.num_kv_heads(); ++h)
        if (all.seq_len(s, first + h) != c.seq_len(s, h)) raise(word, ck_shard_lens_differ);
      check_sequence_rules(all, rules, s, false, capacity, word);
    }
    if (i < elems) {
      const std::size_t r = i / all.stride, t = i % all.stride;
      const int s = static_cast<int>(r / all.total), h = static_cast<int>(r % all.total);
      const int n = all.seq_len(s, h);
      if (n >= 0 && t < static_cast<std::size_t>(n) && !isfinite(scores[i])) raise(word, ck_gathered_non_finite);
    }
  }
}

//! The shard's rows of the whole layer's plan: row `s * kv_heads + h` from row `s * total + first + h`.
template <int = 0>
__global__ void select_rows_kernel(const_keep_plan whole, keep_plan out, int kv_heads, int total, int first,
                                          int rows, int* word) {
  if (failed(word)) return;
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const int w = (r / kv_heads) * total + first + r % kv_heads;
    const int n = whole.counts[w];
    for (int j = threadIdx.x; j < n; j += blockDim.x) out.row(r)[j] = whole.row(w)[j];
    if (threadIdx.x == 0) out.counts[r] = n;
  }
}

template <class Policy, class Cache, class T>
call_layout<2> score_layout(const Policy& p, const Cache& c, const signals<T>& sig) {
  call_layout<2> l{};
  l.req[0] = {0, sizeof(float) * slab_tokens(c)};
  l.req[1] = device_scorer<typename Policy::scorer_type>::request(p.scorer, c, sig, p.selector.window);
  return l;
}

//! Agents: 0 the whole layer's plan (`stride` entries a row), 1 the granularity.
template <class Policy, class Cache>
call_layout<2> select_layout(const Policy& p, const gathered_heads<Cache>& all) {
  call_layout<2> l{};
  const std::size_t rows = static_cast<std::size_t>(all.num_seqs()) * all.total;
  l.req[0] = {0, sizeof(std::int32_t) * rows * (all.stride + 1)};
  l.req[1] = device_granularity<typename Policy::granularity_type>::request(p.granularity, all);
  return l;
}

//! The host-side checks of `select` (scalars only) and the gathered view.
template <class Policy, class Cache, class T>
status select_view(const Policy& p, const Cache& c, const signals<T>& sig, head_shard shard, std::size_t stride,
                   gathered_heads<Cache>* all) {
  detail::static_check_plan_types<Policy, Cache, T>();
  KVEVICT_TRY(check_device_shape(c));
  KVEVICT_TRY(detail::check_shard<Policy>(c, shard));
  if (stride < 1 || stride > static_cast<std::size_t>(INT_MAX))
    return make_error(errc::out_of_range, "stride", "must lie in [1, INT_MAX]");
  *all = gathered_heads<Cache>{c, shard.total_kv_heads, stride, shard.seq_lens};
  KVEVICT_TRY(p.selector.validate());
  if (sig.num_layers < 1) return make_error(errc::invalid_argument, "signals.num_layers", "must be >= 1");
  if (sig.layer < 0 || sig.layer >= sig.num_layers)
    return make_error(errc::out_of_range, "signals.layer", "must lie in [0, num_layers)");
  return device_granularity<typename Policy::granularity_type>::host_check(p.granularity, *all, sig);
}

}  // namespace cuda_backend

//! Bytes of device workspace `score(cuda, ...)` needs: the scores slab of `plan(cuda, ...)` and
//! the scorer's scratch (0 for a view the device shape checks reject).
template <class Policy, class Cache, class T>
std::size_t score_workspace_bytes(cuda_t, const Policy& p, const Cache& cache, const signals<T>& sig) {
  if (!cuda_backend::check_device_shape(cache).ok()) return 0;
  return cuda_backend::score_layout(p, cache, sig).total();
}

//! Token scores only, on the device: `scores[(seq * kv_heads + h) * stride + t]` for
//! `t < seq_len(seq, h)` (device memory), every sequence scored (none is kept whole here), as
//! `score(host, ...)` computes them up to float rounding (see `plan(cuda, ...)`). Reads the cache,
//! never writes it. Asynchronous on `exec.stream`; a row longer than `stride` or a non-finite score
//! is reported by `device_status(exec, workspace)`, and then no score is written.
template <class Policy, class Cache, class T>
status score(cuda_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, float* scores,
             std::size_t stride, void* workspace, std::size_t workspace_bytes) {
  using namespace cuda_backend;
  const plan_dispatch<Policy, Cache, T> d{p, cache, sig};
  KVEVICT_TRY(d.check_scalars());
  if (scores == nullptr) return make_error(errc::invalid_argument, "scores", "null output");
  if (stride < 1) return make_error(errc::buffer_too_small, "stride", "must be >= 1");
  const auto l = score_layout(p, cache, sig);
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, l.total()));
  const auto parts = l.carve(workspace);
  KVEVICT_TRY(reset_call(exec.stream, parts.word, parts.zero_bytes));
  const seq_rules rules = make_rules(p.selector, sig);
  const std::size_t items = std::max<std::size_t>(table_check_items(cache), static_cast<std::size_t>(cache.num_seqs()));
  score_check_kernel<<<grid_for(items), threads_per_block, 0, exec.stream>>>(
      cache, rules, detail::scorer_needs_window_queries<typename Policy::scorer_type>::value, stride, items,
      parts.word);
  KVEVICT_TRY(check_launch("score checks: kernel launch"));
  // Every sequence scored: no budget keeps one whole (the window and sinks are the selector's).
  seq_rules all_scored = rules;
  all_scored.pyramid = false;
  all_scored.src.entries = -1;
  all_scored.src.seq_budgets = nullptr;
  float* slab = static_cast<float*>(parts.plain[0]);
  KVEVICT_TRY(device_scorer<typename Policy::scorer_type>::enqueue(p.scorer, exec.stream, cache, sig, all_scored, slab,
                                                                   parts.zeroed[1], parts.plain[1], parts.word));
  const std::size_t elems = static_cast<std::size_t>(plan_rows(cache)) * stride;
  score_copy_kernel<<<grid_for(elems), threads_per_block, 0, exec.stream>>>(cache, slab, scores, stride, parts.word);
  return check_launch("score copy: kernel launch");
}

//! Plan capacity (entries per row) that suffices for `select(cuda, ...)` on a shard without
//! per-sequence budgets: the largest per-head budget of the whole layer, at most `stride`.
template <class Policy, class Cache>
int select_capacity(cuda_t, const Policy& p, const Cache& shard_cache, head_shard shard, std::size_t stride) {
  using budget = typename Policy::selector_type::budget_type;
  const int b = budget::max_budget(p.selector.budget.entries, shard.total_kv_heads > 0 ? shard.total_kv_heads : 1);
  const int cap = stride < static_cast<std::size_t>(INT_MAX) ? static_cast<int>(stride) : INT_MAX;
  (void)shard_cache;
  return b < cap ? (b > 1 ? b : 1) : (cap > 1 ? cap : 1);
}

//! Bytes of device workspace `select(cuda, ...)` needs: a plan of every head of the layer
//! (`stride` entries a row) and the granularity's scratch (0 when the scalar checks fail).
template <class Policy, class Cache, class T>
std::size_t select_workspace_bytes(cuda_t, const Policy& p, const Cache& shard_cache, const signals<T>& sig,
                                   head_shard shard, std::size_t stride) {
  cuda_backend::gathered_heads<Cache> all;
  if (!cuda_backend::select_view(p, shard_cache, sig, shard, stride, &all).ok()) return 0;
  return cuda_backend::select_layout(p, all).total();
}

//! Selects the shard's rows from the scores of every head of the layer, on the device, as
//! `select(host, ...)` does: row `seq * cache.num_kv_heads() + h` of `out` receives head
//! `first_head + h`'s kept positions; the same positions as `plan(host, ...)` for the same scores.
//! `scores[(seq * total_kv_heads + head) * stride + t]` and `shard.seq_lens` (`[num_seqs,
//! total_kv_heads]`, may be null for caches whose heads share a page table) are device memory.
//! Asynchronous on `exec.stream`; device-side checks go to `device_status(exec, workspace)`, and on
//! any error nothing is written to `out`.
template <class Policy, class Cache, class T>
status select(cuda_t exec, const Policy& p, const Cache& shard_cache, const signals<T>& sig, head_shard shard,
              const float* scores, std::size_t stride, keep_plan out, void* workspace, std::size_t workspace_bytes) {
  using namespace cuda_backend;
  static_assert(!Policy::selector_type::budget_type::per_head,
                "kvevict::cuda: per-head adaptive budgets on head shards have no CUDA implementation (select on "
                "kvevict::host; plan(cuda, ...) runs them on an unsharded layer)");
  gathered_heads<Cache> all;
  KVEVICT_TRY(select_view(p, shard_cache, sig, shard, stride, &all));
  if (scores == nullptr) return make_error(errc::invalid_argument, "scores", "null scores");
  KVEVICT_TRY(detail::check_plan_arrays(shard_cache, as_const(out)));
  if (out.capacity < select_capacity(exec, p, shard_cache, shard, stride))
    return make_error(errc::buffer_too_small, "plan.capacity", "smaller than select_capacity(cuda, policy, cache, shard, stride)");
  const auto l = select_layout(p, all);
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, l.total()));
  const auto parts = l.carve(workspace);
  KVEVICT_TRY(reset_call(exec.stream, parts.word, parts.zero_bytes));
  const seq_rules rules = make_rules(p.selector, sig);
  const std::size_t items = std::max({table_check_items(shard_cache), static_cast<std::size_t>(all.num_seqs()),
                                      slab_tokens(all)});
  select_check_kernel<<<grid_for(items), threads_per_block, 0, exec.stream>>>(all, shard.first_head, rules,
                                                                              out.capacity, scores, items, parts.word);
  KVEVICT_TRY(check_launch("select checks: kernel launch"));
  const int total_rows = all.num_seqs() * all.total;
  auto* whole_counts = static_cast<std::int32_t*>(parts.plain[0]);
  const keep_plan whole{whole_counts + total_rows, whole_counts, static_cast<int>(stride), total_rows};
  KVEVICT_TRY(device_granularity<typename Policy::granularity_type>::enqueue(
      p.granularity, exec.stream, all, sig, rules, scores, whole, parts.zeroed[1], parts.plain[1], parts.word));
  const int rows = plan_rows(shard_cache);
  select_rows_kernel<><<<grid_for(static_cast<std::size_t>(rows), 1), 128, 0, exec.stream>>>(
      as_const(whole), out, shard_cache.num_kv_heads(), all.total, shard.first_head, rows, parts.word);
  return check_launch("select rows: kernel launch");
}

}  // namespace kvevict

//! \file cuda/algorithm.cuh
//! Front doors on the CUDA backend: `plan`, `compact`, `evict` and their workspace sizes,
//! overloaded on `kvevict::cuda_t`. Same policies, caches and template parameters as the host;
//! every pointer inside the cache view, the signals, the plan and the result is device memory.
//!
//! Layers, as in CUB: the front doors check scalar arguments on the host and hand over to a
//! dispatch (`plan_dispatch`, `compact_dispatch`) that sizes and carves the workspace in one place
//! and enqueues the agents (scorer, granularity, compaction), each a few thin kernels. Checks of
//! device-resident tables (lengths, page ids, plan rows, per-sequence overrides, non-finite scores)
//! run on the device before anything is written and are read back with
//! `kvevict::device_status(exec, workspace)`. On any error the cache is left byte-for-byte
//! unchanged.
//!
//! Stream operations per call (no allocation, no synchronisation, no attribute query after the
//! first call on a device): one memset that zeroes the status word and every counter, one check
//! kernel, then the agents. `evict` with SnapKV on bf16 / fp16 keys (tensor-core scorer): memset,
//! checks (the plan's and the compaction's page marks), two scoring passes, the selection's first
//! pass (which pools), its second pass, its write, the compaction: 8. (The CUDA-core scorer, for
//! other element types and shapes, adds a merge launch: 9. `plan` alone: 7; `compact` alone: 3.)
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../algorithm/plan.hpp"
#include "../concepts.hpp"
#include "../granularity/token_level.hpp"
#include "../keep_plan.hpp"
#include "../policy/eviction_policy.hpp"
#include "../signals.hpp"
#include "blocks.cuh"
#include "compact.cuh"
#include "geometry.cuh"
#include "rules.cuh"
#include "scorers.cuh"
#include "select.cuh"

namespace kvevict {

//! Outputs of `compact(cuda, ...)` (device memory); see `cuda_backend::compact_outputs`.
using device_compact_result = cuda_backend::compact_outputs;

namespace cuda_backend {

//! The call's workspace: the status word and every agent's zeroed scratch first, so that one
//! memset resets them all, then the agents' plain scratch. Sized and carved by the same function.
template <int Agents>
struct call_layout {
  scratch_request req[Agents];

  detail::workspace_layout<1 + 2 * Agents> layout() const {
    detail::workspace_layout<1 + 2 * Agents> l{};
    l.sizes[0] = sizeof(int);
    for (int i = 0; i < Agents; ++i) {
      l.sizes[1 + i] = req[i].zeroed;
      l.sizes[1 + Agents + i] = req[i].plain;
    }
    return l;
  }
  std::size_t total() const { return layout().total(); }

  struct parts {
    int* word;
    void* zeroed[Agents];
    void* plain[Agents];
    std::size_t zero_bytes;  //!< from the word to the end of the last zeroed buffer
  };
  parts carve(void* workspace) const {
    const auto l = layout();
    void* p[1 + 2 * Agents];
    l.carve(workspace, p);
    parts out{};
    out.word = static_cast<int*>(p[0]);
    for (int i = 0; i < Agents; ++i) {
      out.zeroed[i] = p[1 + i];
      out.plain[i] = p[1 + Agents + i];
    }
    out.zero_bytes = static_cast<std::size_t>(static_cast<char*>(p[Agents]) - static_cast<char*>(p[0])) +
                     detail::align_up(l.sizes[Agents]);
    return out;
  }
};

//! The plan's checks of the tables and of every sequence's rules, one kernel; for `evict`, also the
//! compaction's page marks (`seen`, null for `plan` alone), so that the compaction needs no check
//! kernel of its own.
template <class Cache>
__global__ void plan_check_kernel(Cache c, seq_rules rules, bool needs_window_queries, int capacity,
                                  std::size_t items, int* seen, int* word) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    if (i < table_check_items(c)) check_item(c, i, word);
    if (i < static_cast<std::size_t>(c.num_seqs()))
      check_sequence_rules(c, rules, static_cast<int>(i), needs_window_queries, capacity, word);
    if (seen != nullptr) mark_listed_page(c, i, seen, word);
  }
}

//! Problem state of one `plan` (or the plan half of `evict`): the scores slab, the scorer and the
//! granularity agents.
template <class Policy, class Cache, class T>
struct plan_dispatch {
  using scorer_agent = device_scorer<typename Policy::scorer_type>;
  using granularity_agent = device_granularity<typename Policy::granularity_type>;
  const Policy& p;
  const Cache& c;
  const signals<T>& sig;

  using deferred_pool = typename deferred_pooling<typename Policy::scorer_type>::pool;
  //! Whether the selection reads the scorer's plain scratch (its unpooled scores, when the
  //! selection's first pass pools them). Otherwise the scorer has finished with its plain scratch
  //! when the selection starts, in stream order, and the two agents share one buffer.
  //! Ada-KV's per-head budgets: allocated on the device before a token-level top-k.
  static constexpr bool per_head_budget = Policy::selector_type::budget_type::per_head;
  static_assert(!per_head_budget || std::is_same_v<typename Policy::granularity_type, token_level>,
                "kvevict::cuda: per-head adaptive budgets run with token_level selection on the device (plan "
                "block granularities with per-head budgets on kvevict::host)");
  //! (Not with per-head budgets: their allocation reads the pooled scores before the top-k.)
  static constexpr bool selection_reads_scorer =
      granularity_agent::fuses_pooling && deferred_pool::enabled && !per_head_budget;

  //! Agents: 0 the scores slab, 1 the scorer, 2 the granularity (its plain scratch in agent 1's
  //! when the two can share it: see `selection_reads_scorer`).
  void requests(scratch_request* req) const {
    req[0] = {0, sizeof(float) * slab_tokens(c)};
    req[1] = scorer_agent::request(p.scorer, c, sig, p.selector.window);
    req[2] = granularity_agent::request(p.granularity, c, per_head_budget);
    if constexpr (!selection_reads_scorer) {
      req[1].plain = req[1].plain > req[2].plain ? req[1].plain : req[2].plain;
      req[2].plain = 0;
    }
  }
  status check_scalars() const {
    detail::static_check_plan_types<Policy, Cache, T>();
    KVEVICT_TRY(check_device_shape(c));  // the scales too: finite and positive
    KVEVICT_TRY(p.selector.validate());
    if (sig.num_layers < 1) return make_error(errc::invalid_argument, "signals.num_layers", "must be >= 1");
    if (sig.layer < 0 || sig.layer >= sig.num_layers)
      return make_error(errc::out_of_range, "signals.layer", "must lie in [0, num_layers)");
    KVEVICT_TRY(granularity_agent::host_check(p.granularity, c, sig));
    return scorer_agent::host_check(p.scorer, c, sig, p.selector.window);
  }
  //! Checks, scoring, selection (after the call's memset). `page_marks`: the compaction's page
  //! marks when `evict` compacts after the plan (null for `plan`).
  status enqueue(cudaStream_t st, keep_plan out, int* word, void* const* zeroed, void* const* plain,
                 int* page_marks = nullptr) const {
    const seq_rules rules = make_rules(p.selector, sig);
    std::size_t items = std::max<std::size_t>(table_check_items(c), static_cast<std::size_t>(c.num_seqs()));
    if (page_marks != nullptr) items = std::max(items, page_mark_items(c));
    plan_check_kernel<<<grid_for(items), threads_per_block, 0, st>>>(
        c, rules, detail::scorer_needs_window_queries<typename Policy::scorer_type>::value, out.capacity, items,
        page_marks, word);
    KVEVICT_TRY(check_launch("plan checks: kernel launch"));
    float* scores = static_cast<float*>(plain[0]);
    if constexpr (selection_reads_scorer) {  // the selection's first pass pools
      const float* raw = nullptr;
      KVEVICT_TRY(scorer_agent::enqueue_unpooled(p.scorer, st, c, sig, rules, scores, zeroed[1], plain[1], word, raw));
      return granularity_agent::enqueue(p.granularity, st, c, sig, rules, scores, out, zeroed[2], plain[2], word,
                                        topk_source<deferred_pool>{raw, scores, p.scorer.pool_kernel});
    } else {  // one plain buffer, the scorer's first, then the selection's
      KVEVICT_TRY(scorer_agent::enqueue(p.scorer, st, c, sig, rules, scores, zeroed[1], plain[1], word));
      return granularity_agent::enqueue(p.granularity, st, c, sig, rules, scores, out, zeroed[2], plain[1], word);
    }
  }
};

//! Problem state of one `compact` (or the compaction half of `evict`).
template <class Cache>
struct compact_dispatch {
  const Cache& c;
  const_keep_plan plan;

  scratch_request request() const {
    const compact_layout<Cache> l(c);
    return {l.zeroed, l.plain};
  }
  status check_scalars(const compact_outputs& out) const {
    static_assert(is_paged_kv_cache_v<Cache>,
                  "kvevict: Cache does not model the paged KV cache contract (see concepts.hpp)");
    static_assert(is_mutable_cache_v<Cache>,
                  "kvevict: compact moves K and V in place: pass a view over mutable keys and values (a view over "
                  "const elements serves plan only)");
    KVEVICT_TRY(check_device_shape(c));
    KVEVICT_TRY(detail::check_plan_arrays(c, plan));
    KVEVICT_TRY(detail::check_new_lens(c, out.new_lens, out.new_lens_capacity));
    if (out.num_freed == nullptr) return make_error(errc::invalid_argument, "result.num_freed", "null output");
    if (out.freed_capacity < 0) return make_error(errc::invalid_argument, "result.freed_capacity", "must be >= 0");
    if (out.freed_capacity > 0 && out.freed_pages == nullptr)
      return make_error(errc::invalid_argument, "result.freed_pages", "null output with a positive capacity");
    return ok_status();
  }
};

//! One memset over the word and every zeroed buffer.
inline status reset_call(cudaStream_t st, int* word, std::size_t bytes) {
  return check(cudaMemsetAsync(word, 0, bytes, st), "call reset: cudaMemsetAsync");
}

}  // namespace cuda_backend

//! Bytes of device workspace `plan(cuda, ...)` needs: 4 bytes per token the cache's tables can
//! hold per KV head (block tables: `num_seqs x block_table_stride x page_size`; CSR tables:
//! `num_pages x page_size`), plus the scorer's and the selection's scratch. Computed on the host
//! from the view's scalars; reads no device memory.
template <class Policy, class Cache, class T>
std::size_t plan_workspace_bytes(cuda_t, const Policy& p, const Cache& cache, const signals<T>& sig) {
  if (!cuda_backend::check_device_shape(cache).ok()) return 0;
  cuda_backend::call_layout<3> l{};
  cuda_backend::plan_dispatch<Policy, Cache, T>{p, cache, sig}.requests(l.req);
  return l.total();
}

//! Plan capacity (entries per row) that suffices for `plan(cuda, ...)` without per-sequence
//! budgets: the largest per-head budget, at most a row's token capacity. (With `seq_budgets`, use
//! the largest override; a too-small capacity is reported by `device_status`.)
template <class Policy, class Cache>
int plan_capacity(cuda_t, const Policy& p, const Cache& cache) {
  using budget = typename Policy::selector_type::budget_type;
  const int b = budget::max_budget(p.selector.budget.entries, cache.num_kv_heads());
  const int cap = cuda_backend::max_row_cap(cache);
  return b < cap ? (b > 1 ? b : 1) : (cap > 1 ? cap : 1);
}

//! Plans eviction on the device: row `seq * kv_heads + h` of `out` (device memory) receives the
//! sorted kept positions, exactly `min(budget, seq_len)` of them, protected sinks and window
//! included; the same positions as `plan(host, ...)` for the same scores (ties to the lower
//! position). Window-attention scores are computed in a different summation order than on the host
//! (and on tensor cores for bf16 / fp16 keys), so they agree with the host's to float rounding;
//! the plans agree except where two scores are that close.
//!
//! Asynchronous on `exec.stream`; no allocation, no synchronisation, graph-capturable. Returns
//! scalar-argument errors at once; device-side checks go to `device_status(exec, workspace)`.
template <class Policy, class Cache, class T>
status plan(cuda_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan out, void* workspace,
            std::size_t workspace_bytes) {
  const cuda_backend::plan_dispatch<Policy, Cache, T> d{p, cache, sig};
  KVEVICT_TRY(d.check_scalars());
  KVEVICT_TRY(detail::check_plan_arrays(cache, as_const(out)));
  if (out.capacity < 1) return make_error(errc::buffer_too_small, "plan.capacity", "must be >= 1");
  cuda_backend::call_layout<3> l{};
  d.requests(l.req);
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, l.total()));
  const auto parts = l.carve(workspace);
  KVEVICT_TRY(cuda_backend::reset_call(exec.stream, parts.word, parts.zero_bytes));
  return d.enqueue(exec.stream, out, parts.word, parts.zeroed, parts.plain);
}

//! Bytes of device workspace `compact(cuda, ...)` needs: an int per page and per 64 tokens a row's
//! table can hold, and a few per row.
template <class Cache>
std::size_t compact_workspace_bytes(cuda_t, const Cache& cache) {
  if (!cuda_backend::check_device_shape(cache).ok()) return 0;
  cuda_backend::call_layout<1> l{};
  l.req[0] = cuda_backend::compact_dispatch<Cache>{cache, const_keep_plan{}}.request();
  return l.total();
}

//! Compacts the cache in place on the device, as `compact(host, ...)` does: kept K and V move to
//! slots `0 .. count-1` in order, hazard-free (see cuda/compact.cuh), no K/V-sized scratch; writes
//! the new lengths, the freed page ids and their number to `out` (device memory). Validates the
//! plan and the tables on the device first; on any error nothing is written (`device_status`).
template <class Cache>
status compact(cuda_t exec, const Cache& cache, const_keep_plan plan, const device_compact_result& out,
               void* workspace, std::size_t workspace_bytes) {
  const cuda_backend::compact_dispatch<Cache> d{cache, plan};
  KVEVICT_TRY(d.check_scalars(out));
  cuda_backend::call_layout<1> l{};
  l.req[0] = d.request();
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, l.total()));
  const auto parts = l.carve(workspace);
  KVEVICT_TRY(cuda_backend::reset_call(exec.stream, parts.word, parts.zero_bytes));
  return cuda_backend::enqueue_compact_agent(exec.stream, cache, plan, out, true, parts.zeroed[0], parts.word);
}

//! Workspace bytes for `evict(cuda, ...)` (the plan's and the compaction's scratch side by side).
template <class Policy, class Cache, class T>
std::size_t evict_workspace_bytes(cuda_t, const Policy& p, const Cache& cache, const signals<T>& sig) {
  if (!cuda_backend::check_device_shape(cache).ok()) return 0;
  cuda_backend::call_layout<4> l{};
  cuda_backend::plan_dispatch<Policy, Cache, T>{p, cache, sig}.requests(l.req);
  l.req[3] = cuda_backend::compact_dispatch<Cache>{cache, const_keep_plan{}}.request();
  return l.total();
}

//! `plan` then `compact` on one stream and one workspace: when the plan's device checks fail, the
//! compaction writes nothing.
template <class Policy, class Cache, class T>
status evict(cuda_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan kept,
             const device_compact_result& out, void* workspace, std::size_t workspace_bytes) {
  const cuda_backend::plan_dispatch<Policy, Cache, T> d{p, cache, sig};
  const cuda_backend::compact_dispatch<Cache> cd{cache, as_const(kept)};
  KVEVICT_TRY(d.check_scalars());
  KVEVICT_TRY(cd.check_scalars(out));
  if (kept.capacity < 1) return make_error(errc::buffer_too_small, "plan.capacity", "must be >= 1");
  cuda_backend::call_layout<4> l{};
  d.requests(l.req);
  l.req[3] = cd.request();
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, l.total()));
  const auto parts = l.carve(workspace);
  KVEVICT_TRY(cuda_backend::reset_call(exec.stream, parts.word, parts.zero_bytes));
  KVEVICT_TRY(d.enqueue(exec.stream, kept, parts.word, parts.zeroed, parts.plain,
                        cuda_backend::compact_layout<Cache>(cache).seen(parts.zeroed[3])));
  return cuda_backend::enqueue_compact_agent(exec.stream, cache, as_const(kept), out, false, parts.zeroed[3],
                                             parts.word);
}

}  // namespace kvevict

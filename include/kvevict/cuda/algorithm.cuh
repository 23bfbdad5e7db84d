//! \file cuda/algorithm.cuh
//! Front doors on the CUDA backend: `plan`, `compact`, `evict` and their workspace sizes,
//! overloaded on `kvevict::cuda_t`. Same policies, caches and template parameters as the host;
//! every pointer inside the cache view, the signals, the plan and the result is device memory.
//!
//! Checks: scalar arguments (shapes, the selector, null pointers) are checked on the host and
//! returned at once; checks of device-resident tables (lengths, page ids, plan rows, per-sequence
//! overrides, non-finite scores) run on the device before anything is written and are read back
//! with `kvevict::device_status(exec, workspace)`. On any error the cache is left byte-for-byte
//! unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cub/device/device_scan.cuh>

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

//! Outputs of `compact(cuda, ...)`, all device memory: new lengths per (sequence, KV head), the
//! freed page ids in (sequence, head, logical-page) order, and their number (one int).
//! Each array carries its capacity, checked on the host before anything is enqueued.
struct device_compact_result {
  std::int32_t* new_lens = nullptr;     // [new_lens_capacity]
  int new_lens_capacity = 0;            //!< entries of new_lens (>= plan_rows(cache))
  std::int32_t* freed_pages = nullptr;  // [freed_capacity]
  int freed_capacity = 0;               //!< entries of freed_pages (checked on the device against the pages freed)
  std::int32_t* num_freed = nullptr;    // [1]
};

namespace cuda_backend {

template <class Policy, class Cache, class T>
detail::workspace_layout<4> plan_layout(const Policy& p, const Cache& c, const signals<T>& sig) {
  return detail::workspace_layout<4>{
      {sizeof(int), sizeof(float) * slab_tokens(c),
       device_scorer<typename Policy::scorer_type>::scratch_bytes(p.scorer, c, sig, p.selector.window),
       device_granularity<typename Policy::granularity_type>::scratch_bytes(p.granularity, c)}};
}

template <class Policy, class Cache, class T>
status check_plan_scalars(const Policy& p, const Cache& c, const signals<T>& sig) {
  detail::static_check_plan_types<Policy, Cache, T>();
  KVEVICT_TRY(check_device_shape(c));
  KVEVICT_TRY(p.selector.validate());
  if (sig.num_layers < 1) return make_error(errc::invalid_argument, "signals.num_layers", "must be >= 1");
  if (sig.layer < 0 || sig.layer >= sig.num_layers)
    return make_error(errc::out_of_range, "signals.layer", "must lie in [0, num_layers)");
  KVEVICT_TRY(device_granularity<typename Policy::granularity_type>::host_check(p.granularity, c, sig));
  return device_scorer<typename Policy::scorer_type>::host_check(p.scorer, c, sig, p.selector.window);
}

//! Enqueues the plan: table and rule checks (fresh status word), scoring, selection.
template <class Policy, class Cache, class T>
status enqueue_plan(cudaStream_t st, const Policy& p, const Cache& c, const signals<T>& sig, keep_plan out,
                    void* workspace) {
  const auto layout = plan_layout(p, c, sig);
  void* buf[4];
  layout.carve(workspace, buf);
  int* word = static_cast<int*>(buf[0]);
  float* scores = static_cast<float*>(buf[1]);
  const seq_rules rules = make_rules(p.selector, sig);
  KVEVICT_TRY(enqueue_cache_checks(st, c, word));
  check_rules_kernel<<<grid_for(static_cast<std::size_t>(c.num_seqs())), threads_per_block, 0, st>>>(
      c, rules, detail::scorer_needs_window_queries<typename Policy::scorer_type>::value, out.capacity, word);
  KVEVICT_TRY(check_launch("plan checks: kernel launch"));
  KVEVICT_TRY(device_scorer<typename Policy::scorer_type>::enqueue(p.scorer, st, c, sig, rules, scores, buf[2], word));
  return device_granularity<typename Policy::granularity_type>::enqueue(p.granularity, st, c, sig, rules, scores, out,
                                                                        buf[3], word);
}

template <class Cache>
struct compact_scratch {
  std::size_t rows, tiles_bound, scan_bytes;
  detail::workspace_layout<9> layout;  // word, tiles, tile offsets, freed, freed offsets, seen, flags, ticket, cub

  explicit compact_scratch(const Cache& c) {
    rows = static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads();
    tiles_bound = slab_tokens(c) / compact_tile + rows + 1;
    scan_bytes = 0;
    cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int*>(nullptr), static_cast<int*>(nullptr),
                                  static_cast<int>(rows + 1));
    const std::size_t ints = sizeof(int) * (rows + 1);
    layout = detail::workspace_layout<9>{{sizeof(int), ints, ints, ints, ints,
                                          sizeof(int) * static_cast<std::size_t>(c.num_pages() > 0 ? c.num_pages() : 1),
                                          sizeof(int) * tiles_bound, sizeof(int), scan_bytes}};
  }
};

template <class Cache>
status check_compact_scalars(const Cache& c, const_keep_plan plan, const device_compact_result& out) {
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

template <class Cache>
status enqueue_compact(cudaStream_t st, const Cache& c, const_keep_plan plan, const device_compact_result& out,
                       void* workspace, bool reset) {
  using T = typename Cache::value_type;
  const compact_scratch<Cache> cs(c);
  void* buf[9];
  cs.layout.carve(workspace, buf);
  int* word = static_cast<int*>(buf[0]);
  int* tiles = static_cast<int*>(buf[1]);
  int* tile_off = static_cast<int*>(buf[2]);
  int* freed = static_cast<int*>(buf[3]);
  int* freed_off = static_cast<int*>(buf[4]);
  int* seen = static_cast<int*>(buf[5]);
  int* flags = static_cast<int*>(buf[6]);
  int* ticket = static_cast<int*>(buf[7]);
  const int rows = static_cast<int>(cs.rows);
  if (reset) {
    KVEVICT_TRY(enqueue_cache_checks(st, c, word));
  }
  KVEVICT_TRY(check(cudaMemsetAsync(tiles, 0, sizeof(int) * (cs.rows + 1), st), "compact: cudaMemsetAsync"));
  KVEVICT_TRY(check(cudaMemsetAsync(freed, 0, sizeof(int) * (cs.rows + 1), st), "compact: cudaMemsetAsync"));
  KVEVICT_TRY(
      check(cudaMemsetAsync(seen, 0, sizeof(int) * static_cast<std::size_t>(c.num_pages() > 0 ? c.num_pages() : 1), st),
            "compact: cudaMemsetAsync"));
  KVEVICT_TRY(check(cudaMemsetAsync(flags, 0, sizeof(int) * cs.tiles_bound, st), "compact: cudaMemsetAsync"));
  KVEVICT_TRY(check(cudaMemsetAsync(ticket, 0, sizeof(int), st), "compact: cudaMemsetAsync"));
  const std::size_t plan_items = cs.rows * static_cast<std::size_t>(plan.capacity > 0 ? plan.capacity : 1);
  check_plan_kernel<<<grid_for(plan_items), threads_per_block, 0, st>>>(c, plan, tiles, freed, word);
  KVEVICT_TRY(check_launch("compact checks: kernel launch"));
  if (frees_pages<Cache>::value) {
    const std::size_t items = listed_page_items(c);
    check_pages_kernel<<<grid_for(items), threads_per_block, 0, st>>>(c, items, seen, word);
    KVEVICT_TRY(check_launch("compact page checks: kernel launch"));
  }
  std::size_t scan_bytes = cs.scan_bytes;
  KVEVICT_TRY(check(cub::DeviceScan::ExclusiveSum(buf[8], scan_bytes, freed, freed_off, rows + 1, st),
                    "compact: cub::DeviceScan"));
  scan_bytes = cs.scan_bytes;
  KVEVICT_TRY(check(cub::DeviceScan::ExclusiveSum(buf[8], scan_bytes, tiles, tile_off, rows + 1, st),
                    "compact: cub::DeviceScan"));
  check_freed_kernel<<<1, 1, 0, st>>>(freed_off, rows, out.freed_capacity, out.num_freed, word);
  KVEVICT_TRY(check_launch("compact checks: kernel launch"));

  // Every row starts 16-byte aligned when the row size and the bases are multiples of 16 bytes.
  const std::size_t row_bytes = c.head_dim() * sizeof(T);
  const bool vec = row_bytes % 16 == 0 && reinterpret_cast<std::uintptr_t>(c.k) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(c.v) % 16 == 0;
  int dev = 0, sms = 1;
  KVEVICT_TRY(check(cudaGetDevice(&dev), "compact: cudaGetDevice"));
  KVEVICT_TRY(
      check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "compact: cudaDeviceGetAttribute"));
  const unsigned blocks = static_cast<unsigned>(sms) * 8u;
  const std::size_t smem = static_cast<std::size_t>(compact_tile) * 2 * row_bytes;
  if (smem > 48 * 1024) {
    if (vec)
      KVEVICT_TRY(check(cudaFuncSetAttribute(compact_kernel<uint4, Cache>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)),
                        "compact: cudaFuncSetAttribute"));
    else
      KVEVICT_TRY(check(cudaFuncSetAttribute(compact_kernel<T, Cache>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)),
                        "compact: cudaFuncSetAttribute"));
  }
  if (vec)
    compact_kernel<uint4><<<blocks, compact_threads, smem, st>>>(c, plan, tile_off, ticket, flags, word);
  else
    compact_kernel<T><<<blocks, compact_threads, smem, st>>>(c, plan, tile_off, ticket, flags, word);
  KVEVICT_TRY(check_launch("compaction: kernel launch"));
  finish_compact_kernel<<<rows, 128, 0, st>>>(c, plan, freed_off, out.new_lens, out.freed_pages, word);
  return check_launch("compaction: kernel launch");
}

}  // namespace cuda_backend

//! Bytes of device workspace `plan(cuda, ...)` needs: 4 bytes per token the cache's tables can
//! hold per KV head (block tables: `num_seqs x block_table_stride x page_size`; CSR tables:
//! `num_pages x page_size`), plus the scorer's scratch (window attention: a float pair per window
//! query and 512 keys). Computed on the host from the view's scalars; reads no device memory.
template <class Policy, class Cache, class T>
std::size_t plan_workspace_bytes(cuda_t, const Policy& p, const Cache& cache, const signals<T>& sig) {
  if (!cuda_backend::check_device_shape(cache).ok()) return 0;
  return cuda_backend::plan_layout(p, cache, sig).total();
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
  KVEVICT_TRY(cuda_backend::check_plan_scalars(p, cache, sig));
  KVEVICT_TRY(detail::check_plan_arrays(cache, as_const(out)));
  if (out.capacity < 1) return make_error(errc::buffer_too_small, "plan.capacity", "must be >= 1");
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, cuda_backend::plan_layout(p, cache, sig).total()));
  return cuda_backend::enqueue_plan(exec.stream, p, cache, sig, out, workspace);
}

//! Bytes of device workspace `compact(cuda, ...)` needs (a few ints per row, page and 32 tokens).
template <class Cache>
std::size_t compact_workspace_bytes(cuda_t, const Cache& cache) {
  if (!cuda_backend::check_device_shape(cache).ok()) return 0;
  return cuda_backend::compact_scratch<Cache>(cache).layout.total();
}

//! Compacts the cache in place on the device, as `compact(host, ...)` does: kept K and V move to
//! slots `0 .. count-1` in order, hazard-free (see cuda/compact.cuh), no K/V-sized scratch; writes
//! the new lengths, the freed page ids and their number to `out` (device memory). Validates the
//! plan and the tables on the device first; on any error nothing is written (`device_status`).
template <class Cache>
status compact(cuda_t exec, const Cache& cache, const_keep_plan plan, const device_compact_result& out, void* workspace,
               std::size_t workspace_bytes) {
  KVEVICT_TRY(cuda_backend::check_compact_scalars(cache, plan, out));
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, compact_workspace_bytes(exec, cache)));
  return cuda_backend::enqueue_compact(exec.stream, cache, plan, out, workspace, true);
}

//! Workspace bytes for `evict(cuda, ...)`.
template <class Policy, class Cache, class T>
std::size_t evict_workspace_bytes(cuda_t exec, const Policy& p, const Cache& cache, const signals<T>& sig) {
  const std::size_t a = plan_workspace_bytes(exec, p, cache, sig), b = compact_workspace_bytes(exec, cache);
  return a > b ? a : b;
}

//! `plan` then `compact` on one stream and one workspace: when the plan's device checks fail, the
//! compaction writes nothing.
template <class Policy, class Cache, class T>
status evict(cuda_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan kept,
             const device_compact_result& out, void* workspace, std::size_t workspace_bytes) {
  KVEVICT_TRY(cuda_backend::check_plan_scalars(p, cache, sig));
  KVEVICT_TRY(cuda_backend::check_compact_scalars(cache, as_const(kept), out));
  if (kept.capacity < 1) return make_error(errc::buffer_too_small, "plan.capacity", "must be >= 1");
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, evict_workspace_bytes(exec, p, cache, sig)));
  KVEVICT_TRY(cuda_backend::enqueue_plan(exec.stream, p, cache, sig, kept, workspace));
  return cuda_backend::enqueue_compact(exec.stream, cache, as_const(kept), out, workspace, false);
}

}  // namespace kvevict

// One call as both backends see it: a plain struct of the tensors' pointers and shapes (no nanobind,
// no CUDA header), which ext.cpp fills from the Python arguments after checking them, and from which
// the host half (bind_<layout>.cpp) and the CUDA half (device_<layout>.cu, compiled by nvcc when the package
// is built with KVEVICT_PY_CUDA) build the library's view, signals and policy.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.hpp"

namespace kvevict_py {

enum class layout_id { dense, block_table, csr };
enum class dtype_id { f32, f16, bf16, i32, other };

//! One call: every pointer on one device (the CPU, or one GPU), checked by ext.cpp.
struct call_desc {
  layout_id layout = layout_id::dense;
  dtype_id dtype = dtype_id::f32;
  void* k = nullptr;
  void* v = nullptr;
  //! dense: seq_lens; block table: block_table, seq_lens; CSR: indptr, indices, last_page_len
  const std::int32_t* t0 = nullptr;
  const std::int32_t* t1 = nullptr;
  const std::int32_t* t2 = nullptr;
  std::int64_t k_shape[4] = {0, 0, 0, 0};
  int num_seqs = 0;
  int table_stride = 0;      //!< block table: entries per row
  std::int64_t indices = 0;  //!< CSR: entries of `indices`

  // signals
  const void* queries = nullptr;  //!< in the cache's dtype
  int num_q_heads = 0, query_rows = 0;
  const float* attention_sums = nullptr;
  int sums_stride = 0;
  const std::int32_t* token_ids = nullptr;
  int token_ids_stride = 0;
  const std::int32_t *seq_budgets = nullptr, *seq_sinks = nullptr, *seq_windows = nullptr;
  int layer = 0, num_layers = 1;

  // the plan: written by a plan, read by a compaction
  std::int32_t* positions = nullptr;
  std::int32_t* counts = nullptr;
  int plan_capacity = 0, plan_rows = 0;

  // the compaction's outputs
  std::int32_t* new_lens = nullptr;
  int new_lens_capacity = 0;
  std::int32_t* freed_pages = nullptr;
  int freed_capacity = 0;
  std::int32_t* num_freed = nullptr;

  // CUDA only
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  void* stream = nullptr;  //!< cudaStream_t

  int threads = 0;  //!< host only: threads that score the heads (0: every hardware thread)
};

//! Calls `f(T{})` for the element type `id` (float, kvevict::half or kvevict::bfloat16).
template <class F>
decltype(auto) with_dtype(dtype_id id, F&& f) {
  if (id == dtype_id::f16) return f(kvevict::half{});
  if (id == dtype_id::bf16) return f(kvevict::bfloat16{});
  return f(float{});
}

//! Calls `f(view)` with the library's view of the cache in `c`, of layout L, over elements of type T.
template <layout_id L, class T, class F>
decltype(auto) with_layout_view(const call_desc& c, F&& f) {
  T* k = static_cast<T*>(c.k);
  T* v = static_cast<T*>(c.v);
  const auto d = [&](int i) { return static_cast<int>(c.k_shape[i]); };
  if constexpr (L == layout_id::dense)
    return f(kvevict::dense_cache<T>{k, v, c.t0, c.num_seqs, d(1), d(2), d(3)});
  else if constexpr (L == layout_id::block_table)
    return f(kvevict::block_table_cache<T>{k, v, c.t0, c.t1, c.num_seqs, c.table_stride, d(0), d(1), d(2), d(3)});
  else
    return f(kvevict::csr_page_cache<T>{k, v, c.t0, c.t1, c.t2, c.num_seqs, d(0), d(1), d(2), d(3)});
}

//! The same for the layout `c` names.
template <class T, class F>
decltype(auto) with_view(const call_desc& c, F&& f) {
  if (c.layout == layout_id::dense) return with_layout_view<layout_id::dense, T>(c, f);
  if (c.layout == layout_id::block_table) return with_layout_view<layout_id::block_table, T>(c, f);
  return with_layout_view<layout_id::csr, T>(c, f);
}

//! The library's signals of the call.
template <class T>
kvevict::signals<T> signals_of(const call_desc& c) {
  kvevict::signals<T> s;
  s.queries = static_cast<const T*>(c.queries);
  s.num_q_heads = c.num_q_heads;
  s.query_rows = c.query_rows;
  s.attention_sums = c.attention_sums;
  s.sums_stride = c.sums_stride;
  s.token_ids = c.token_ids;
  s.token_ids_stride = c.token_ids_stride;
  s.seq_budgets = c.seq_budgets;
  s.seq_sinks = c.seq_sinks;
  s.seq_windows = c.seq_windows;
  s.layer = c.layer;
  s.num_layers = c.num_layers;
  return s;
}

//! What the caller allocates for a call (on the device, in its own allocator).
struct device_sizes {
  int rows = 0;                     //!< plan rows and new lengths: sequences x KV heads
  int capacity = 0;                 //!< plan entries per row (a plan)
  int max_freed = 0;                //!< freed page ids at most (a compaction)
  std::size_t workspace_bytes = 0;  //!< of the call
};

// ---- the CUDA half (device.cuh; instantiated for layout L in device_<layout>.cu) ----

//! Sizes of the call that `c` describes (`do_plan` / `do_compact`). Runs the library's host-side
//! checks (throws `py_error` on a bad argument); reads at most the per-sequence budgets and CSR's
//! `indptr[num_seqs]` back from the device.
template <layout_id L>
device_sizes cuda_sizes(const config& cfg, const call_desc& c, bool do_plan, bool do_compact);

//! Enqueues plan, compact or evict (both) on `c.stream`, then waits for it and throws `py_error`
//! with the device-side checks' verdict; on any error nothing was written to the cache.
template <layout_id L>
void cuda_run(const config& cfg, const call_desc& c, bool do_plan, bool do_compact);

}  // namespace kvevict_py

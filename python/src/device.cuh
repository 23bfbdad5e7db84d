// The CUDA half of the binding (compiled by nvcc when the package is built with KVEVICT_PY_CUDA,
// one translation unit per cache layout: device_<layout>.cu): builds the library's cache view,
// signals and policy from a `call_desc` and runs the CUDA backend's front doors on the caller's
// stream and workspace. The host half (ext.cpp) has checked the tensors' devices, dtypes, shapes and
// contiguity; the library checks everything else, on the host before it enqueues anything and on
// the device before it writes.
#pragma once

#include <kvevict/cuda.cuh>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "call.hpp"

namespace kvevict_py {
namespace device_detail {

inline cudaStream_t stream_of(const call_desc& c) { return static_cast<cudaStream_t>(c.stream); }

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    fail(kvevict::errc::invalid_argument, "device", std::string(what) + ": " + cudaGetErrorString(e));
}

//! One int of device memory, read back (waits for the stream).
inline int read_int(const std::int32_t* p, cudaStream_t st) {
  int v = 0;
  check_cuda(cudaMemcpyAsync(&v, p, sizeof v, cudaMemcpyDeviceToHost, st), "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(st), "cudaStreamSynchronize");
  return v;
}

//! Calls `f(policy, cache, signals)` for the call `c` describes.
template <layout_id L, class F>
void with_call(const config& cfg, const call_desc& c, bool do_plan, F&& f) {
  with_dtype(c.dtype, [&](auto tag) {
    using T = decltype(tag);
    with_layout_view<L, T>(c, [&](const auto& cache) {
      const kvevict::signals<T> sig = signals_of<T>(c);
      if (!do_plan) return f(kvevict::streaming_llm{}, cache, sig);  // compact: no policy
      with_policy(cfg, [&](const auto& p) { f(p, cache, sig); });
    });
  });
}

//! The largest plan row a sequence can need with per-sequence budgets (read back from the device).
template <class Policy, class Cache>
int capacity_with_budgets(const Policy&, const Cache& cache, const std::int32_t* seq_budgets, cudaStream_t st) {
  using budget = typename Policy::selector_type::budget_type;
  std::vector<std::int32_t> b(static_cast<std::size_t>(std::max(cache.num_seqs(), 0)));
  if (!b.empty()) {
    check_cuda(cudaMemcpyAsync(b.data(), seq_budgets, b.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost, st),
               "cudaMemcpyAsync");
    check_cuda(cudaStreamSynchronize(st), "cudaStreamSynchronize");
  }
  const int row_cap = kvevict::cuda_backend::max_row_cap(cache);
  int cap = 1;
  for (std::int32_t x : b) cap = std::max(cap, std::min(row_cap, budget::max_budget(x, cache.num_kv_heads())));
  return cap;
}

//! The CUDA backend reads a segmenter's delimiter and sentence-end ids in its kernels, so they
//! must be device memory: the binding copies them to the front of the workspace (this many bytes,
//! a multiple of 256 so that the library's part keeps the allocation's alignment).
inline std::size_t ids_bytes(const config& cfg, bool do_plan) {
  if (!do_plan || (cfg.kind != "sentencekv" && cfg.kind != "sablock")) return 0;
  const std::size_t n = cfg.delimiter_ids.size() + cfg.sentence_ids.size();
  return (n * sizeof(std::int32_t) + 255) / 256 * 256;
}

//! `p` with its segmenter's ids pointing at their copies at `dev` (uploaded on `st`).
template <class Policy>
Policy with_device_ids(const Policy& p, const config& cfg, void* dev, cudaStream_t st) {
  Policy q = p;
  if constexpr (std::is_same_v<Policy, sentencekv_policy> || std::is_same_v<Policy, sablock_policy>) {
    std::vector<std::int32_t> ids(cfg.delimiter_ids);
    ids.insert(ids.end(), cfg.sentence_ids.begin(), cfg.sentence_ids.end());
    auto* d = static_cast<std::int32_t*>(dev);
    if (!ids.empty())  // from pageable memory: staged before the call returns
      check_cuda(cudaMemcpyAsync(d, ids.data(), ids.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice, st),
                 "cudaMemcpyAsync");
    const auto nd = cfg.delimiter_ids.size();
    q.granularity.segmenter.delimiter_ids = cfg.delimiter_ids.empty() ? nullptr : d;
    q.granularity.segmenter.sentence_ids = cfg.sentence_ids.empty() ? nullptr : d + nd;
  }
  return q;
}

}  // namespace device_detail

template <layout_id L>
device_sizes cuda_sizes(const config& cfg, const call_desc& c, bool do_plan, bool do_compact) {
  using namespace device_detail;
  if (L == layout_id::csr && c.num_seqs > 0 && read_int(c.t0 + c.num_seqs, stream_of(c)) > c.indices)
    fail(kvevict::errc::shape_mismatch, "indices", "must hold indptr[num_seqs] entries");
  device_sizes out;
  with_call<L>(cfg, c, do_plan, [&](const auto& p, const auto& cache, const auto& sig) {
    const auto exec = kvevict::cuda.on(stream_of(c));
    raise_if_error(kvevict::cuda_backend::check_device_shape(cache));
    out.rows = kvevict::plan_rows(cache);
    if (do_plan)
      out.capacity = sig.seq_budgets != nullptr ? capacity_with_budgets(p, cache, sig.seq_budgets, stream_of(c))
                                                : kvevict::plan_capacity(exec, p, cache);
    if (do_compact)
      out.max_freed = kvevict::frees_pages<std::decay_t<decltype(cache)>>::value ? cache.num_pages() : 0;
    out.workspace_bytes = do_plan && do_compact ? kvevict::evict_workspace_bytes(exec, p, cache, sig)
                          : do_plan             ? kvevict::plan_workspace_bytes(exec, p, cache, sig)
                                                : kvevict::compact_workspace_bytes(exec, cache);
    out.workspace_bytes += ids_bytes(cfg, do_plan);
  });
  return out;
}

template <layout_id L>
void cuda_run(const config& cfg, const call_desc& c, bool do_plan, bool do_compact) {
  using namespace device_detail;
  // The workspace holds the segmenter's ids first (ids_bytes), then the library's workspace.
  const std::size_t front = ids_bytes(cfg, do_plan);
  if (c.workspace_bytes < front) fail(kvevict::errc::invalid_argument, "workspace", "smaller than cuda_sizes asked");
  void* ws = static_cast<char*>(c.workspace) + front;
  const std::size_t ws_bytes = c.workspace_bytes - front;
  with_call<L>(cfg, c, do_plan, [&](const auto& p0, const auto& cache, const auto& sig) {
    const auto exec = kvevict::cuda.on(stream_of(c));
    const kvevict::keep_plan plan{c.positions, c.counts, c.plan_capacity, c.plan_rows};
    const kvevict::device_compact_result res{c.new_lens, c.new_lens_capacity, c.freed_pages, c.freed_capacity,
                                             c.num_freed};
    if (do_plan) {
      const auto p = with_device_ids(p0, cfg, c.workspace, stream_of(c));
      if (do_compact)
        raise_if_error(kvevict::evict(exec, p, cache, sig, plan, res, ws, ws_bytes));
      else
        raise_if_error(kvevict::plan(exec, p, cache, sig, plan, ws, ws_bytes));
    } else {
      raise_if_error(kvevict::compact(exec, cache, kvevict::as_const(plan), res, ws, ws_bytes));
    }
    raise_if_error(kvevict::device_status(exec, ws));
  });
}

}  // namespace kvevict_py

//! \file cuda/backend.cuh
//! The CUDA backend tag, device-side error reporting and launch helpers.
//!
//! Front doors take `kvevict::cuda.on(stream)`; everything they enqueue runs on that stream, in
//! stream order, with no allocation, no host synchronisation and no host copy (graph-capturable).
//! Checks that need the cache's device-resident tables (lengths, page ids, plan rows) run in a
//! validation kernel first: it records the first problem in a status word inside the caller's
//! workspace and every later kernel of the call returns at once when the word is set, so a
//! rejected call writes nothing to the cache. `kvevict::device_status` reads that word back.
#pragma once

#if !defined(__CUDACC__)
#error "kvevict/cuda headers need a CUDA compiler (nvcc); the host library is <kvevict/kvevict.hpp>"
#endif

#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>

#include "../backend.hpp"
#include "../detail/workspace.hpp"
#include "../status.hpp"

namespace kvevict {

//! The CUDA backend: kernels run on `stream` (the default stream unless `.on(s)` names one).
struct cuda_t {
  static constexpr bool is_backend_tag = true;
  cudaStream_t stream = nullptr;
  //! The same backend on another stream.
  cuda_t on(cudaStream_t s) const { return cuda_t{s}; }
};
inline constexpr cuda_t cuda{};

namespace cuda_backend {

//! Problems only the device can see (they depend on device-resident tables). Lower codes win
//! when several are found, so the reported problem does not depend on scheduling.
enum device_check : int {
  dc_seq_len_negative = 1,
  dc_table_row_too_short,
  dc_page_out_of_range,
  dc_indptr_start,
  dc_indptr_order,
  dc_indptr_total,
  dc_last_page_len,
  dc_dense_len,
  dc_seq_sinks,
  dc_seq_windows_range,
  dc_seq_budgets_small,
  dc_window_longer,
  dc_window_longer_override,
  dc_window_empty,
  dc_plan_capacity,
  dc_precomputed_stride,
  dc_sums_stride,
  dc_sums_non_finite,
  dc_token_ids_stride,
  dc_score_non_finite,
  dc_plan_count,
  dc_plan_uneven,
  dc_plan_position,
  dc_plan_order,
  dc_page_listed_twice,
  dc_freed_capacity,
  dc_count_,
};
template <class>
inline constexpr bool always_false = false;

//! The status word's value when nothing is wrong: 0, so the memset that zeroes a call's counters
//! resets it too. A problem `code` is stored as `dc_count_ - code`, so the largest stored value
//! (atomicMax) is the lowest code.
inline constexpr int no_problem = 0;

//! The status each device check code stands for (argument names as in the host backend).
struct device_check_entry {
  errc code;
  const char* argument;
  const char* detail;
};
inline constexpr device_check_entry device_checks[] = {
    {errc::ok, "", ""},                                                  // 0: unused
    {errc::out_of_range, "cache.seq_lens", "negative sequence length"},  // dc_seq_len_negative
    {errc::shape_mismatch, "cache.seq_lens",
     "sequence needs more pages than the block table row holds"},                       // dc_table_row_too_short
    {errc::out_of_range, "cache.block_table / cache.indices", "page id out of range"},  // dc_page_out_of_range
    {errc::invalid_argument, "cache.indptr", "indptr[0] must be 0"},                    // dc_indptr_start
    {errc::invalid_argument, "cache.indptr", "indptr must be non-decreasing"},          // dc_indptr_order
    {errc::out_of_range, "cache.indptr",
     "lists more pages than num_pages (the CUDA backend sizes its scratch by num_pages)"},  // dc_indptr_total
    {errc::out_of_range, "cache.last_page_len",
     "must lie in [1, page_size] for a sequence with pages"},                         // dc_last_page_len
    {errc::out_of_range, "cache.seq_lens", "length outside [0, capacity]"},           // dc_dense_len
    {errc::invalid_argument, "signals.seq_sinks", "must be >= 0"},                    // dc_seq_sinks
    {errc::out_of_range, "signals.seq_windows", "must lie in [0, selector.window]"},  // dc_seq_windows_range
    {errc::budget_too_small, "signals.seq_budgets",
     "below the sequence's protected tokens (sinks + window)"},  // dc_seq_budgets_small
    {errc::out_of_range, "selector.window",
     "longer than a sequence (its window queries must lie in it)"},  // dc_window_longer
    {errc::out_of_range, "signals.seq_windows",
     "longer than a sequence (its window queries must lie in it)"},  // dc_window_longer_override
    {errc::invalid_argument, "signals.seq_windows", "window attention needs at least one query"},  // dc_window_empty
    {errc::buffer_too_small, "plan.capacity", "smaller than a row's kept count"},                  // dc_plan_capacity
    {errc::shape_mismatch, "scorer.stride", "shorter than a sequence"},                     // dc_precomputed_stride
    {errc::shape_mismatch, "signals.sums_stride", "shorter than a sequence of the cache"},  // dc_sums_stride
    {errc::non_finite, "signals.attention_sums", "NaN or infinite attention sum"},          // dc_sums_non_finite
    {errc::shape_mismatch, "signals.token_ids_stride", "shorter than a sequence"},          // dc_token_ids_stride
    {errc::non_finite, "cache.k / signals.queries", "a token score is NaN or infinite"},    // dc_score_non_finite
    {errc::out_of_range, "plan.counts", "count outside [0, min(seq_len, capacity)]"},       // dc_plan_count
    {errc::shape_mismatch, "plan.counts",
     "heads of a sequence keep different counts; a shared page table needs a uniform budget"},  // dc_plan_uneven
    {errc::out_of_range, "plan.positions", "position outside the sequence"},                    // dc_plan_position
    {errc::invalid_argument, "plan.positions", "positions must be strictly increasing"},        // dc_plan_order
    {errc::invalid_argument, "cache",
     "a page is listed twice (shared pages must be copied before compaction)"},  // dc_page_listed_twice
    {errc::buffer_too_small, "result.freed_pages",
     "too small for the pages this compaction frees"},  // dc_freed_capacity
};
static_assert(sizeof(device_checks) / sizeof(device_checks[0]) == dc_count_, "one entry per device check");

inline status decode(int code) {
  if (code == no_problem) return ok_status();
  code = dc_count_ - code;
  if (code < 1 || code >= dc_count_)
    return make_error(errc::device_error, "workspace",
                      "the status word holds no known code (not a kvevict workspace?)");
  const device_check_entry& e = device_checks[code];
  return make_error(e.code, e.argument, e.detail);
}

//! Records a problem: the lowest code wins.
__device__ __forceinline__ void raise(int* word, int code) { atomicMax(word, dc_count_ - code); }
//! True when an earlier kernel of this call recorded a problem (one thread's view).
__device__ __forceinline__ bool failed(const int* word) {
  return *reinterpret_cast<const volatile int*>(word) != no_problem;
}
//! `failed` as one verdict for the whole block (read once, shared), for kernels that synchronise
//! their threads: another block may raise the word while this block's threads read it.
__device__ __forceinline__ bool block_failed(const int* word) {
  __shared__ int s_failed;
  __syncthreads();
  if (threadIdx.x == 0) s_failed = failed(word) ? 1 : 0;
  __syncthreads();
  return s_failed != 0;
}

inline status check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return ok_status();
  return make_error(errc::device_error, what, cudaGetErrorString(e));
}
//! Status of the last launch (configuration errors are reported at once, without synchronising).
inline status check_launch(const char* what) { return check(cudaGetLastError(), what); }

//! Scratch an agent (scorer, granularity, compaction) asks of the call's workspace: bytes the call
//! zeroes first, in the one memset that also resets the status word (counters, histograms, flags),
//! and bytes left as they are.
struct scratch_request {
  std::size_t zeroed = 0, plain = 0;
};

inline constexpr int threads_per_block = 256;
inline unsigned grid_for(std::size_t n, int per_block = threads_per_block, unsigned cap = 65535u * 32u) {
  const std::size_t g = (n + static_cast<std::size_t>(per_block) - 1) / static_cast<std::size_t>(per_block);
  return static_cast<unsigned>(g == 0 ? 1 : (g > cap ? cap : g));
}

//! The status word sits in the first 256 bytes of every kvevict CUDA workspace.
inline int* status_word(void* workspace) {
  std::uintptr_t p = reinterpret_cast<std::uintptr_t>(workspace);
  p = (p + detail::workspace_alignment - 1) / detail::workspace_alignment * detail::workspace_alignment;
  return reinterpret_cast<int*>(p);
}

}  // namespace cuda_backend

//! Waits for `exec.stream` and returns what the device-side checks of the last `plan`, `compact`
//! or `evict` call on `workspace` found: ok, or the first problem, named as the host backend names
//! it. Synchronises: call it where the engine may wait (tests, debugging, a periodic health check),
//! or copy the first `int` of the aligned workspace asynchronously and pass it to
//! `cuda_backend::decode`.
inline status device_status(cuda_t exec, const void* workspace) {
  if (workspace == nullptr) return make_error(errc::invalid_argument, "workspace", "null workspace");
  int word = 0;
  KVEVICT_TRY(cuda_backend::check(cudaMemcpyAsync(&word, cuda_backend::status_word(const_cast<void*>(workspace)),
                                                  sizeof word, cudaMemcpyDeviceToHost, exec.stream),
                                  "device_status: cudaMemcpyAsync"));
  KVEVICT_TRY(cuda_backend::check(cudaStreamSynchronize(exec.stream), "device_status: cudaStreamSynchronize"));
  return cuda_backend::decode(word);
}

}  // namespace kvevict

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
#include "../detail/checks.hpp"
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

// Problems only the device can see (they depend on device-resident tables) are found by the
// predicates of the check catalogue (detail/checks.hpp) and reported through its table. Lower codes
// win when several are found, so the reported problem does not depend on scheduling.
using namespace detail::check_codes;
template <class>
inline constexpr bool always_false = false;

//! The status word's value when nothing is wrong: 0, so the memset that zeroes a call's counters
//! resets it too. A problem `code` is stored as `ck_count_ - code`, so the largest stored value
//! (atomicMax) is the lowest code.
inline constexpr int no_problem = 0;

inline status decode(int code) {
  if (code == no_problem) return ok_status();
  code = ck_count_ - code;
  if (code < 1 || code >= ck_count_)
    return make_error(errc::device_error, "workspace",
                      "the status word holds no known code (not a kvevict workspace?)");
  return detail::status_of(code);
}

//! Records a problem: the lowest code wins.
//! Records a problem: the lowest code wins; `ck_ok` records nothing.
__device__ __forceinline__ void raise(int* word, int code) {
  if (code != ck_ok) atomicMax(word, ck_count_ - code);
}
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

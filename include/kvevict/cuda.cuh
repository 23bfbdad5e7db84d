//! \file cuda.cuh
//! Umbrella header of the CUDA backend (compile with nvcc; link target `kvevict::cuda`).
//!
//! \code
//! #include <kvevict/cuda.cuh>
//! auto exec = kvevict::cuda.on(stream);
//! std::size_t bytes = kvevict::evict_workspace_bytes(exec, policy, cache, sig);  // host-side sizes
//! kvevict::evict(exec, policy, cache, sig, kept, result, workspace, bytes);      // asynchronous
//! kvevict::status st = kvevict::device_status(exec, workspace);                  // waits, when wanted
//! \endcode
#pragma once

#include "kvevict.hpp"
#include "cuda/algorithm.cuh"
#include "cuda/backend.cuh"
#include "cuda/shard.cuh"
#include "cuda/tier.cuh"

//! \file config.hpp
//! Compiler and language configuration shared by every kvevict header.
#pragma once

#include <cassert>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define KVEVICT_HOST_DEVICE __host__ __device__ inline
#else
//! Marks functions usable from host and device code; plain `inline` on the host compiler.
#define KVEVICT_HOST_DEVICE inline
#endif

#ifdef NDEBUG
#define KVEVICT_ASSERT(cond) ((void)0)
#else
//! Debug-only internal invariant check; vanishes under NDEBUG. Never used for input validation:
//! front doors validate their arguments and return a status.
#define KVEVICT_ASSERT(cond) assert(cond)
#endif

#if defined(__CUDA_ARCH__) || defined(__clang__)
#define KVEVICT_UNROLL _Pragma("unroll")
#elif defined(__CUDACC__)
#define KVEVICT_UNROLL  // host pass of nvcc: its front end knows no GCC unroll pragma
#elif defined(__GNUC__)
#define KVEVICT_UNROLL _Pragma("GCC unroll 16")
#else
//! Asks the compiler to unroll the next loop fully (a small constant trip count).
#define KVEVICT_UNROLL
#endif

#if defined(__CUDACC__) || defined(__HIPCC__)
#define KVEVICT_HOST_DEVICE_ALWAYS_INLINE __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
//! KVEVICT_HOST_DEVICE, always inlined on the host too: a host-device piece of the host scorer that
//! must be compiled for the instruction set of the dispatched function calling it (even at -O0).
#define KVEVICT_HOST_DEVICE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define KVEVICT_HOST_DEVICE_ALWAYS_INLINE inline
#endif

#if defined(__GNUC__) || defined(__clang__)
//! Always inlined: the host scorer's pieces, so that they are compiled for the instruction set of
//! the dispatched function that calls them.
#define KVEVICT_ALWAYS_INLINE inline __attribute__((always_inline))
#define KVEVICT_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))
#else
#define KVEVICT_ALWAYS_INLINE inline
#define KVEVICT_ALWAYS_INLINE_LAMBDA
#endif

#if defined(__clang__) && !defined(__CUDACC__)
//! Opens a function body whose products must be rounded before they are added (no FMA
//! contraction) under clang (its form of detail::round_here); clang's -ffp-contract=fast ignores
//! it, as it ignores every such pragma (use fast-honor-pragmas).
#define KVEVICT_FP_CONTRACT_OFF _Pragma("clang fp contract(off)")
#else
#define KVEVICT_FP_CONTRACT_OFF
#endif

#if defined(__cpp_concepts) && __cpp_concepts >= 201907L
#define KVEVICT_HAS_CONCEPTS 1
#else
#define KVEVICT_HAS_CONCEPTS 0
#endif

//! \file detail/math.hpp
//! Small deterministic math helpers shared by host and device code. Not API.
#pragma once

#include <cstdint>
#include <cstring>

#include "../config.hpp"

namespace kvevict::detail {

//! Makes `v` opaque to the optimiser so that a product stored in it is rounded before any add:
//! the host scorer's dispatched AVX-512 variant may use FMA (AVX-512 F includes it) while the
//! baseline cannot, and contracting `a * b + c` into one rounding would change the bits between
//! them. An empty asm statement on the register costs no instruction. Where the host scorer has
//! no dispatched variants (device code, nvcc's host pass, other architectures) it does nothing.
#if defined(__clang__)
// clang checks an asm operand's size in the template's own (baseline) target, so it cannot take
// the asm below: there the functions that need it open with KVEVICT_FP_CONTRACT_OFF instead.
template <class V>
KVEVICT_HOST_DEVICE void round_here(V&) {}
#elif defined(__GNUC__) && defined(__x86_64__) && !defined(__CUDACC__)
template <class V>
inline __attribute__((always_inline)) void round_here(V& v) {
  __asm__("" : "+v"(v));
}
#else
template <class V>
KVEVICT_HOST_DEVICE void round_here(V&) {}
#endif

template <class V>
KVEVICT_HOST_DEVICE_ALWAYS_INLINE void exp_nonpositive_parts(const V& arg, V& t, V& p);

//! exp(x) for x <= 0 (softmax arguments): relative error below 2e-7 on [-87, 0], exp(-87)
//! below -87, and NaN stays NaN (so NaN keys or queries surface as NaN scores, which `plan`
//! rejects). Straight-line arithmetic with no float-to-int conversion (defined for every input,
//! NaN included), so loops over it vectorise and host and device agree bit for bit when compiled
//! without FMA contraction differences. Needs IEEE semantics (no -ffast-math).
KVEVICT_HOST_DEVICE float exp_nonpositive(float x) {
  KVEVICT_FP_CONTRACT_OFF
  float t, p;
  exp_nonpositive_parts(x, t, p);
  // k sits in the low mantissa bits of t (two's complement offset from magic's bits).
  constexpr float magic = 12582912.0f;
  std::uint32_t tb, mb;
  std::memcpy(&tb, &t, sizeof tb);
  std::memcpy(&mb, &magic, sizeof mb);
  const std::uint32_t bits = (tb - mb + 127u) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

//! The arithmetic of `exp_nonpositive` for K floats or K vectors of floats side by side (the
//! host scorer's vectorised exponential runs it lane-wise, so both give the same bits): clamps
//! each `arg[k]`, splits it as `k ln2 + r` with `k` left in the low mantissa bits of `t[k]`, and
//! sets `p[k]` to the polynomial of `r`. Each step runs on all K before the next, so K
//! independent chains are in flight (one chain is a long run of dependent operations).
template <class V, int K>
KVEVICT_HOST_DEVICE_ALWAYS_INLINE void exp_nonpositive_parts_k(const V* arg, V* t, V* p) {
  KVEVICT_FP_CONTRACT_OFF
  // exp(x) = 2^k * exp(r), k = round(x / ln2) by the 1.5 * 2^23 rounding trick, r = x - k ln2
  // (Cody-Waite, two-part ln2).
  constexpr float magic = 12582912.0f;
  V x[K], r[K];
  KVEVICT_UNROLL
  for (int k = 0; k < K; ++k) {
    x[k] = arg[k] < -87.0f ? V{} - 87.0f : arg[k];  // NaN compares false and passes through
    V xs = x[k] * 1.44269504f;
    round_here(xs);
    t[k] = xs + magic;
  }
  KVEVICT_UNROLL
  for (int k = 0; k < K; ++k) {
    const V kf = t[k] - magic;
    V hi = kf * 0.693145752f, lo = kf * 1.42860677e-6f;
    round_here(hi);
    round_here(lo);
    r[k] = (x[k] - hi) - lo;
    p[k] = V{} + 1.0f / 5040.0f;
  }
  // Horner steps, each product rounded before its add (see round_here).
  const float c[] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};
  KVEVICT_UNROLL
  for (float ci : c) {
    KVEVICT_UNROLL
    for (int k = 0; k < K; ++k) {
      V pr = p[k] * r[k];
      round_here(pr);
      p[k] = pr + ci;
    }
  }
}

//! `exp_nonpositive_parts_k` for one float or one vector.
template <class V>
KVEVICT_HOST_DEVICE_ALWAYS_INLINE void exp_nonpositive_parts(const V& arg, V& t, V& p) {
  exp_nonpositive_parts_k<V, 1>(&arg, &t, &p);
}

//! The first index in `[lo, hi)` with `a[i] >= v` (`a` ascending there), or `hi`.
KVEVICT_HOST_DEVICE int first_at_least(const std::int32_t* a, int lo, int hi, std::int64_t v) {
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (a[mid] < v)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

}  // namespace kvevict::detail

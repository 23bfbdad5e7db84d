//! \file detail/math.hpp
//! Small deterministic math helpers shared by host and device code. Not API.
#pragma once

#include <cstdint>
#include <cstring>

#include "../config.hpp"

namespace kvevict::detail {

template <class V>
KVEVICT_HOST_DEVICE void exp_nonpositive_parts(const V& arg, V& t, V& p);

//! exp(x) for x <= 0 (softmax arguments): relative error below 2e-7 on [-87, 0], exp(-87)
//! below -87, and NaN stays NaN (so NaN keys or queries surface as NaN scores, which `plan`
//! rejects). Straight-line arithmetic with no float-to-int conversion (defined for every input,
//! NaN included), so loops over it vectorise and host and device agree bit for bit when compiled
//! without FMA contraction differences. Needs IEEE semantics (no -ffast-math).
KVEVICT_HOST_DEVICE float exp_nonpositive(float x) {
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

//! The arithmetic of `exp_nonpositive` for a float or a vector of floats (the host scorer's
//! vectorised exponential runs it lane-wise, so both give the same bits): clamps `arg`, splits it
//! as `k ln2 + r` with `k` left in the low mantissa bits of `t`, and sets `p` to the polynomial of
//! `r`. Arguments by reference: vectors by value would change the ABI between instruction sets.
template <class V>
KVEVICT_HOST_DEVICE void exp_nonpositive_parts(const V& arg, V& t, V& p) {
  const V x = arg < -87.0f ? V{} - 87.0f : arg;  // NaN compares false and passes through
  // exp(x) = 2^k * exp(r), k = round(x / ln2) by the 1.5 * 2^23 rounding trick, r = x - k ln2
  // (Cody-Waite, two-part ln2).
  constexpr float magic = 12582912.0f;
  t = x * 1.44269504f + magic;
  const V kf = t - magic;
  const V r = (x - kf * 0.693145752f) - kf * 1.42860677e-6f;
  p = V{} + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
}

}  // namespace kvevict::detail

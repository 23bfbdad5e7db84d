//! \file detail/math.hpp
//! Small deterministic math helpers shared by host and device code. Not API.
#pragma once

#include <cstdint>
#include <cstring>

#include "../config.hpp"

namespace kvevict::detail {

//! exp(x) for x <= 0 (softmax arguments): relative error below 2e-7 on [-87, 0], exp(-87)
//! below -87, and NaN stays NaN (so NaN keys or queries surface as NaN scores, which `plan`
//! rejects). Straight-line arithmetic with no float-to-int conversion (defined for every input,
//! NaN included), so loops over it vectorise and host and device agree bit for bit when compiled
//! without FMA contraction differences. Needs IEEE semantics (no -ffast-math).
KVEVICT_HOST_DEVICE float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;  // NaN compares false and passes through
  // exp(x) = 2^k * exp(r), k = round(x / ln2) by the 1.5 * 2^23 rounding trick, r = x - k ln2
  // (Cody-Waite, two-part ln2).
  constexpr float magic = 12582912.0f;
  const float t = x * 1.44269504f + magic;
  const float kf = t - magic;
  const float r = (x - kf * 0.693145752f) - kf * 1.42860677e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // k sits in the low mantissa bits of t (two's complement offset from magic's bits).
  std::uint32_t tb, mb;
  std::memcpy(&tb, &t, sizeof tb);
  std::memcpy(&mb, &magic, sizeof mb);
  const std::uint32_t bits = (tb - mb + 127u) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace kvevict::detail

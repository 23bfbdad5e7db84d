//! \file detail/math.hpp
//! Small deterministic math helpers shared by host and device code. Not API.
#pragma once

#include <cstdint>
#include <cstring>

#include "../config.hpp"

namespace kvevict::detail {

//! exp(x) for x <= 0 (softmax arguments), relative error below 2e-7 on [-87, 0], 0 below -87.
//! Written as straight-line arithmetic so loops over it vectorise, and so host and device agree
//! bit for bit when compiled without FMA contraction differences.
KVEVICT_HOST_DEVICE float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  // exp(x) = 2^k * exp(r), k = round(x / ln2), r = x - k ln2 (Cody-Waite, two-part ln2).
  const float kf = static_cast<float>(static_cast<int>(x * 1.44269504f - 0.5f));
  const float r = (x - kf * 0.693145752f) - kf * 1.42860677e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(kf) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace kvevict::detail

//! \file detail/radix_select.hpp
//! The pieces of the device top-k (cuda/select.cuh) that are plain arithmetic, shared with the host
//! tests. Not API.
//!
//! Top-k with ties to the lower position as a radix select: map scores to order-preserving 32-bit
//! keys, find the k-th largest key digit by digit (8 bits at a time, from the top), then keep every
//! key above it and the first `krem` keys equal to it, in position order.
#pragma once

#include <cstdint>
#include <cstring>

#include "../config.hpp"
#include "../numeric.hpp"

namespace kvevict::detail {

//! Order-preserving key of a finite float (-0 and +0 map alike, as `>` and `==` see them).
KVEVICT_HOST_DEVICE std::uint32_t order_key(float f) {
  const std::uint32_t u = float_bits(f == 0.0f ? 0.0f : f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

//! Order-preserving key of a finite double (-0 and +0 map alike).
KVEVICT_HOST_DEVICE std::uint64_t order_key64(double d) {
  if (d == 0.0) d = 0.0;
  std::uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

//! Given the histogram of the current digit among the keys that match the prefix so far, and
//! `krem` (how many of them are still to keep, >= 1), returns the digit of the k-th largest key and
//! lowers `krem` by the keys of higher digits.
KVEVICT_HOST_DEVICE int pick_digit(const unsigned* hist, int& krem) {
  int cum = 0, digit = 255;
  for (; digit > 0; --digit) {
    if (cum + static_cast<int>(hist[digit]) >= krem) break;
    cum += static_cast<int>(hist[digit]);
  }
  krem -= cum;
  return digit;
}

}  // namespace kvevict::detail

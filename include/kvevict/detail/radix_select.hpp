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
  const std::uint64_t u = double_bits(d);
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

//! Given the histogram (`bins` bins) of the current digit among the keys that match the prefix so
//! far, and `krem` (how many of them are still to keep, >= 1), returns the digit of the k-th
//! largest key and lowers `krem` by the keys of higher digits.
KVEVICT_HOST_DEVICE int pick_digit(const unsigned* hist, int& krem, int bins = 256) {
  int cum = 0, digit = bins - 1;
  for (; digit > 0; --digit) {
    if (cum + static_cast<int>(hist[digit]) >= krem) break;
    cum += static_cast<int>(hist[digit]);
  }
  krem -= cum;
  return digit;
}

// ---- the multi-block top-k (cuda/select.cuh): three digits of 11, 11 and 10 bits ----

inline constexpr int topk_passes = 3;
//! Lowest bit and width of digit `pass` (0 = the top 11 bits).
KVEVICT_HOST_DEVICE int topk_shift(int pass) { return pass == 0 ? 21 : (pass == 1 ? 10 : 0); }
KVEVICT_HOST_DEVICE int topk_bits(int pass) { return pass == 2 ? 10 : 11; }
KVEVICT_HOST_DEVICE int topk_digit(std::uint32_t key, int pass) {
  return static_cast<int>((key >> topk_shift(pass)) & ((1u << topk_bits(pass)) - 1u));
}
//! Whether `key` agrees with `prefix` on the digits before `pass`.
KVEVICT_HOST_DEVICE bool topk_matches(std::uint32_t key, std::uint32_t prefix, int pass) {
  const int low = pass == 0 ? 32 : topk_shift(pass - 1);
  return low >= 32 || (key >> low) == (prefix >> low);
}

//! One thread's share of a block-wide `pick_digit`: the bins `[chunk_lo, chunk_hi)`, with
//! `above` keys in the bins over `chunk_hi`. Returns true (and the digit and the lowered `krem`)
//! when the k-th largest key falls in this chunk; exactly one chunk of a partition of the bins does
//! when the histogram holds at least `krem` keys, and its answer is `pick_digit`'s.
KVEVICT_HOST_DEVICE bool pick_digit_in_chunk(const unsigned* hist, int chunk_lo, int chunk_hi, int above, int krem,
                                             int& digit, int& krem_out) {
  int cum = above;
  for (int d = chunk_hi - 1; d >= chunk_lo; --d) {
    if (cum < krem && cum + static_cast<int>(hist[d]) >= krem) {
      digit = d;
      krem_out = krem - cum;
      return true;
    }
    cum += static_cast<int>(hist[d]);
  }
  return false;
}

//! Where a block's kept positions start among the compressible range's kept ones, given the keys
//! above the threshold and equal to it in the blocks before it: the ties kept are the first `krem`
//! equal keys in position order.
KVEVICT_HOST_DEVICE int topk_block_offset(int above_before, int equal_before, int krem) {
  return above_before + (equal_before < krem ? equal_before : krem);
}

//! Decoupled look-back status of one block of a row: 2-bit flag (0 none, 1 own aggregate, 2
//! inclusive prefix) and the counts of keys above the threshold and equal to it (31 bits each).
inline constexpr std::uint64_t lookback_aggregate = 1, lookback_inclusive = 2;
KVEVICT_HOST_DEVICE std::uint64_t lookback_pack(std::uint64_t flag, int above, int equal) {
  return flag << 62 | static_cast<std::uint64_t>(above) << 31 | static_cast<std::uint64_t>(equal);
}
KVEVICT_HOST_DEVICE std::uint64_t lookback_flag(std::uint64_t v) { return v >> 62; }
KVEVICT_HOST_DEVICE int lookback_above(std::uint64_t v) { return static_cast<int>((v >> 31) & 0x7fffffffu); }
KVEVICT_HOST_DEVICE int lookback_equal(std::uint64_t v) { return static_cast<int>(v & 0x7fffffffu); }

}  // namespace kvevict::detail

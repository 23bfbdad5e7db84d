//! \file numeric.hpp
//! 16-bit floating point storage types and bit-exact host conversions (no CUDA needed).
//!
//! `half` is IEEE 754 binary16, `bfloat16` the upper 16 bits of binary32. Conversions to float are
//! exact; conversions from float round to nearest, ties to even, keep the sign of zero, map
//! overflow to infinity and keep NaN a (quiet) NaN. The layouts match `__half` and
//! `__nv_bfloat16`, so engine buffers can be viewed through these types.
#pragma once

#include <cstdint>
#include <cstring>

#include "config.hpp"

namespace kvevict {

//! IEEE binary16 storage. [bits]
struct half {
  std::uint16_t bits;
};
//! bfloat16 storage. [bits]
struct bfloat16 {
  std::uint16_t bits;
};

namespace detail {
KVEVICT_HOST_DEVICE std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
KVEVICT_HOST_DEVICE float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace detail

KVEVICT_HOST_DEVICE float to_float(float x) { return x; }

KVEVICT_HOST_DEVICE float to_float(bfloat16 x) { return detail::bits_float(static_cast<std::uint32_t>(x.bits) << 16); }

KVEVICT_HOST_DEVICE float to_float(half x) {
  const std::uint32_t sign = static_cast<std::uint32_t>(x.bits & 0x8000u) << 16;
  const std::uint32_t exp = (x.bits >> 10) & 0x1fu;
  std::uint32_t man = x.bits & 0x3ffu;
  if (exp == 0x1f) return detail::bits_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp != 0) return detail::bits_float(sign | ((exp + 112u) << 23) | (man << 13));
  if (man == 0) return detail::bits_float(sign);  // +-0
  // Subnormal: normalise.
  int e = -1;
  do {
    ++e;
    man <<= 1;
  } while ((man & 0x400u) == 0);
  return detail::bits_float(sign | ((112u - static_cast<std::uint32_t>(e)) << 23) | ((man & 0x3ffu) << 13));
}

//! Value comparison, as for float: NaN equals nothing (not even itself), +0 equals -0. Compare the
//! `bits` members for bit equality.
KVEVICT_HOST_DEVICE bool operator==(half a, half b) { return to_float(a) == to_float(b); }
KVEVICT_HOST_DEVICE bool operator!=(half a, half b) { return !(a == b); }
KVEVICT_HOST_DEVICE bool operator==(bfloat16 a, bfloat16 b) { return to_float(a) == to_float(b); }
KVEVICT_HOST_DEVICE bool operator!=(bfloat16 a, bfloat16 b) { return !(a == b); }

//! Converts a float to element type `T` (float, half, bfloat16), rounding to nearest even.
template <class T>
KVEVICT_HOST_DEVICE T from_float(float f);

template <>
KVEVICT_HOST_DEVICE float from_float<float>(float f) {
  return f;
}

template <>
KVEVICT_HOST_DEVICE bfloat16 from_float<bfloat16>(float f) {
  const std::uint32_t u = detail::float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return bfloat16{static_cast<std::uint16_t>(rounded >> 16)};
}

template <>
KVEVICT_HOST_DEVICE half from_float<half>(float f) {
  const std::uint32_t u = detail::float_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return half{static_cast<std::uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};
  if (abs >= 0x477ff000u) return half{static_cast<std::uint16_t>(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (abs >= 0x38800000u) {                                                         // normal half range (>= 2^-14)
    const std::uint32_t mant = abs & 0x7fffffu;
    std::uint32_t h = ((abs >> 23) - 112u) << 10 | (mant >> 13);
    const std::uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carry may roll into the exponent: correct
    return half{static_cast<std::uint16_t>(sign | h)};
  }
  if (abs < 0x33000000u) return half{sign};  // below half of the smallest subnormal: +-0
  // Subnormal half: value = m * 2^-24 with m in [1, 1023].
  const std::uint32_t exp = abs >> 23;  // biased float exponent, 102..112
  const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  const std::uint32_t shift = 126u - exp;  // 14..24
  std::uint32_t h = mant >> shift;
  const std::uint32_t rest = mant & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1u);
  if (rest > halfway || (rest == halfway && (h & 1u))) ++h;
  return half{static_cast<std::uint16_t>(sign | h)};
}

//! True for float, half and bfloat16: the element types of a kvevict cache.
template <class T>
struct is_element_type {
  static constexpr bool value = false;
};
template <>
struct is_element_type<float> {
  static constexpr bool value = true;
};
template <>
struct is_element_type<half> {
  static constexpr bool value = true;
};
template <>
struct is_element_type<bfloat16> {
  static constexpr bool value = true;
};

}  // namespace kvevict

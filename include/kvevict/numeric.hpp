//! \file numeric.hpp
//! Storage types of K and V and bit-exact host-device conversions (no CUDA needed).
//!
//! `half` is IEEE 754 binary16, `bfloat16` the upper 16 bits of binary32. Conversions to float are
//! exact; conversions from float round to nearest, ties to even, keep the sign of zero, map
//! overflow to infinity and keep NaN a (quiet) NaN. The layouts match `__half` and
//! `__nv_bfloat16`, so engine buffers can be viewed through these types.
//!
//! Quantised caches: `float8_e4m3` and `float8_e5m2` (the OCP FP8 formats, bit-compatible with
//! `__nv_fp8_e4m3` / `__nv_fp8_e5m2` and torch's `float8_e4m3fn` / `float8_e5m2`) and `int8`
//! hold K and V divided by a scale (a cache view's `k_scale` / `v_scale`); `to_float` decodes
//! exactly (the scale is applied by the scorers), `from_float` rounds to nearest even and
//! saturates to the largest finite value, as the CUDA types' default conversion does
//! (`__NV_SATFINITE`); int8 rounds to nearest even and saturates to [-127, 127].
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

//! FP8 E4M3 (OCP "E4M3FN": bias 7, no infinities, S.1111.111 is NaN, largest 448). [bits]
struct float8_e4m3 {
  std::uint8_t bits;
};
//! FP8 E5M2 (bias 15, IEEE-style infinities and NaNs, largest finite 57344). [bits]
struct float8_e5m2 {
  std::uint8_t bits;
};
//! Signed 8-bit integer codes, value = code x scale (symmetric quantisation, -127..127). [code]
struct int8 {
  std::int8_t code;
};

namespace detail {
//! The bytes of `from` as a `To` of the same size (std::bit_cast before C++20).
template <class To, class From>
KVEVICT_HOST_DEVICE To bit_copy(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_copy needs two types of one size");
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
}
KVEVICT_HOST_DEVICE std::uint32_t float_bits(float f) { return bit_copy<std::uint32_t>(f); }
KVEVICT_HOST_DEVICE float bits_float(std::uint32_t u) { return bit_copy<float>(u); }
KVEVICT_HOST_DEVICE std::uint64_t double_bits(double d) { return bit_copy<std::uint64_t>(d); }
KVEVICT_HOST_DEVICE double bits_double(std::uint64_t u) { return bit_copy<double>(u); }
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

namespace detail {
//! An FP8 code with `E` exponent bits (bias 2^(E-1) - 1) and `M` mantissa bits, as float. `e4m3`:
//! the all-ones exponent is an ordinary binade except S.1111.111 (NaN); e5m2: IEEE inf / NaN.
template <int E, int M, bool Ieee>
KVEVICT_HOST_DEVICE constexpr std::uint32_t fp8_to_float_bits(std::uint8_t b) {
  constexpr int bias = (1 << (E - 1)) - 1;
  const std::uint32_t sign = static_cast<std::uint32_t>(b & 0x80u) << 24;
  const std::uint32_t exp = (b >> M) & ((1u << E) - 1u);
  std::uint32_t man = b & ((1u << M) - 1u);
  if (Ieee && exp == (1u << E) - 1u) return sign | 0x7f800000u | (man << (23 - M));  // inf / NaN
  if (!Ieee && (b & 0x7fu) == 0x7fu) return sign | 0x7fc00000u;                      // NaN
  if (exp != 0) return sign | ((exp + 127u - bias) << 23) | (man << (23 - M));
  if (man == 0) return sign;
  int e = 0;  // subnormal: man x 2^(1 - bias - M); normalise
  while ((man & (1u << M)) == 0) {
    man <<= 1;
    ++e;
  }
  return sign | ((127u - bias + 1u - static_cast<std::uint32_t>(e)) << 23) | ((man & ((1u << M) - 1u)) << (23 - M));
}
template <int E, int M, bool Ieee>
KVEVICT_HOST_DEVICE float fp8_to_float(std::uint8_t b) {
  return bits_float(fp8_to_float_bits<E, M, Ieee>(b));
}
//! Every code of an FP8 format decoded at compile time: the host reads this table (no branches in
//! the scorer's tile load); the device decodes arithmetically. Same bits either way.
template <int E, int M, bool Ieee>
struct fp8_decode_table {
  std::uint32_t bits[256];
};
template <int E, int M, bool Ieee>
constexpr fp8_decode_table<E, M, Ieee> make_fp8_decode_table() {
  fp8_decode_table<E, M, Ieee> t{};
  for (int b = 0; b < 256; ++b) t.bits[b] = fp8_to_float_bits<E, M, Ieee>(static_cast<std::uint8_t>(b));
  return t;
}
template <int E, int M, bool Ieee>
inline constexpr fp8_decode_table<E, M, Ieee> fp8_decoded = make_fp8_decode_table<E, M, Ieee>();
template <int E, int M, bool Ieee>
KVEVICT_HOST_DEVICE float fp8_decode(std::uint8_t b) {
#if defined(__CUDA_ARCH__)
  return fp8_to_float<E, M, Ieee>(b);
#else
  return bits_float(fp8_decoded<E, M, Ieee>.bits[b]);
#endif
}

//! A float to an FP8 code, rounding to nearest even; out of range saturates to the largest finite
//! code (`max_code`, sign kept); NaN maps to `nan_code` with the sign.
template <int E, int M>
KVEVICT_HOST_DEVICE std::uint8_t float_to_fp8(float f, std::uint8_t max_code, std::uint8_t nan_code) {
  constexpr int bias = (1 << (E - 1)) - 1;
  const std::uint32_t u = float_bits(f);
  const std::uint8_t sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<std::uint8_t>(sign | nan_code);
  // Work in units of the smallest subnormal, 2^(1 - bias - M): the code is round(|f| / unit) for
  // subnormals, and for normals the mantissa rounding is the same integer rounding at that binade.
  const int fexp = static_cast<int>(abs >> 23) - 127;  // unbiased; -127 for float zero / subnormal
  if (abs == 0) return sign;
  const int min_normal_exp = 1 - bias;
  std::uint32_t mant = (abs & 0x7fffffu) | (fexp > -127 ? 0x800000u : 0u);
  int e = fexp > -127 ? fexp : -126;
  // Bits of the float significand (24, with the implicit one) to drop to keep M fraction bits at
  // binade e, or more below the normal range.
  const int drop = 23 - M + (e < min_normal_exp ? min_normal_exp - e : 0);
  std::uint32_t code;
  if (drop >= 25) {
    code = 0;  // below half of the smallest subnormal
  } else {
    std::uint32_t q = mant >> drop;
    const std::uint32_t rest = mant & ((1u << drop) - 1u), halfway = 1u << (drop - 1);
    if (rest > halfway || (rest == halfway && (q & 1u))) ++q;
    if (e < min_normal_exp) {
      code = q;  // subnormal (q may round up to the smallest normal: 1 << M, which encodes it)
    } else {
      // q in [2^M, 2^(M+1)]: a carry to 2^(M+1) moves to the next binade
      if (q == (2u << M)) {
        q >>= 1;
        ++e;
      }
      code = (static_cast<std::uint32_t>(e + bias) << M) | (q & ((1u << M) - 1u));
    }
  }
  if (code > max_code) code = max_code;
  return static_cast<std::uint8_t>(sign | code);
}
}  // namespace detail

KVEVICT_HOST_DEVICE float to_float(float8_e4m3 x) { return detail::fp8_decode<4, 3, false>(x.bits); }
KVEVICT_HOST_DEVICE float to_float(float8_e5m2 x) { return detail::fp8_decode<5, 2, true>(x.bits); }
KVEVICT_HOST_DEVICE float to_float(int8 x) { return static_cast<float>(x.code); }

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

template <>
KVEVICT_HOST_DEVICE float8_e4m3 from_float<float8_e4m3>(float f) {
  return float8_e4m3{detail::float_to_fp8<4, 3>(f, 0x7eu, 0x7fu)};
}
template <>
KVEVICT_HOST_DEVICE float8_e5m2 from_float<float8_e5m2>(float f) {
  return float8_e5m2{detail::float_to_fp8<5, 2>(f, 0x7bu, 0x7fu)};
}
template <>
KVEVICT_HOST_DEVICE int8 from_float<int8>(float f) {
  if (!(f == f)) return int8{0};  // NaN: no code; 0
  const float c = f > 127.0f ? 127.0f : f < -127.0f ? -127.0f : f;
  return int8{static_cast<std::int8_t>(std::nearbyint(c))};  // the default rounding mode: to nearest even
}

//! True for the quantised element types (a cache of them carries `k_scale` / `v_scale`).
template <class T>
struct is_quantized {
  static constexpr bool value = false;
};
template <>
struct is_quantized<float8_e4m3> {
  static constexpr bool value = true;
};
template <>
struct is_quantized<float8_e5m2> {
  static constexpr bool value = true;
};
template <>
struct is_quantized<int8> {
  static constexpr bool value = true;
};

//! True for the element types of a kvevict cache: float, half, bfloat16 and the quantised types.
template <class T, class = void>
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
template <class T>
struct is_element_type<T, std::enable_if_t<is_quantized<T>::value>> {
  static constexpr bool value = true;
};

}  // namespace kvevict

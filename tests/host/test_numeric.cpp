#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include <kvevict/numeric.hpp>
#include "common/reference.hpp"

namespace {
float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace

TEST_CASE("half: every bit pattern round-trips through float", "[numeric]") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const kvevict::half h{static_cast<std::uint16_t>(b)};
    const float f = kvevict::to_float(h);
    const bool nan = ((b >> 10) & 0x1f) == 0x1f && (b & 0x3ff) != 0;
    REQUIRE(std::isnan(f) == nan);
    if (!nan) {
      REQUIRE(kvevict::from_float<kvevict::half>(f).bits == b);
      REQUIRE(ref::half_bits(f) == b);  // the reference agrees on exact values
    }
  }
}

TEST_CASE("bfloat16: every bit pattern round-trips through float", "[numeric]") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float f = kvevict::to_float(kvevict::bfloat16{static_cast<std::uint16_t>(b)});
    if (std::isnan(f)) continue;
    REQUIRE(kvevict::from_float<kvevict::bfloat16>(f).bits == b);
  }
}

TEST_CASE("float to half and bfloat16 rounds to nearest even like the reference", "[numeric]") {
  std::mt19937 rng(7);
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           1.0f,
                           65504.0f,
                           65519.99f,
                           65520.0f,
                           1e10f,
                           -1e10f,
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           5.96046448e-8f,
                           2.98023224e-8f,
                           2.98023254e-8f,
                           6.1035156e-5f,
                           6.1e-5f,
                           3.0e38f,
                           3.4e38f,
                           from_bits(0x3f808000u),
                           from_bits(0x3f818000u),
                           from_bits(0x3f801000u)};
  for (int i = 0; i < 200000; ++i) xs.push_back(from_bits(static_cast<std::uint32_t>(rng())));
  std::uniform_real_distribution<float> small(-70000.0f, 70000.0f);
  for (int i = 0; i < 100000; ++i) xs.push_back(small(rng) * std::ldexp(1.0f, -static_cast<int>(rng() % 40)));
  for (float x : xs) {
    if (std::isnan(x)) {
      REQUIRE(std::isnan(kvevict::to_float(kvevict::from_float<kvevict::half>(x))));
      REQUIRE(std::isnan(kvevict::to_float(kvevict::from_float<kvevict::bfloat16>(x))));
      continue;
    }
    INFO("x = " << x);
    REQUIRE(kvevict::from_float<kvevict::half>(x).bits == ref::half_bits(x));
    REQUIRE(kvevict::from_float<kvevict::bfloat16>(x).bits == ref::bf16_bits(x));
  }
}

namespace {
// An FP8 code's value from the OCP FP8 definition, in double: sign, exponent field e, mantissa m,
// value (1 + m / 2^M) 2^(e - bias), or m / 2^M 2^(1 - bias) for e = 0.
double fp8_reference(unsigned b, int E, int M) {
  const int bias = (1 << (E - 1)) - 1;
  const unsigned e = (b >> M) & ((1u << E) - 1u), m = b & ((1u << M) - 1u);
  const double sign = (b & 0x80u) ? -1.0 : 1.0;
  if (e == 0) return sign * std::ldexp(static_cast<double>(m), 1 - bias - M);
  return sign * std::ldexp(1.0 + static_cast<double>(m) / (1u << M), static_cast<int>(e) - bias);
}
}  // namespace

TEST_CASE("fp8: every code decodes to its OCP value; NaN and infinities where the formats have them", "[numeric][fp8]") {
  for (unsigned b = 0; b < 256; ++b) {
    INFO("code " << b);
    const float e4 = kvevict::to_float(kvevict::float8_e4m3{static_cast<std::uint8_t>(b)});
    if ((b & 0x7f) == 0x7f) {
      REQUIRE(std::isnan(e4));  // E4M3FN: S.1111.111 only
    } else {
      REQUIRE(static_cast<double>(e4) == fp8_reference(b, 4, 3));
    }
    const float e5 = kvevict::to_float(kvevict::float8_e5m2{static_cast<std::uint8_t>(b)});
    if (((b >> 2) & 0x1f) == 0x1f) {
      REQUIRE(((b & 3) == 0 ? std::isinf(e5) : std::isnan(e5)));
    } else {
      REQUIRE(static_cast<double>(e5) == fp8_reference(b, 5, 2));
    }
    // every finite code survives the round trip
    if (!std::isnan(e4)) REQUIRE(kvevict::from_float<kvevict::float8_e4m3>(e4).bits == b);
    if (std::isfinite(e5)) REQUIRE(kvevict::from_float<kvevict::float8_e5m2>(e5).bits == b);
  }
  REQUIRE(kvevict::to_float(kvevict::float8_e4m3{0x7e}) == 448.0f);
  REQUIRE(kvevict::to_float(kvevict::float8_e4m3{0x01}) == std::ldexp(1.0f, -9));
  REQUIRE(kvevict::to_float(kvevict::float8_e5m2{0x7b}) == 57344.0f);
  REQUIRE(kvevict::to_float(kvevict::float8_e5m2{0x01}) == std::ldexp(1.0f, -16));
}

TEST_CASE("fp8 and int8 encoding: nearest, ties to even, saturating, NaN kept", "[numeric][fp8]") {
  using kvevict::from_float;
  // between every pair of adjacent positive finite codes: below, at and above the midpoint
  for (int E : {4, 5}) {
    const int M = 7 - E;
    const unsigned max_code = E == 4 ? 0x7e : 0x7b;
    for (unsigned b = 0; b < max_code; ++b) {
      const double lo = fp8_reference(b, E, M), hi = fp8_reference(b + 1, E, M), mid = (lo + hi) / 2;
      auto enc = [&](double x) {
        return E == 4 ? from_float<kvevict::float8_e4m3>(static_cast<float>(x)).bits
                      : from_float<kvevict::float8_e5m2>(static_cast<float>(x)).bits;
      };
      INFO("E" << E << " code " << b);
      REQUIRE(enc(mid - (hi - lo) / 8) == b);
      REQUIRE(enc(mid + (hi - lo) / 8) == b + 1);
      REQUIRE(enc(mid) == ((b & 1) ? b + 1 : b));  // tie: the even code
      REQUIRE(enc(-(mid + (hi - lo) / 8)) == (0x80 | (b + 1)));
    }
  }
  REQUIRE(from_float<kvevict::float8_e4m3>(1000.0f).bits == 0x7e);  // saturates (as __NV_SATFINITE)
  REQUIRE(from_float<kvevict::float8_e4m3>(-std::numeric_limits<float>::infinity()).bits == 0xfe);
  REQUIRE(from_float<kvevict::float8_e5m2>(1e30f).bits == 0x7b);
  REQUIRE(std::isnan(kvevict::to_float(from_float<kvevict::float8_e4m3>(std::nanf("")))));
  REQUIRE(std::isnan(kvevict::to_float(from_float<kvevict::float8_e5m2>(std::nanf("")))));
  REQUIRE(from_float<kvevict::float8_e4m3>(1e-30f).bits == 0x00);
  REQUIRE(from_float<kvevict::int8>(2.5f).code == 2);  // ties to even
  REQUIRE(from_float<kvevict::int8>(3.5f).code == 4);
  REQUIRE(from_float<kvevict::int8>(-300.0f).code == -127);
  REQUIRE(kvevict::to_float(kvevict::int8{-5}) == -5.0f);
}

TEST_CASE("fp8: the host's decode table and the arithmetic decode give the same bits for every code",
          "[numeric][quantized]") {
  for (int b = 0; b < 256; ++b) {
    const auto code = static_cast<std::uint8_t>(b);
    INFO("code " << b);
    CHECK(kvevict::detail::float_bits(kvevict::to_float(kvevict::float8_e4m3{code})) ==
          kvevict::detail::float_bits(kvevict::detail::fp8_to_float<4, 3, false>(code)));
    CHECK(kvevict::detail::float_bits(kvevict::to_float(kvevict::float8_e5m2{code})) ==
          kvevict::detail::float_bits(kvevict::detail::fp8_to_float<5, 2, true>(code)));
  }
  static_assert(kvevict::detail::fp8_decoded<4, 3, false>.bits[0x38] == 0x3f800000u, "e4m3 0x38 is 1.0");
  static_assert(kvevict::detail::fp8_decoded<5, 2, true>.bits[0x3c] == 0x3f800000u, "e5m2 0x3c is 1.0");
}

TEST_CASE("fp8 and int8: every value is exactly a bf16 and an fp16 (the CUDA key tiles decode into them)",
          "[numeric][quantized]") {
  // cuda/window_attention.cuh decodes quantised keys into the queries' type; exact only if every
  // finite code survives from_float<bf16 / half> unchanged (NaN stays NaN, infinities stay).
  auto exact = [](float f) {
    const float b = kvevict::to_float(kvevict::from_float<kvevict::bfloat16>(f));
    const float h = kvevict::to_float(kvevict::from_float<kvevict::half>(f));
    if (std::isnan(f)) return std::isnan(b) && std::isnan(h);
    return kvevict::detail::float_bits(b) == kvevict::detail::float_bits(f) &&
           kvevict::detail::float_bits(h) == kvevict::detail::float_bits(f);
  };
  int checked = 0;
  for (int b = 0; b < 256; ++b) {
    const auto code = static_cast<std::uint8_t>(b);
    INFO("code " << b);
    CHECK(exact(kvevict::to_float(kvevict::float8_e4m3{code})));
    CHECK(exact(kvevict::to_float(kvevict::float8_e5m2{code})));
    CHECK(exact(kvevict::to_float(kvevict::int8{static_cast<std::int8_t>(code)})));
    checked += 3;
  }
  CHECK(checked == 768);
  CHECK(!exact(1.0f + 1.0f / 1024));  // a value bf16 cannot hold fails the check
}

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

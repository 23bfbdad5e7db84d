// Ada-KV's per-head allocation as the CUDA backend computes it (cuda/adaptive.cuh): a radix search
// over the candidates' order keys with one histogram per head, then the ties in head order. The
// kernels cannot run here; their arithmetic (detail/adaptive_alloc.hpp, the digits of
// detail/radix_select.hpp) can: this emulates the device's three passes for one sequence and
// compares every head's budget with the host's `adaptive_budget::allocate`, which sorts.
#include <catch2/catch.hpp>

#include <kvevict/detail/adaptive_alloc.hpp>
#include <kvevict/detail/radix_select.hpp>
#include <kvevict/select/budget.hpp>
#include <kvevict/select/row_rule.hpp>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

namespace {

namespace kd = kvevict::detail;

// The device's flow for one sequence: scores [heads, stride], lens [heads].
std::vector<int> device_budgets(const kvevict::row_rule& rule, double fraction, const std::vector<float>& scores,
                                std::size_t stride, const std::vector<int>& lens) {
  const int heads = static_cast<int>(lens.size());
  const int bc = rule.entries - rule.sinks - rule.window;
  std::vector<int> g(heads);
  long long pool = static_cast<long long>(heads) * bc;
  for (int h = 0; h < heads; ++h) {
    const auto r = rule.range(lens[h]);
    g[h] = std::min(kd::ada_guaranteed(fraction, bc), r.hi - r.lo);
    pool -= g[h];
  }
  std::vector<long long> above(heads, 0), equal(heads, 0);
  std::vector<int> extras(heads, 0);
  std::uint32_t prefix = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const int bins = 1 << kd::topk_bits(pass);
    std::vector<unsigned> hist(static_cast<std::size_t>(heads) * bins, 0);
    for (int h = 0; h < heads; ++h) {
      const auto r = rule.range(lens[h]);
      for (int t = r.lo; t < r.hi; ++t) {
        const std::uint32_t key = kd::order_key(scores[static_cast<std::size_t>(h) * stride + t]);
        if (kd::topk_matches(key, prefix, pass)) ++hist[static_cast<std::size_t>(h) * bins + kd::topk_digit(key, pass)];
      }
    }
    if (pass == 0) {  // the short way: the pool is never exhausted (or empty)
      long long f_all = 0;
      std::vector<long long> total(heads, 0);
      for (int h = 0; h < heads; ++h) {
        for (int d = 0; d < bins; ++d) total[h] += hist[static_cast<std::size_t>(h) * bins + d];
        f_all += kd::ada_excess(total[h], g[h]);
      }
      if (pool <= 0 || f_all <= pool) {
        for (int h = 0; h < heads; ++h) extras[h] = pool <= 0 ? 0 : static_cast<int>(kd::ada_excess(total[h], g[h]));
        break;
      }
    }
    const int d = kd::ada_pick_digit(hist.data(), bins, heads, above.data(), g.data(), pool);
    prefix |= static_cast<std::uint32_t>(d) << kd::topk_shift(pass);
    if (pass == 2) {
      for (int h = 0; h < heads; ++h) equal[h] = hist[static_cast<std::size_t>(h) * bins + d];
      kd::ada_extras(above.data(), equal.data(), g.data(), heads, pool, extras.data());
    }
  }
  std::vector<int> budgets(heads);
  for (int h = 0; h < heads; ++h) {
    const auto r = rule.range(lens[h]);
    budgets[h] = static_cast<int>(kd::ada_budget(r.lo, r.hi, lens[h], g[h], extras[h]));
  }
  return budgets;
}

}  // namespace

TEST_CASE("device per-head allocation equals the host's", "[adaptive][cuda]") {
  std::mt19937 rng(20261130);
  int compared = 0, searched = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int heads = 1 + static_cast<int>(rng() % 6);
    const int sinks = static_cast<int>(rng() % 5), window = static_cast<int>(rng() % 9);
    std::vector<int> lens(heads);
    const int maxn = 20 + static_cast<int>(rng() % 400);
    for (auto& n : lens) n = rng() % 8 == 0 ? static_cast<int>(rng() % 12) : static_cast<int>(rng() % maxn);
    const int longest = *std::max_element(lens.begin(), lens.end());
    kvevict::adaptive_budget b;
    b.entries = sinks + window + static_cast<int>(rng() % (maxn / 2 + 1));
    const double fractions[] = {0.0, 0.2, 0.5, 1.0, 0.37, 0.9999};
    b.floor_fraction = fractions[rng() % 6];
    if (longest <= b.entries) continue;  // kept whole: nothing allocated
    const std::size_t stride = static_cast<std::size_t>(longest);
    std::vector<float> scores(static_cast<std::size_t>(heads) * stride, 0.0f);
    const int kind = static_cast<int>(rng() % 3);
    for (auto& x : scores) {
      if (kind == 0) x = static_cast<float>(rng() % 7) * 0.25f;  // many ties, across heads too
      else if (kind == 1) x = std::ldexp(static_cast<float>(rng() % 1000) - 500.0f, -static_cast<int>(rng() % 30));
      else x = rng() % 5 == 0 ? -0.0f : static_cast<float>(rng() % 3);  // signed zeros and ties
    }
    const kvevict::row_rule rule{b.entries, sinks, window, 0, 1, b.entries, longest};
    std::vector<int> host(heads);
    std::vector<unsigned char> scratch(b.scratch_bytes(heads, longest) + 64);
    b.allocate(rule, scores.data(), stride, lens.data(), heads, host.data(), scratch.data());
    const auto dev = device_budgets(rule, b.floor_fraction, scores, stride, lens);
    INFO("trial " << trial << " heads " << heads << " entries " << b.entries << " fraction " << b.floor_fraction);
    REQUIRE(dev == host);
    ++compared;
    long long want = 0;  // did the search run (extras exhaust the pool)?
    for (int h = 0; h < heads; ++h) {
      const auto r = rule.range(lens[h]);
      want += r.hi - r.lo;
    }
    searched += want > static_cast<long long>(heads) * (b.entries - sinks - window);
  }
  CHECK(compared > 1000);
  CHECK(searched > 500);
}

TEST_CASE("the guaranteed share is floor(fraction x budget) without an fma", "[adaptive]") {
  CHECK(kd::ada_guaranteed(0.2, 100) == 20);
  CHECK(kd::ada_guaranteed(0.1, 30) == 3);  // 0.1 x 30 = 3.0000000000000004 in doubles
  CHECK(kd::ada_guaranteed(0.3, 10) == 3);  // 2.9999999999999996 + 1e-9 floors to 3
  CHECK(kd::ada_guaranteed(0.0, 1000) == 0);
  CHECK(kd::ada_guaranteed(1.0, 77) == 77);
}

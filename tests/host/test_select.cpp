#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include <kvevict/detail/radix_select.hpp>

#include "common/given_scores.hpp"
#include "common/reference.hpp"
#include "common/test_cache.hpp"

using namespace testing;

TEST_CASE("token top-k equals the naive kept set, edge cases included", "[select]") {
  std::mt19937 rng(3);
  struct tc {
    int n, budget, sinks, window;
    bool equal;
  };
  const tc cases[] = {{0, 8, 2, 0, false},   {1, 8, 1, 0, false},   {1, 1, 0, 1, false},    {50, 50, 4, 8, false},
                      {50, 60, 4, 8, false}, {50, 12, 4, 8, false}, {50, 12, 4, 8, true},   {50, 20, 0, 0, false},
                      {50, 0, 0, 0, false},  {9, 7, 4, 3, false},   {200, 64, 4, 16, true}, {200, 64, 4, 16, false}};
  for (const auto& k : cases) {
    for (int ps : {7, 8, 9}) {
      const logical L = make_logical(1, 2, 4, {k.n}, 1);
      auto c = build<float>(L, layout_kind::block_nhd, ps, 1);
      std::vector<float> sc(2 * std::max(1, k.n));
      std::uniform_int_distribution<int> few(0, 5);  // many ties
      for (auto& x : sc) x = k.equal ? 1.0f : static_cast<float>(few(rng));
      kvevict::eviction_policy<given_scores, kvevict::token_level, kvevict::selector<>> p;
      p.scorer = {sc.data(), std::max(1, k.n)};
      p.selector = {k.sinks, k.window, kvevict::uniform_budget{k.budget}};
      auto view = c.block_view();
      kvevict::keep_plan_buffer kept(2, kvevict::plan_capacity(p, view));
      REQUIRE(kvevict::plan(kvevict::host, p, view, kvevict::signals<float>{}, kept.view()).ok());
      for (int h = 0; h < 2; ++h) {
        std::vector<float> row(sc.begin() + h * std::max(1, k.n), sc.begin() + h * std::max(1, k.n) + k.n);
        INFO("n " << k.n << " budget " << k.budget << " head " << h);
        CHECK(kept.kept(h) == ref::kept_set(row, k.budget, k.sinks, k.window));
        CHECK(kept.counts[h] == std::min(k.budget, k.n));
      }
    }
  }
}

TEST_CASE("PyramidKV budgets follow the documented line and average the budget", "[select]") {
  kvevict::pyramid_budget b{128, 20.0};
  const int s = 4, w = 32, layers = 32;  // Bc = 92, min = 4, max = 180
  CHECK(b.layer_budget(0, layers, s, w) == 36 + 180);
  CHECK(b.layer_budget(layers - 1, layers, s, w) == 36 + 4);
  long total = 0;
  for (int l = 0; l < layers; ++l) {
    total += b.layer_budget(l, layers, s, w);
    if (l > 0) CHECK(b.layer_budget(l, layers, s, w) <= b.layer_budget(l - 1, layers, s, w));
  }
  CHECK(total <= 128L * layers);
  CHECK(total >= 128L * layers - layers);
  CHECK(b.layer_budget(0, 1, s, w) == 128);
}

TEST_CASE("Ada-KV allocation: floor per head, pooled budget to the best scores across heads", "[select]") {
  // Brute force reference: each head gets its floor (its own best), the remaining pool goes to the
  // globally best not-yet-taken scores.
  std::mt19937 rng(12);
  for (int trial = 0; trial < 20; ++trial) {
    const int kvh = 4, n = 60 + trial, sinks = 2, window = 4, entries = 20;
    const double floor_fraction = (trial % 5) * 0.25;
    std::vector<float> sc(kvh * n);
    std::uniform_real_distribution<float> u(0, 1);
    for (int h = 0; h < kvh; ++h)
      for (int t = 0; t < n; ++t) sc[h * n + t] = u(rng) * (h + 1) * (h + 1);  // heads differ in scale
    const int bc = entries - sinks - window, g = static_cast<int>(std::floor(floor_fraction * bc + 1e-9));
    std::vector<int> want_extra(kvh, 0);
    std::vector<std::tuple<float, int, int>> rest;
    for (int h = 0; h < kvh; ++h) {
      std::vector<std::pair<float, int>> own;
      for (int t = sinks; t < n - window; ++t) own.push_back({-sc[h * n + t], t});
      std::sort(own.begin(), own.end());
      for (size_t i = g; i < own.size(); ++i) rest.push_back({own[i].first, h, own[i].second});
    }
    std::sort(rest.begin(), rest.end());
    for (int i = 0; i < kvh * (bc - g); ++i) ++want_extra[std::get<1>(rest[i])];

    const logical L = make_logical(1, kvh, 4, {n}, 2, false);
    auto c = build<float>(L, layout_kind::head_rows, 8, 1);
    kvevict::eviction_policy<given_scores, kvevict::token_level, kvevict::selector<kvevict::adaptive_budget>> p;
    p.scorer = {sc.data(), n};
    p.selector = {sinks, window, kvevict::adaptive_budget{entries, floor_fraction}};
    auto view = c.head_rows_view();
    kvevict::keep_plan_buffer kept(kvh, kvevict::plan_capacity(p, view));
    REQUIRE(kvevict::plan(kvevict::host, p, view, kvevict::signals<float>{}, kept.view()).ok());
    int total = 0;
    for (int h = 0; h < kvh; ++h) {
      INFO("trial " << trial << " head " << h);
      CHECK(kept.counts[h] == sinks + window + g + want_extra[h]);
      std::vector<float> row(sc.begin() + h * n, sc.begin() + (h + 1) * n);
      CHECK(kept.kept(h) == ref::kept_set(row, kept.counts[h], sinks, window));
      total += kept.counts[h];
    }
    CHECK(total == kvh * entries);
  }
}

TEST_CASE("plans are identical across reruns", "[select]") {
  const logical L = make_logical(3, 2, 16, {40, 64, 33}, 9);
  auto c = build<kvevict::half>(L, layout_kind::csr_nhd, 8, 4);
  std::vector<kvevict::half> q(3 * 4 * 8 * 16);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (auto& x : q) x = kvevict::from_float<kvevict::half>(nd(rng));
  kvevict::signals<kvevict::half> sig;
  sig.queries = q.data();
  sig.num_q_heads = 4;
  kvevict::snapkv<kvevict::gqa_max, kvevict::max_pool<>> p;
  p.selector = {2, 8, kvevict::uniform_budget{20}};
  auto view = c.csr_view<kvevict::nhd>();
  kvevict::keep_plan_buffer a(6, kvevict::plan_capacity(p, view)), b = a;
  REQUIRE(kvevict::plan(kvevict::host, p, view, sig, a.view()).ok());
  REQUIRE(kvevict::plan(kvevict::host, p, view, sig, b.view()).ok());
  CHECK(a.positions == b.positions);
  CHECK(a.counts == b.counts);
}

// The device top-k (cuda/select.cuh) as its kernels compute it, block by block: digit histograms
// of 11, 11 and 10 bits (the second pass gathering candidates, the third over them alone), each
// digit picked by chunks the way a block's threads pick it, then a stable write whose blocks learn
// their offsets by look-back. Must equal the host's protected top-k exactly, ties, -0 / +0 and
// huge or tiny magnitudes included.
namespace {
// pick_digit over `bins` bins as `threads` threads do: a chunk each from the top, exclusive sums.
int chunked_pick(const std::vector<unsigned>& hist, int threads, int& krem) {
  const int bins = static_cast<int>(hist.size()), per = bins / threads;
  int above = 0, found = 0, digit = 0, k2 = krem;
  for (int th = 0; th < threads; ++th) {
    const int hi = bins - th * per, lo = hi - per;
    int d, kk;
    if (kvevict::detail::pick_digit_in_chunk(hist.data(), lo, hi, above, krem, d, kk)) ++found, digit = d, k2 = kk;
    for (int b = lo; b < hi; ++b) above += static_cast<int>(hist[b]);
  }
  REQUIRE(found == 1);
  int ref_krem = krem;
  REQUIRE(kvevict::detail::pick_digit(hist.data(), ref_krem, bins) == digit);  // the sequential reference
  REQUIRE(ref_krem == k2);
  krem = k2;
  return digit;
}
}  // namespace

TEST_CASE("the CUDA multi-block radix top-k picks exactly the host's protected top-k", "[select][cuda]") {
  namespace kd = kvevict::detail;
  std::mt19937 rng(99);
  for (int trial = 0; trial < 600; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 400);
    std::vector<float> s(n);
    const int mode = trial % 4;
    for (auto& x : s) {
      if (mode == 0) x = static_cast<float>(static_cast<int>(rng() % 9) - 4) * 0.5f;  // many ties, signed zeros
      else if (mode == 1) x = std::ldexp(static_cast<float>(rng() % 1000) / 1000.0f, static_cast<int>(rng() % 200) - 100);
      else if (mode == 2) x = -std::ldexp(1.0f + static_cast<float>(rng() % 7), static_cast<int>(rng() % 60) - 30);
      else x = std::uniform_real_distribution<float>(-1e30f, 1e30f)(rng);
      if (rng() % 11 == 0) x = -0.0f;
    }
    const int sinks = static_cast<int>(rng() % 5), window = static_cast<int>(rng() % 5);
    const int budget = sinks + window + static_cast<int>(rng() % (n + 1));
    std::vector<std::int32_t> want(n), idx(n);
    want.resize(kvevict::host_backend::select_protected_top_k(s.data(), n, budget, sinks, window, want.data(), idx.data()));

    const int items = 1 + static_cast<int>(rng() % 40), blocks = (n + items - 1) / items;  // small slices: many blocks
    const bool whole = n <= budget;
    const int lo = std::min(sinks, n), hi = std::max(lo, n - window), k = whole ? 0 : budget - lo - (n - hi);
    std::uint32_t thr = 0xffffffffu;
    int krem = 0;
    if (k > 0) {
      std::uint32_t prefix = 0;
      krem = k;
      std::vector<std::int32_t> cand;
      for (int pass = 0; pass < 2; ++pass) {
        std::vector<unsigned> hist(2048, 0);
        for (int b = 0; b < blocks; ++b)  // the blocks' histograms, added bin by bin
          for (int t = std::max(lo, b * items); t < std::min(hi, (b + 1) * items); ++t) {
            const std::uint32_t key = kd::order_key(s[t]);
            if (!kd::topk_matches(key, prefix, pass)) continue;
            ++hist[kd::topk_digit(key, pass)];
            if (pass == 1) cand.push_back(t);
          }
        prefix |= static_cast<std::uint32_t>(chunked_pick(hist, 512, krem)) << kd::topk_shift(pass);
      }
      std::shuffle(cand.begin(), cand.end(), rng);  // gathered in any order
      std::vector<unsigned> hist3(1024, 0);
      for (int t : cand) {
        const std::uint32_t key = kd::order_key(s[t]);
        if (kd::topk_matches(key, prefix, 2)) ++hist3[kd::topk_digit(key, 2)];
      }
      thr = prefix | static_cast<std::uint32_t>(chunked_pick(hist3, 512, krem));
    }
    // The write: per block, counts of sure and equal keys; offsets by look-back over published words.
    std::vector<std::uint64_t> words(blocks, 0);
    std::vector<std::int32_t> got(n, -1);
    int total = 0;
    for (int b = 0; b < blocks; ++b) {
      std::vector<int> sure, equal;
      for (int t = b * items; t < std::min(n, (b + 1) * items); ++t) {
        const bool prot = whole || t < lo || t >= hi;
        const std::uint32_t key = prot ? 0u : kd::order_key(s[t]);
        sure.push_back(prot || key > thr);
        equal.push_back(!prot && key == thr);
      }
      const int ns = static_cast<int>(std::count(sure.begin(), sure.end(), 1)),
                ne = static_cast<int>(std::count(equal.begin(), equal.end(), 1));
      int sb = 0, eb = 0;
      if (b > 0) {
        words[b] = kd::lookback_pack(kd::lookback_aggregate, ns, ne);
        for (int j = b - 1; j >= 0; --j) {
          REQUIRE(kd::lookback_flag(words[j]) != 0);
          sb += kd::lookback_above(words[j]);
          eb += kd::lookback_equal(words[j]);
          if (kd::lookback_flag(words[j]) == kd::lookback_inclusive) break;
        }
      }
      words[b] = kd::lookback_pack(kd::lookback_inclusive, sb + ns, eb + ne);
      int at = kd::topk_block_offset(sb, eb, krem), eq_rank = eb;
      for (std::size_t i = 0; i < sure.size(); ++i) {
        if (sure[i] || (equal[i] && eq_rank < krem)) got[at++] = b * items + static_cast<int>(i), ++total;
        eq_rank += equal[i];
      }
    }
    got.resize(total);
    REQUIRE(got == want);
  }
}

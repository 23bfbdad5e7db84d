// The contracts of a policy's parts (policy/hooks.hpp): every built-in part models its contract,
// things that are not parts do not, and a new scorer written in one place plugs into `plan` and
// into every test that iterates the preset list (tests/common/presets.hpp) by one line there.
#include <catch2/catch.hpp>

#include <vector>

#include "common/presets.hpp"
#include "common/test_cache.hpp"

using namespace testing;

namespace {

using cache = kvevict::block_table_cache<float>;

// A new scorer, whole: recent tokens score higher, and keys with a large first component too.
// Nothing else in the library changes for it.
struct recency_and_first_dim {
  float weight = 0.5f;
  template <class Cache, class T>
  kvevict::status validate(const Cache&, const kvevict::signals<T>&, int) const {
    return weight >= 0.0f ? kvevict::ok_status()
                          : kvevict::make_error(kvevict::errc::invalid_argument, "scorer.weight", "must be >= 0");
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int, int, int) const {
    return 0;
  }
  template <class Cache, class T>
  void score(const Cache& c, const kvevict::signals<T>&, int seq, int, float* out, std::size_t stride, void*) const {
    for (int h = 0; h < c.num_kv_heads(); ++h)
      for (int t = 0, n = c.seq_len(seq, h); t < n; ++t) {
        const auto* k = c.key(c.page(seq, h, t / c.page_size()), t % c.page_size(), h);
        out[static_cast<std::size_t>(h) * stride + t] =
            static_cast<float>(t) / static_cast<float>(n) + weight * kvevict::to_float(k[0]);
      }
  }
};

}  // namespace

TEST_CASE("hooks: every built-in part models its contract, and non-parts do not", "[hooks]") {
  using T = float;
  STATIC_REQUIRE(kvevict::is_scorer_v<kvevict::window_attention<>, cache, T>);
  STATIC_REQUIRE(kvevict::is_scorer_v<kvevict::accumulated_attention<>, cache, T>);
  STATIC_REQUIRE(kvevict::is_scorer_v<kvevict::positional, cache, T>);
  STATIC_REQUIRE(kvevict::is_scorer_v<kvevict::key_norm, cache, T>);
  STATIC_REQUIRE(kvevict::is_scorer_v<kvevict::precomputed, cache, T>);
  STATIC_REQUIRE(kvevict::is_scorer_v<recency_and_first_dim, cache, T>);
  STATIC_REQUIRE(kvevict::is_budget_v<kvevict::uniform_budget>);
  STATIC_REQUIRE(kvevict::is_budget_v<kvevict::pyramid_budget>);
  STATIC_REQUIRE(kvevict::is_budget_v<kvevict::adaptive_budget>);
  STATIC_REQUIRE(kvevict::is_granularity_v<kvevict::token_level, cache, T>);
  STATIC_REQUIRE(kvevict::is_granularity_v<kvevict::fixed_block<>, cache, T>);
  STATIC_REQUIRE(kvevict::is_granularity_v<kvevict::segment_level<>, cache, T>);
  STATIC_REQUIRE(kvevict::is_granularity_v<kvevict::adaptive_block<>, cache, T>);
  STATIC_REQUIRE(kvevict::is_segmenter_v<kvevict::delimiter_segmenter, cache, T>);
  STATIC_REQUIRE(kvevict::is_segmenter_v<kvevict::fixed_length_segmenter, cache, T>);
  STATIC_REQUIRE(kvevict::is_segmenter_v<kvevict::key_similarity_segmenter, cache, T>);
  // parts in the wrong place, and plain types
  STATIC_REQUIRE_FALSE(kvevict::is_scorer_v<kvevict::token_level, cache, T>);
  STATIC_REQUIRE_FALSE(kvevict::is_granularity_v<kvevict::window_attention<>, cache, T>);
  STATIC_REQUIRE_FALSE(kvevict::is_budget_v<kvevict::delimiter_segmenter>);
  STATIC_REQUIRE_FALSE(kvevict::is_segmenter_v<kvevict::uniform_budget, cache, T>);
  STATIC_REQUIRE_FALSE(kvevict::is_scorer_v<int, cache, T>);
#if KVEVICT_HAS_CONCEPTS
  STATIC_REQUIRE(kvevict::scorer<recency_and_first_dim, cache, T>);
  STATIC_REQUIRE(kvevict::granularity<kvevict::adaptive_block<>, cache, T>);
  STATIC_REQUIRE(kvevict::budget<kvevict::adaptive_budget>);
  STATIC_REQUIRE(kvevict::segmenter<kvevict::delimiter_segmenter, cache, T>);
#endif
  // and every preset of the list is made of parts
  for_each_preset(2, 4, 32, [](const auto& pr) {
    using P = std::decay_t<decltype(pr.policy)>;
    STATIC_REQUIRE(kvevict::is_scorer_v<typename P::scorer_type, cache, T>);
    STATIC_REQUIRE(kvevict::is_granularity_v<typename P::granularity_type, cache, T>);
    STATIC_REQUIRE(kvevict::is_budget_v<typename P::selector_type::budget_type>);
  });
}

TEST_CASE("hooks: a scorer written in one place plans with any granularity and budget", "[hooks]") {
  const logical L = make_logical(1, 2, 8, {120}, 6);
  auto c = build<float>(L, layout_kind::block_nhd, 16, 3);
  auto view = c.block_view();
  kvevict::signals<float> sig;
  kvevict::eviction_policy<recency_and_first_dim, kvevict::token_level, kvevict::selector<>> p;
  p.selector = {2, 4, kvevict::uniform_budget{40}};
  auto kept = kvevict::keep_plan_buffer::for_cache(p, view, sig);
  REQUIRE(kvevict::plan(kvevict::host, p, view, sig, kept.view()).ok());
  // its scores, read back through `score`, rank the kept tokens above the evicted ones
  std::vector<float> s(2 * 120);
  REQUIRE(kvevict::score(kvevict::host, p, view, sig, s.data(), 120).ok());
  for (int h = 0; h < 2; ++h) {
    REQUIRE(kept.counts[h] == 40);
    std::vector<bool> in(120, false);
    for (int j = 0; j < 40; ++j) in[kept.positions[static_cast<std::size_t>(h) * kept.capacity + j]] = true;
    float worst_kept = 1e30f, best_evicted = -1e30f;
    for (int t = 2; t < 116; ++t) {  // the compressible range: after 2 sinks, before the window of 4
      const float v = s[static_cast<std::size_t>(h) * 120 + t];
      if (in[t])
        worst_kept = std::min(worst_kept, v);
      else
        best_evicted = std::max(best_evicted, v);
    }
    REQUIRE(worst_kept >= best_evicted);
  }
  // with SABlock's granularity and Ada-KV's budgets too
  kvevict::eviction_policy<recency_and_first_dim, kvevict::adaptive_block<kvevict::fixed_length_segmenter>,
                           kvevict::selector<kvevict::adaptive_budget>>
      q;
  q.selector = {2, 4, kvevict::adaptive_budget{40}};
  auto kept2 = kvevict::keep_plan_buffer::for_cache(q, view, sig);
  REQUIRE(kvevict::plan(kvevict::host, q, view, sig, kept2.view()).ok());
  REQUIRE(kept2.counts[0] + kept2.counts[1] == 80);
  // and its own validation names its parameter
  p.scorer.weight = -1.0f;
  const auto st = kvevict::plan(kvevict::host, p, view, sig, kept.view());
  REQUIRE(std::string(st.argument) == "scorer.weight");
}

namespace {
// A new budget, whole: the first layers keep `entries`, the others half of their compressible part
// more than the protected tokens. It reads the sequence's rule (after the signals' overrides) and
// nothing else; `layer_budget` makes `plan` keep short sequences whole by its own measure.
struct halve_after_first_layer {
  static constexpr bool per_head = false;
  int entries = 64;
  kvevict::status validate(int sinks, int window) const {
    return entries >= sinks + window ? kvevict::ok_status()
                                     : kvevict::make_error(kvevict::errc::budget_too_small, "selector.budget.entries",
                                                           "below the protected tokens (sinks + window)");
  }
  static int max_budget(int e, int) { return e; }
  std::size_t scratch_bytes(int, int) const { return 0; }
  KVEVICT_HOST_DEVICE int layer_budget(const kvevict::row_rule& r) const {
    return r.layer == 0 ? r.entries : r.sinks + r.window + (r.entries - r.sinks - r.window) / 2;
  }
  void allocate(const kvevict::row_rule& r, const float*, std::size_t, const int*, int kv_heads, int* budgets,
                void*) const {
    for (int h = 0; h < kv_heads; ++h) budgets[h] = r.budget;
  }
};
}  // namespace

TEST_CASE("hooks: a budget written in one place gets each sequence's rule, overrides applied", "[hooks]") {
  STATIC_REQUIRE(kvevict::is_budget_v<halve_after_first_layer>);
  const logical L = make_logical(2, 2, 8, {100, 60}, 7);
  auto c = build<float>(L, layout_kind::block_nhd, 16, 3);
  auto view = c.block_view();
  kvevict::eviction_policy<kvevict::key_norm, kvevict::token_level, kvevict::selector<halve_after_first_layer>> p;
  p.selector = {2, 4, halve_after_first_layer{64}};
  kvevict::signals<float> sig;
  sig.num_layers = 2;
  const std::int32_t budgets[2] = {64, 40}, sinks[2] = {2, 0};
  sig.seq_budgets = budgets;
  sig.seq_sinks = sinks;
  for (int layer = 0; layer < 2; ++layer) {
    sig.layer = layer;
    // the rule as every layer computes it
    const kvevict::row_rule r0 = kvevict::detail::rule_of(p, view, sig, 0), r1 = kvevict::detail::rule_of(p, view, sig, 1);
    REQUIRE((r0.entries == 64 && r0.sinks == 2 && r0.window == 4 && r0.longest == 100 && r0.layer == layer));
    REQUIRE((r1.entries == 40 && r1.sinks == 0 && r1.window == 4 && r1.longest == 60));
    REQUIRE(r0.budget == (layer == 0 ? 64 : 2 + 4 + 29));
    REQUIRE(r1.budget == (layer == 0 ? 40 : 0 + 4 + 18));
    REQUIRE((r0.range(100).lo == 2 && r0.range(100).hi == 96 && r1.range(3).lo == 0 && r1.range(3).hi == 0));
    auto kept = kvevict::keep_plan_buffer::for_cache(p, view, sig);
    REQUIRE(kvevict::plan(kvevict::host, p, view, sig, kept.view()).ok());
    for (int h = 0; h < 2; ++h) {
      CHECK(kept.counts[h] == r0.budget);
      CHECK(kept.counts[2 + h] == r1.budget);
    }
  }
  // kept whole by the budget's own measure: 60 tokens fit the first layer's 64, not the second's 34
  const std::int32_t big[2] = {64, 64};
  sig.seq_budgets = big;
  sig.layer = 0;
  CHECK(kvevict::detail::rule_of(p, view, sig, 1).kept_whole());
  sig.layer = 1;
  CHECK_FALSE(kvevict::detail::rule_of(p, view, sig, 1).kept_whole());
}

// Tensor-parallel shards: the KV heads split over 2 and 4 shards, each scoring its own heads, the
// all-gather simulated by copying the scores into one array, and each shard selecting its rows:
// every shard's rows equal the single-device plan's, for every preset. Token-level policies with
// per-head budgets need no gather: `plan` on a shard alone gives the same rows.
#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/presets.hpp"
#include "common/shards.hpp"
#include "common/test_cache.hpp"

using namespace testing;

namespace {

constexpr int kSeqs = 2, kKvHeads = 8, kGroup = 2, kDim = 16, kWindow = 8, kStride = 300;

struct inputs {
  std::vector<float> q, sums;
  std::vector<std::int32_t> ids;
  kvevict::signals<float> sig(const std::vector<float>& qq, const std::vector<float>& ss, int q_heads) const {
    kvevict::signals<float> g;
    g.queries = qq.data();
    g.num_q_heads = q_heads;
    g.attention_sums = ss.data();
    g.sums_stride = kStride;
    g.token_ids = ids.data();
    g.token_ids_stride = kStride;
    g.layer = 1;
    g.num_layers = 4;
    return g;
  }
};

std::vector<std::int32_t> row_of(const kvevict::keep_plan_buffer& b, int r) {
  return std::vector<std::int32_t>(b.positions.begin() + static_cast<std::ptrdiff_t>(r) * b.capacity,
                                   b.positions.begin() + static_cast<std::ptrdiff_t>(r) * b.capacity + b.counts[r]);
}

template <class T = float, class Policy>
void check_shards(const char* what, const Policy& p, bool needs_gather, layout_kind kind, const logical& L,
                  const inputs& in) {
  INFO(what << " in " << name(kind) << (std::is_same_v<T, float> ? "" : " (quantised keys)"));
  const int q_heads = kKvHeads * kGroup;
  test_cache<T> full = build<T>(L, kind, 16, 3);
  std::vector<std::int32_t> all_lens(L.lens.begin(), L.lens.end());
  kvevict::keep_plan_buffer whole(1, 1);
  full.visit([&](auto view) {
    const auto sig = in.sig(in.q, in.sums, q_heads);
    whole = kvevict::keep_plan_buffer::for_cache(p, view, sig);
    const auto st = kvevict::plan(kvevict::host, p, view, sig, whole.view());
    INFO(st.message());
    REQUIRE(st.ok());
  });
  bool alone_differs = false;  // some shard's own plan differs from the single-device rows
  for (int shards : {2, 4}) {
    const int kvh = kKvHeads / shards;
    // every shard scores its heads; the "all-gather" copies them into one [seqs, heads, stride] array
    std::vector<float> gathered(static_cast<std::size_t>(kSeqs) * kKvHeads * kStride, 0.0f);
    std::vector<test_cache<T>> parts;
    for (int i = 0; i < shards; ++i) parts.push_back(build<T>(slice(L, i * kvh, kvh), kind, 16, 5 + i));
    for (int i = 0; i < shards; ++i) {
      const auto q = heads_of(in.q, kSeqs, q_heads, kWindow * kDim, i * kvh * kGroup, kvh * kGroup);
      const auto sums = heads_of(in.sums, kSeqs, q_heads, kStride, i * kvh * kGroup, kvh * kGroup);
      const auto sig = in.sig(q, sums, kvh * kGroup);
      parts[i].visit([&](auto view) {
        std::vector<float> mine(static_cast<std::size_t>(kSeqs) * kvh * kStride);
        REQUIRE(kvevict::score(kvevict::host, p, view, sig, mine.data(), kStride).ok());
        for (int s = 0; s < kSeqs; ++s)
          std::memcpy(&gathered[(static_cast<std::size_t>(s) * kKvHeads + i * kvh) * kStride],
                      &mine[static_cast<std::size_t>(s) * kvh * kStride], sizeof(float) * kvh * kStride);
      });
    }
    for (int i = 0; i < shards; ++i) {
      INFO(shards << " shards, shard " << i);
      const auto q = heads_of(in.q, kSeqs, q_heads, kWindow * kDim, i * kvh * kGroup, kvh * kGroup);
      const auto sums = heads_of(in.sums, kSeqs, q_heads, kStride, i * kvh * kGroup, kvh * kGroup);
      const auto sig = in.sig(q, sums, kvh * kGroup);
      parts[i].visit([&](auto view) {
        const kvevict::head_shard shard{i * kvh, kKvHeads, all_lens.data()};
        kvevict::keep_plan_buffer mine(kvevict::plan_rows(view), kvevict::select_capacity(p, view, sig, shard));
        const auto st = kvevict::select(kvevict::host, p, view, sig, shard, gathered.data(), kStride, mine.view());
        INFO(st.message());
        REQUIRE(st.ok());
        // and plan on the shard alone, which is right only for policies that need no gather
        auto alone = kvevict::keep_plan_buffer::for_cache(p, view, sig);
        REQUIRE(kvevict::plan(kvevict::host, p, view, sig, alone.view()).ok());
        bool alone_equal = true;
        for (int s = 0; s < kSeqs; ++s)
          for (int h = 0; h < kvh; ++h) {
            const auto want = row_of(whole, s * kKvHeads + i * kvh + h);
            REQUIRE(row_of(mine, s * kvh + h) == want);
            alone_equal = alone_equal && row_of(alone, s * kvh + h) == want;
          }
        if (!needs_gather) REQUIRE(alone_equal);
        alone_differs = alone_differs || !alone_equal;
      });
    }
  }
  // where heads interact, the gather is what makes the rows right: the shards alone get them wrong
  if (needs_gather) REQUIRE(alone_differs);
}

}  // namespace

TEST_CASE("shards: every shard's rows equal the single-device plan, 2 and 4 shards, every preset", "[shards]") {
  const int q_heads = kKvHeads * kGroup;
  inputs in;
  std::mt19937 rng(8);
  std::normal_distribution<float> nd;
  in.q.resize(static_cast<std::size_t>(kSeqs) * q_heads * kWindow * kDim);
  for (auto& x : in.q) x = 2.0f * nd(rng);
  in.sums.resize(static_cast<std::size_t>(kSeqs) * q_heads * kStride);
  for (auto& x : in.sums) x = std::abs(nd(rng));
  in.ids.resize(static_cast<std::size_t>(kSeqs) * kStride);
  for (std::size_t i = 0; i < in.ids.size(); ++i)  // preset_delimiters: 1 ends a clause, 2 a sentence
    in.ids[i] = i % 37 == 0 ? 2 : i % 7 == 0 ? 1 : 5 + static_cast<int>(rng() % 50);
  for (layout_kind kind : {layout_kind::block_nhd, layout_kind::head_rows}) {
    const logical L = make_logical(kSeqs, kKvHeads, kDim, {260, 190}, 9, kind == layout_kind::head_rows);
    for_each_preset(4, kWindow, 60, [&](const auto& pr) { check_shards(pr.name, pr.policy, pr.heads_interact, kind, L, in); });
  }
  // quantised keys (fp8 e4m3, int8; float queries): the same matrix on a block table
  const logical L = make_logical(kSeqs, kKvHeads, kDim, {260, 190}, 9);
  for_each_preset(4, kWindow, 60, [&](const auto& pr) {
    check_shards<kvevict::float8_e4m3>(pr.name, pr.policy, pr.heads_interact, layout_kind::block_nhd, L, in);
    check_shards<kvevict::int8>(pr.name, pr.policy, pr.heads_interact, layout_kind::block_nhd, L, in);
  });
}

TEST_CASE("shards: select names bad shard arguments and writes nothing", "[shards][errors]") {
  const logical L = make_logical(1, 2, 8, {100}, 4);
  test_cache<float> c = build<float>(L, layout_kind::block_nhd, 16, 2);
  auto view = c.block_view();
  kvevict::chunkkv<kvevict::precomputed> p;
  std::vector<float> scores(4 * 128, 1.0f);
  p.selector = {2, 4, kvevict::uniform_budget{30}};
  kvevict::signals<float> sig;
  kvevict::keep_plan_buffer out(2, 200);
  const std::vector<std::int32_t> before = out.positions;
  auto arg = [&](kvevict::head_shard shard, const float* sc, std::size_t stride) {
    const auto st = kvevict::select(kvevict::host, p, view, sig, shard, sc, stride, out.view());
    REQUIRE(!st.ok());
    REQUIRE(out.positions == before);
    return std::string(st.argument);
  };
  REQUIRE(arg({0, 1, nullptr}, scores.data(), 128) == "shard.total_kv_heads");
  REQUIRE(arg({3, 4, nullptr}, scores.data(), 128) == "shard.first_head");
  REQUIRE(arg({0, 4, nullptr}, nullptr, 128) == "scores");
  REQUIRE(arg({0, 4, nullptr}, scores.data(), 50) == "stride");
  const std::int32_t wrong_lens[] = {100, 99, 100, 100};
  REQUIRE(arg({0, 4, wrong_lens}, scores.data(), 128) == "shard.seq_lens");
  scores[3 * 128 + 7] = std::nanf("");  // another shard's head: still checked
  REQUIRE(arg({0, 4, nullptr}, scores.data(), 128) == "scores");
  scores[3 * 128 + 7] = 1.0f;
  kvevict::keep_plan_buffer small(2, 5);
  const auto st = kvevict::select(kvevict::host, p, view, sig, {0, 4, nullptr}, scores.data(), 128, small.view());
  REQUIRE(std::string(st.argument) == "plan.capacity");
  REQUIRE(kvevict::select(kvevict::host, p, view, sig, {2, 4, nullptr}, scores.data(), 128, out.view()).ok());
  // a (sequence, head)-row cache needs every head's length
  test_cache<float> hr = build<float>(L, layout_kind::head_rows, 16, 2);
  auto hv = hr.head_rows_view();
  const auto st2 = kvevict::select(kvevict::host, p, hv, sig, {0, 4, nullptr}, scores.data(), 128, out.view());
  REQUIRE(std::string(st2.argument) == "shard.seq_lens");
}

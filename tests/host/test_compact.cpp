#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>
#include <random>

#include <kvevict/detail/compact_schedule.hpp>

#include "common/test_cache.hpp"

using namespace testing;

namespace {

// Random sorted keep sets: the same count for every head of a sequence unless per_head.
kvevict::keep_plan_buffer random_plan(const std::vector<int>& lens, int num_seqs, int kvh, bool per_head,
                                      std::mt19937& rng) {
  kvevict::keep_plan_buffer p(num_seqs * kvh, 1 + *std::max_element(lens.begin(), lens.end()));
  for (int s = 0; s < num_seqs; ++s) {
    const int n0 = lens[s * kvh];
    const int shared_count = n0 == 0 ? 0 : static_cast<int>(rng() % (n0 + 1));
    for (int h = 0; h < kvh; ++h) {
      const int n = lens[s * kvh + h];
      const int cnt = per_head ? (n == 0 ? 0 : static_cast<int>(rng() % (n + 1))) : shared_count;
      std::vector<int> all(n);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      all.resize(cnt);
      std::sort(all.begin(), all.end());
      std::copy(all.begin(), all.end(), p.positions.begin() + static_cast<size_t>(s * kvh + h) * p.capacity);
      p.counts[s * kvh + h] = cnt;
    }
  }
  return p;
}

// With `token_scales`, every K and V row has a scale beside the pages, which moves with its row.
template <class T>
void check_compaction(layout_kind kind, int ps, std::uint32_t seed, bool token_scales = false) {
  std::mt19937 rng(seed);
  const bool rows = kind == layout_kind::head_rows;
  const int kvh = 3, d = 5;
  const std::vector<int> seq_lens = {ps * 3 + 1, ps - 1, 0, ps * 2, 1};
  const logical L = make_logical(5, kvh, d, seq_lens, seed, rows);
  auto c = build<T>(L, kind, ps, seed);
  const auto plan = random_plan(L.lens, 5, kvh, rows, rng);
  const auto k0 = c.k, v0 = c.v;
  auto expect_k = k0, expect_v = v0;
  std::vector<float> ks(c.k.size() / d), vs(ks.size());
  for (std::size_t i = 0; i < ks.size(); ++i) ks[i] = 1.0f + static_cast<float>(i), vs[i] = -1.0f - static_cast<float>(i);
  const auto ks0 = ks, vs0 = vs;
  auto expect_ks = ks, expect_vs = vs;
  std::vector<int> expect_freed;
  for (int s = 0; s < 5; ++s)
    for (int h = 0; h < kvh; ++h) {
      const int r = s * kvh + h;
      for (int j = 0; j < plan.counts[r]; ++j)
        for (int x = 0; x < d; ++x) {
          const int src = plan.positions[static_cast<size_t>(r) * plan.capacity + j];
          expect_k[c.addr(s, h, j) + x] = k0[c.addr(s, h, src) + x];
          expect_v[c.addr(s, h, j) + x] = v0[c.addr(s, h, src) + x];
          expect_ks[c.addr(s, h, j) / d] = ks0[c.addr(s, h, src) / d];
          expect_vs[c.addr(s, h, j) / d] = vs0[c.addr(s, h, src) / d];
        }
      if (kind != layout_kind::dense && (rows || h == 0)) {
        const auto& pg = c.pages[c.list_of(s, h)];
        for (size_t lp = (plan.counts[r] + c.page_size - 1) / c.page_size; lp < pg.size(); ++lp)
          expect_freed.push_back(pg[lp]);
      }
    }
  std::vector<std::int32_t> new_lens(5 * kvh, -1), freed(64, -1);
  kvevict::compact_result res{new_lens.data(), static_cast<int>(new_lens.size()), freed.data(), 64};
  c.visit([&](auto view) {
    if (token_scales) view.k_token_scales = ks.data(), view.v_token_scales = vs.data();
    REQUIRE(kvevict::compact(kvevict::host, view, plan.const_view(), res).ok());
  });
  INFO(name(kind) << " page_size " << ps);
  REQUIRE(std::memcmp(c.k.data(), expect_k.data(), c.k.size() * sizeof(T)) == 0);
  REQUIRE(std::memcmp(c.v.data(), expect_v.data(), c.v.size() * sizeof(T)) == 0);
  REQUIRE(std::vector<int>(freed.begin(), freed.begin() + res.num_freed) == expect_freed);
  REQUIRE(std::vector<int>(new_lens.begin(), new_lens.end()) == plan.counts);
  REQUIRE(ks == (token_scales ? expect_ks : ks0));
  REQUIRE(vs == (token_scales ? expect_vs : vs0));
}

}  // namespace

TEMPLATE_TEST_CASE("compaction equals a naive gather byte for byte (every layout, page_size +-1)", "[compact]", float,
                   kvevict::float8_e4m3, kvevict::float8_e5m2, kvevict::int8,
                   kvevict::half, kvevict::bfloat16) {
  for (layout_kind kind : all_layouts)
    for (int ps : {7, 8, 9})
      for (std::uint32_t seed : {1u, 2u, 3u}) check_compaction<TestType>(kind, ps, seed);
}

TEMPLATE_TEST_CASE("compaction moves per-(token, head) scales with their rows (every layout)", "[compact][quantized]",
                   kvevict::float8_e4m3, kvevict::int8, kvevict::bfloat16) {
  for (layout_kind kind : all_layouts)
    for (int ps : {7, 8})
      for (std::uint32_t seed : {1u, 2u}) check_compaction<TestType>(kind, ps, seed, true);
}

TEST_CASE("evict = plan + compact, and the compacted cache holds the planned tokens in order", "[compact]") {
  const int kvh = 2, d = 16, w = 4;
  const logical L = make_logical(2, kvh, d, {50, 31}, 17);
  for (layout_kind kind : {layout_kind::block_nhd, layout_kind::csr_hnd, layout_kind::dense}) {
    auto c = build<kvevict::bfloat16>(L, kind, 8, 2);
    const auto k0 = c.k;
    std::vector<kvevict::bfloat16> q(2 * 4 * w * d);
    std::mt19937 rng(5);
    std::normal_distribution<float> nd;
    for (auto& x : q) x = kvevict::from_float<kvevict::bfloat16>(nd(rng));
    kvevict::signals<kvevict::bfloat16> sig;
    sig.queries = q.data();
    sig.num_q_heads = 4;
    kvevict::snapkv<> p;
    p.selector = {2, w, kvevict::uniform_budget{12}};
    kvevict::keep_plan_buffer kept(4, 12);
    std::vector<std::int32_t> lens(4), freed(16);
    kvevict::compact_result res{lens.data(), static_cast<int>(lens.size()), freed.data(), 16};
    c.visit([&](auto view) { REQUIRE(kvevict::evict(kvevict::host, p, view, sig, kept.view(), res).ok()); });
    for (int s = 0; s < 2; ++s)
      for (int h = 0; h < kvh; ++h) {
        const auto pos = kept.kept(s * kvh + h);
        REQUIRE(pos.size() == 12u);
        REQUIRE(lens[s * kvh + h] == 12);
        for (int j = 0; j < 12; ++j) REQUIRE(std::memcmp(&c.k[c.addr(s, h, j)], &k0[c.addr(s, h, pos[j])], d * 2) == 0);
      }
    // Freed: pages past ceil(12 / 8) = 2 of each sequence (dense caches free none).
    CHECK(res.num_freed == (kind == layout_kind::dense ? 0 : (7 - 2) + (4 - 2)));
  }
}

TEST_CASE("a shared-heads plan is reused for the following layers (ChunkKV's index reuse)", "[compact]") {
  // Plan once on layer A, compact layer B with the same plan: B keeps the same positions.
  const logical A = make_logical(1, 2, 8, {60}, 1), B = make_logical(1, 2, 8, {60}, 2);
  auto ca = build<float>(A, layout_kind::block_nhd, 8, 1);
  auto cb = build<float>(B, layout_kind::block_nhd, 8, 1);  // same seed: same page table
  REQUIRE(ca.pages == cb.pages);
  std::vector<float> scores(2 * 60);
  for (int i = 0; i < 120; ++i) scores[i] = float((i * 37) % 101);
  kvevict::chunkkv<kvevict::precomputed> p;
  p.scorer = {scores.data(), 60};
  p.selector = {2, 4, kvevict::uniform_budget{20}};
  kvevict::keep_plan_buffer kept(2, 20);
  REQUIRE(kvevict::plan(kvevict::host, p, ca.block_view(), kvevict::signals<float>{}, kept.view()).ok());
  REQUIRE(kept.kept(0) == kept.kept(1));
  const auto kb = cb.k;
  std::vector<std::int32_t> lens(2), freed(8);
  kvevict::compact_result out{lens.data(), static_cast<int>(lens.size()), freed.data(), 8};
  REQUIRE(kvevict::compact(kvevict::host, cb.block_view(), kept.const_view(), out).ok());
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 20; ++j)
      REQUIRE(std::memcmp(&cb.k[cb.addr(0, h, j)], &kb[cb.addr(0, h, kept.kept(h)[j])], 8 * sizeof(float)) == 0);
}

// The device compaction's tile schedule (cuda/compact.cuh) driven through random interleavings:
// tiles start in ticket order, read their sources, and write only after the tiles named by
// `first_blocking_tile` have read. Every interleaving the kernel allows must give the gathered row,
// and some tile must always be able to move (no deadlock).
TEST_CASE("in-place tile schedule of the CUDA compaction is hazard-free under any interleaving", "[compact][cuda]") {
  std::mt19937 rng(2024);
  for (int trial = 0; trial < 400; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 300), tile = 1 + static_cast<int>(rng() % 9);
    std::vector<int> all(n);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    const int c = static_cast<int>(rng() % (n + 1));
    std::vector<std::int32_t> pos(all.begin(), all.begin() + c);
    std::sort(pos.begin(), pos.end());
    if (trial % 5 == 0)  // a kept prefix (no moves) followed by moves
      for (int j = 0; j < c / 2; ++j) pos[j] = j;
    std::sort(pos.begin(), pos.end());
    pos.erase(std::unique(pos.begin(), pos.end()), pos.end());
    const int cnt = static_cast<int>(pos.size()), tiles = (cnt + tile - 1) / tile;
    std::vector<int> slot(n);
    std::iota(slot.begin(), slot.end(), 0);  // slot t holds token t
    std::vector<int> state(tiles, 0);        // 0 not started, 1 started, 2 read, 3 written
    std::vector<std::vector<int>> buf(tiles);
    int started = 0, done = 0;
    while (done < tiles) {
      std::vector<std::pair<int, int>> moves;  // (tile, action)
      if (started < tiles) moves.push_back({started, 0});
      for (int k = 0; k < started; ++k) {
        if (state[k] == 1) moves.push_back({k, 1});
        if (state[k] == 2) {
          bool ready = true;
          for (int t = kvevict::detail::first_blocking_tile(pos.data(), k * tile, tile); t < k; ++t)
            ready = ready && state[t] >= 2;
          if (ready) moves.push_back({k, 2});
        }
      }
      REQUIRE(!moves.empty());  // no deadlock
      const auto [k, action] = moves[rng() % moves.size()];
      const int j0 = k * tile, j1 = std::min(cnt, j0 + tile);
      if (action == 0) {
        state[k] = 1;
        ++started;
      } else if (action == 1) {
        for (int j = j0; j < j1; ++j) buf[k].push_back(slot[pos[j]]);
        state[k] = 2;
      } else {
        for (int j = j0; j < j1; ++j)
          if (pos[j] != j) slot[j] = buf[k][j - j0];
        state[k] = 3;
        ++done;
      }
    }
    for (int j = 0; j < cnt; ++j) REQUIRE(slot[j] == pos[j]);
  }
}

TEST_CASE("the CUDA compaction's 32-way warp search finds the binary search's first blocking tile", "[compact][cuda]") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 5000), tile = 1 + static_cast<int>(rng() % 80);
    std::vector<std::int32_t> pos;
    for (int t = 0; t < n; ++t)
      if (rng() % 3 != 0 || trial % 7 == 0) pos.push_back(t);  // every 7th: everything kept, no moves
    const int cnt = static_cast<int>(pos.size());
    int steps_max = 0;
    for (int j0 = 0; j0 < cnt; j0 += tile) {
      int steps = 0;
      const int got = kvevict::detail::first_blocking_tile_32way(j0, tile, [&](int base, int step, int end) {
        ++steps;
        unsigned m = 0;
        for (int lane = 0; lane < 32; ++lane) {  // what the 32 lanes' ballot returns
          const int idx = base + lane * step;
          if (idx >= end || pos[idx] >= j0) m |= 1u << lane;
        }
        return m;
      });
      REQUIRE(got == kvevict::detail::first_blocking_tile(pos.data(), j0, tile));
      steps_max = std::max(steps_max, steps);
    }
    CHECK(steps_max <= 4);  // log32(5000) < 3, plus the last exact step
  }
}

// The device compaction's output stage (cuda/compact.cuh, compact_outputs_stage): every block walks
// all rows in chunks, scans the freed-page counts with a carry, and writes the rows it owns (row r
// belongs to block r % blocks) at the scanned offsets. Emulated block by block: every row is written
// by exactly its block, once, and the freed list equals the sequential one (row order).
TEST_CASE("device compaction output stage: row ownership and freed offsets", "[compact][device]") {
  std::mt19937 rng(20261129);
  for (int trial = 0; trial < 400; ++trial) {
    const int rows = static_cast<int>(rng() % 700), blocks = 1 + static_cast<int>(rng() % 600);
    const int chunk = trial % 3 == 0 ? 256 : 1 + static_cast<int>(rng() % 64);
    std::vector<int> freed(static_cast<std::size_t>(rows));
    for (auto& f : freed) f = rng() % 4 == 0 ? 0 : static_cast<int>(rng() % 9);
    std::vector<std::pair<int, int>> expect;  // (row, k): the sequential freed list
    for (int r = 0; r < rows; ++r)
      for (int k = 0; k < freed[r]; ++k) expect.emplace_back(r, k);
    std::vector<std::pair<int, int>> got(expect.size(), {-1, -1});
    std::vector<int> writer(static_cast<std::size_t>(rows), -1), writes(static_cast<std::size_t>(rows), 0);
    for (int b = 0; b < blocks; ++b) {
      int carry = 0;
      for (int r0 = 0; r0 < rows; r0 += chunk) {
        const int end = std::min(chunk, rows - r0);
        std::vector<int> at(static_cast<std::size_t>(end));
        int sum = 0;
        for (int i = 0; i < end; ++i) {  // the block scan's exclusive sums
          at[i] = carry + sum;
          sum += freed[r0 + i];
        }
        for (int i = kvevict::detail::first_owned_in_chunk(r0, blocks, b); i < end; i += blocks) {
          const int r = r0 + i;
          writer[r] = b;
          ++writes[r];
          for (int k = 0; k < freed[r]; ++k) got[static_cast<std::size_t>(at[i] + k)] = {r, k};
        }
        carry += sum;
      }
      REQUIRE(carry == static_cast<int>(expect.size()));  // num_freed, as every block computes it
    }
    for (int r = 0; r < rows; ++r) {
      REQUIRE(writes[r] == 1);
      REQUIRE(writer[r] == r % blocks);
    }
    REQUIRE(got == expect);
  }
}

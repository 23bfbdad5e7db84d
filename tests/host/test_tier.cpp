// Evict to a tier and restore: compact copies the evicted rows out with their positions, restore
// merges chosen positions back in order; a full round trip gives back the cache byte for byte, in
// every layout, and bad input changes nothing.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>
#include <memory>
#include <string>
#include <random>
#include <vector>

#include "common/test_cache.hpp"

using namespace testing;

namespace {

// A random plan: per (sequence, head) a sorted subset of about 40% of the row, the same positions
// for every head of a sequence when the heads share a page table.
template <class View>
kvevict::keep_plan_buffer random_plan(const View& view, std::uint32_t seed) {
  const int kvh = view.num_kv_heads(), rows = view.num_seqs() * kvh;
  int cap = 1;
  for (int s = 0; s < view.num_seqs(); ++s)
    for (int h = 0; h < kvh; ++h) cap = std::max(cap, view.seq_len(s, h));
  kvevict::keep_plan_buffer kept(rows, cap);
  std::mt19937 rng(seed);
  for (int r = 0; r < rows; ++r) {
    const int s = r / kvh, h = r % kvh, n = view.seq_len(s, h);
    if (!View::per_head_rows && h > 0) {
      kept.counts[r] = kept.counts[s * kvh];
      std::copy_n(kept.view().row(s * kvh), kept.counts[r], kept.view().row(r));
      continue;
    }
    int c = 0;
    for (int t = 0; t < n; ++t)
      if (rng() % 5 < 2) kept.view().row(r)[c++] = t;
    kept.counts[r] = c;
  }
  return kept;
}

template <class T>
std::vector<unsigned char> row_bytes(const test_cache<T>& c, int s, int h, int t) {
  std::vector<unsigned char> b(sizeof(T) * 2 * c.head_dim);
  std::memcpy(b.data(), c.k.data() + c.addr(s, h, t), sizeof(T) * c.head_dim);
  std::memcpy(b.data() + sizeof(T) * c.head_dim, c.v.data() + c.addr(s, h, t), sizeof(T) * c.head_dim);
  return b;
}

// What an engine's allocator may do to slots past a row's new length: overwrite them.
template <class T>
void poison_tail(test_cache<T>& c, const kvevict::keep_plan_buffer& kept, const logical& L) {
  for (int s = 0; s < c.num_seqs; ++s)
    for (int h = 0; h < c.kv_heads; ++h)
      for (int t = kept.counts[s * c.kv_heads + h]; t < L.lens[static_cast<std::size_t>(s) * c.kv_heads + h]; ++t) {
        std::memset(c.k.data() + c.addr(s, h, t), 0x7f, sizeof(T) * c.head_dim);
        std::memset(c.v.data() + c.addr(s, h, t), 0x7f, sizeof(T) * c.head_dim);
      }
}

}  // namespace

TEMPLATE_TEST_CASE("tier: compact to a tier, then restore everything, gives back the cache byte for byte",
                   "[tier][compact]", float, kvevict::bfloat16) {
  using T = TestType;
  for (layout_kind kind : all_layouts) {
    INFO(name(kind));
    const bool per_head = kind == layout_kind::head_rows;
    logical L = make_logical(2, 3, 8, {70, 45}, 11, per_head);
    const test_cache<T> original = build<T>(L, kind, 16, 4);
    test_cache<T> c = original;
    c.visit([&](auto view) {
      auto kept = random_plan(view, 5);
      const std::int64_t evicted = kvevict::evicted_row_count(view, kept.const_view());
      REQUIRE(evicted > 0);
      kvevict::evicted_rows_buffer<T> tier(kvevict::plan_rows(view), evicted, view.head_dim());
      auto res = kvevict::compact_result_buffer::for_cache(view);
      const auto st = kvevict::compact(kvevict::host, view, kept.const_view(), res.result, tier.tier);
      INFO(st.message());
      REQUIRE(st.ok());
      // the tier holds every evicted token, in position order, with its bytes
      kvevict::keep_plan_buffer request(kvevict::plan_rows(view), static_cast<int>(evicted));
      for (int r = 0; r < kvevict::plan_rows(view); ++r) {
        const int s = r / view.num_kv_heads(), h = r % view.num_kv_heads(), n = view.seq_len(s, h);
        std::vector<int> expect;
        for (int t = 0, j = 0; t < n; ++t) {
          if (j < kept.counts[r] && kept.view().row(r)[j] == t)
            ++j;
          else
            expect.push_back(t);
        }
        const std::int64_t b = tier.row_offsets[r], e = tier.row_offsets[r + 1];
        REQUIRE(e - b == static_cast<std::int64_t>(expect.size()));
        for (std::int64_t i = b; i < e; ++i) {
          REQUIRE(tier.positions[i] == expect[i - b]);
          REQUIRE(std::memcmp(tier.keys.data() + i * view.head_dim(), original.k.data() + original.addr(s, h, expect[i - b]),
                              sizeof(T) * view.head_dim()) == 0);
          REQUIRE(std::memcmp(tier.values.data() + i * view.head_dim(),
                              original.v.data() + original.addr(s, h, expect[i - b]), sizeof(T) * view.head_dim()) == 0);
          request.view().row(r)[i - b] = expect[i - b];
        }
        request.counts[r] = static_cast<int>(expect.size());
      }
      REQUIRE(tier.row_offsets[kvevict::plan_rows(view)] == evicted);
      poison_tail(c, kept, L);
      REQUIRE(c.k != original.k);
      // the rows grow back to their full length (the view's lengths never changed here)
      kvevict::keep_plan_buffer merged(kvevict::plan_rows(view), L.max_len);
      const auto rs = kvevict::restore(kvevict::host, view, kept.const_view(), tier.tier, request.const_view(),
                                       merged.view());
      INFO(rs.message());
      REQUIRE(rs.ok());
      for (int r = 0; r < kvevict::plan_rows(view); ++r) {
        REQUIRE(merged.counts[r] == view.seq_len(r / view.num_kv_heads(), r % view.num_kv_heads()));
        for (int j = 0; j < merged.counts[r]; ++j) REQUIRE(merged.view().row(r)[j] == j);
      }
    });
    REQUIRE(c.k == original.k);  // every byte, unused slots and spare pages included
    REQUIRE(c.v == original.v);
  }
}

TEST_CASE("tier: per-(token, head) scales go to the tier with their rows and come back", "[tier][quantized]") {
  using T = kvevict::float8_e4m3;
  for (layout_kind kind : all_layouts) {
    INFO(name(kind));
    const bool per_head = kind == layout_kind::head_rows;
    logical L = make_logical(2, 3, 8, {70, 45}, 11, per_head);
    const test_cache<T> original = build<T>(L, kind, 16, 4);
    test_cache<T> c = original;
    std::vector<float> ks(c.k.size() / 8), vs(ks.size());
    for (std::size_t i = 0; i < ks.size(); ++i) ks[i] = 0.5f + static_cast<float>(i), vs[i] = 0.25f * static_cast<float>(i);
    const auto ks0 = ks, vs0 = vs;
    c.visit([&](auto view) {
      view.k_token_scales = ks.data();
      view.v_token_scales = vs.data();
      auto kept = random_plan(view, 9);
      const std::int64_t evicted = kvevict::evicted_row_count(view, kept.const_view());
      kvevict::evicted_rows_buffer<T> tier(kvevict::plan_rows(view), evicted, view.head_dim());
      auto res = kvevict::compact_result_buffer::for_cache(view);
      // a tier without room for the scales is refused, and nothing is written
      auto no_scales = tier.tier;
      no_scales.value_scales = nullptr;
      const auto bad = kvevict::compact(kvevict::host, view, kept.const_view(), res.result, no_scales);
      REQUIRE(bad.code == kvevict::errc::invalid_argument);
      REQUIRE(std::string(bad.argument) == "tier.value_scales");
      REQUIRE(std::memcmp(c.k.data(), original.k.data(), sizeof(T) * c.k.size()) == 0);
      REQUIRE(ks == ks0);
      REQUIRE(kvevict::compact(kvevict::host, view, kept.const_view(), res.result, tier.tier).ok());
      kvevict::keep_plan_buffer request(kvevict::plan_rows(view), static_cast<int>(evicted));
      for (int r = 0; r < kvevict::plan_rows(view); ++r) {
        const int s = r / view.num_kv_heads(), h = r % view.num_kv_heads();
        const std::int64_t b = tier.row_offsets[r], e = tier.row_offsets[r + 1];
        for (std::int64_t i = b; i < e; ++i) {
          const std::size_t row = original.addr(s, h, tier.positions[i]) / 8;
          REQUIRE(tier.key_scales[i] == ks0[row]);
          REQUIRE(tier.value_scales[i] == vs0[row]);
          request.view().row(r)[i - b] = tier.positions[i];
        }
        request.counts[r] = static_cast<int>(e - b);
      }
      for (int s = 0; s < 2; ++s)  // the allocator may reuse the freed slots' scales too
        for (int h = 0; h < 3; ++h)
          for (int t = kept.counts[s * 3 + h]; t < L.lens[static_cast<std::size_t>(s) * 3 + h]; ++t)
            ks[c.addr(s, h, t) / 8] = vs[c.addr(s, h, t) / 8] = -7.0f;
      kvevict::keep_plan_buffer merged(kvevict::plan_rows(view), L.max_len);
      REQUIRE(kvevict::restore(kvevict::host, view, kept.const_view(), tier.tier, request.const_view(), merged.view())
                  .ok());
    });
    REQUIRE(std::memcmp(c.k.data(), original.k.data(), sizeof(T) * c.k.size()) == 0);
    REQUIRE(std::memcmp(c.v.data(), original.v.data(), sizeof(T) * c.v.size()) == 0);
    REQUIRE(ks == ks0);
    REQUIRE(vs == vs0);
  }
}

TEST_CASE("tier: a partial restore merges the chosen positions in order", "[tier]") {
  for (layout_kind kind : all_layouts) {
    INFO(name(kind));
    const bool per_head = kind == layout_kind::head_rows;
    logical L = make_logical(2, 2, 4, {50, 33}, 17, per_head);
    const test_cache<float> original = build<float>(L, kind, 8, 6);
    test_cache<float> c = original;
    kvevict::keep_plan_buffer kept(1, 1), request(1, 1);
    std::vector<std::int64_t> unused;
    auto tier = std::make_unique<kvevict::evicted_rows_buffer<float>>(1, 0, 4);
    c.visit([&](auto view) {
      kept = random_plan(view, 9);
      tier = std::make_unique<kvevict::evicted_rows_buffer<float>>(
          kvevict::plan_rows(view), kvevict::evicted_row_count(view, kept.const_view()), view.head_dim());
      auto res = kvevict::compact_result_buffer::for_cache(view);
      REQUIRE(kvevict::compact(kvevict::host, view, kept.const_view(), res.result, tier->tier).ok());
      // bring back the evicted tokens at even positions (the same for every head of a sequence)
      request = kvevict::keep_plan_buffer(kvevict::plan_rows(view), L.max_len);
      for (int r = 0; r < kvevict::plan_rows(view); ++r) {
        int m = 0;
        for (std::int64_t i = tier->row_offsets[r]; i < tier->row_offsets[r + 1]; ++i)
          if (tier->positions[i] % 2 == 0) request.view().row(r)[m++] = tier->positions[i];
        request.counts[r] = m;
      }
    });
    poison_tail(c, kept, L);
    // the engine grows every row to kept + requested
    for (int li = 0; li < c.lists(); ++li) {
      const int r = kind == layout_kind::head_rows ? li : li * c.kv_heads;
      c.lens[li] = kept.counts[r] + request.counts[r];
      if (kind != layout_kind::dense)  // the rows keep their first pages, as many as the length needs
        c.pages[li].resize(static_cast<std::size_t>((c.lens[li] + c.page_size - 1) / c.page_size));
    }
    c.sync_tables();
    c.visit([&](auto view) {
      kvevict::keep_plan_buffer merged(kvevict::plan_rows(view), L.max_len);
      const auto st = kvevict::restore(kvevict::host, view, kept.const_view(), tier->tier, request.const_view(),
                                       merged.view());
      INFO(st.message());
      REQUIRE(st.ok());
      for (int r = 0; r < kvevict::plan_rows(view); ++r) {
        const int s = r / view.num_kv_heads(), h = r % view.num_kv_heads();
        std::vector<int> expect(kept.view().row(r), kept.view().row(r) + kept.counts[r]);
        expect.insert(expect.end(), request.view().row(r), request.view().row(r) + request.counts[r]);
        std::sort(expect.begin(), expect.end());
        REQUIRE(merged.counts[r] == static_cast<int>(expect.size()));
        for (int j = 0; j < merged.counts[r]; ++j) {
          REQUIRE(merged.view().row(r)[j] == expect[j]);
          REQUIRE(row_bytes(c, s, h, j) == row_bytes(original, s, h, expect[j]));  // slot j holds that token
        }
      }
    });
  }
}

TEST_CASE("tier: bad input is named and changes neither the cache nor the tier", "[tier][errors]") {
  logical L = make_logical(1, 2, 4, {40}, 23);
  test_cache<float> c = build<float>(L, layout_kind::block_nhd, 8, 2);
  auto view = c.block_view();
  auto kept = random_plan(view, 3);
  const std::int64_t evicted = kvevict::evicted_row_count(view, kept.const_view());
  auto res = kvevict::compact_result_buffer::for_cache(view);
  const std::uint64_t before = c.checksum();

  kvevict::evicted_rows_buffer<float> small(2, evicted - 1, 4);
  small.row_offsets.assign(small.row_offsets.size(), -5);
  auto st = kvevict::compact(kvevict::host, view, kept.const_view(), res.result, small.tier);
  REQUIRE(st.code == kvevict::errc::buffer_too_small);
  REQUIRE(std::string(st.argument) == "tier.capacity");
  REQUIRE(c.checksum() == before);
  REQUIRE(small.row_offsets == std::vector<std::int64_t>(small.row_offsets.size(), -5));
  kvevict::evicted_rows_buffer<float> few_rows(0, evicted, 4);  // row offsets for no row
  st = kvevict::compact(kvevict::host, view, kept.const_view(), res.result, few_rows.tier);
  REQUIRE(std::string(st.argument) == "tier.row_offsets");
  REQUIRE(c.checksum() == before);

  kvevict::evicted_rows_buffer<float> tier(2, evicted, 4);
  REQUIRE(kvevict::compact(kvevict::host, view, kept.const_view(), res.result, tier.tier).ok());
  const std::uint64_t compacted = c.checksum();
  kvevict::keep_plan_buffer merged(2, 40);
  auto restore_with = [&](kvevict::keep_plan_buffer& req) {
    return kvevict::restore(kvevict::host, view, kept.const_view(), tier.tier, req.const_view(), merged.view());
  };
  kvevict::keep_plan_buffer req(2, 40);
  auto fill = [&](std::vector<int> pos) {
    for (int r = 0; r < 2; ++r) {
      std::copy(pos.begin(), pos.end(), req.view().row(r));
      req.counts[r] = static_cast<int>(pos.size());
    }
  };
  const int first = tier.positions[0];
  // the view still says 40 tokens: one token back does not make the row 40 long
  fill({first});
  st = restore_with(req);
  REQUIRE(std::string(st.argument) == "cache.seq_lens");
  // a full request that is not sorted, or asks for a kept token, or one the tier lacks
  std::vector<int> all(tier.positions.begin(), tier.positions.begin() + tier.row_offsets[1]);
  std::vector<int> swapped = all;
  std::swap(swapped[0], swapped[1]);
  fill(swapped);
  st = restore_with(req);
  REQUIRE(std::string(st.argument) == "request.positions");
  std::vector<int> holds = all;
  holds[0] = kept.view().row(0)[0];
  std::sort(holds.begin(), holds.end());
  fill(holds);
  st = restore_with(req);
  REQUIRE(std::string(st.argument) == "request.positions");
  REQUIRE(std::string(st.message()).find("already holds") != std::string::npos);
  std::vector<int> lacks = all;
  lacks.back() = 1000;
  fill(lacks);
  st = restore_with(req);
  REQUIRE(std::string(st.argument) == "request.positions");
  REQUIRE(std::string(st.message()).find("tier does not hold") != std::string::npos);
  // heads that share a page table but say they hold different counts
  fill(all);
  kvevict::keep_plan_buffer uneven(2, 40);
  for (int r = 0; r < 2; ++r) std::copy_n(kept.view().row(r), kept.counts[r], uneven.view().row(r));
  uneven.counts = kept.counts;
  uneven.counts[1] -= 1;
  st = kvevict::restore(kvevict::host, view, uneven.const_view(), tier.tier, req.const_view(), merged.view());
  REQUIRE(std::string(st.argument) == "current.counts");
  // a merged plan too small for a restored row
  fill(all);
  kvevict::keep_plan_buffer tiny(2, 10);
  st = kvevict::restore(kvevict::host, view, kept.const_view(), tier.tier, req.const_view(), tiny.view());
  REQUIRE(std::string(st.argument) == "merged.capacity");
  REQUIRE(c.checksum() == compacted);
  // and the full request itself works
  REQUIRE(restore_with(req).ok());
  REQUIRE(c.checksum() == before);
}

TEST_CASE("tier: a round trip large enough for threads gives back the cache byte for byte", "[tier][threads]") {
  // 2 x 8 heads x 128 dims fp32 over 1,500 and 1,100 tokens: the rows copied and moved are several
  // MiB, above compact_bytes_per_thread, so host.threads(4) runs rows in parallel both ways.
  logical L = make_logical(2, 8, 128, {1500, 1100}, 41);
  for (layout_kind kind : {layout_kind::block_nhd, layout_kind::head_rows}) {
    INFO(name(kind));
    const test_cache<float> original = build<float>(L, kind, 16, 8);
    test_cache<float> c = original;
    c.visit([&](auto view) {
      auto kept = random_plan(view, 12);
      const std::int64_t evicted = kvevict::evicted_row_count(view, kept.const_view());
      REQUIRE(evicted * 128 * static_cast<std::int64_t>(sizeof(float)) >= kvevict::detail::compact_bytes_per_thread);
      kvevict::evicted_rows_buffer<float> tier(kvevict::plan_rows(view), evicted, 128);
      auto res = kvevict::compact_result_buffer::for_cache(view);
      REQUIRE(kvevict::compact(kvevict::host.threads(4), view, kept.const_view(), res.result, tier.tier).ok());
      poison_tail(c, kept, L);
      kvevict::keep_plan_buffer request(kvevict::plan_rows(view), L.max_len), merged(kvevict::plan_rows(view), L.max_len);
      for (int r = 0; r < kvevict::plan_rows(view); ++r) {
        request.counts[r] = static_cast<int>(tier.row_offsets[r + 1] - tier.row_offsets[r]);
        std::copy(tier.positions.begin() + tier.row_offsets[r], tier.positions.begin() + tier.row_offsets[r + 1],
                  request.view().row(r));
      }
      REQUIRE(kvevict::restore(kvevict::host.threads(4), view, kept.const_view(), tier.tier, request.const_view(),
                               merged.view())
                  .ok());
    });
    REQUIRE(c.k == original.k);
    REQUIRE(c.v == original.v);
  }
}

// The device's offload (cuda/tier.cuh, offload_kernel) finds each evicted slot's tier row per chunk
// of slots: the plan entries around the chunk, one lower bound per slot, a scan of the chunk's
// evicted flags. Emulated for chunk sizes down to 1: every slot is classified as the plan says and
// every evicted one lands on the tier row the host's compaction gives it.
TEST_CASE("tier: the device offload's chunked indices are the host's tier rows", "[tier][device]") {
  std::mt19937 rng(77);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = static_cast<int>(rng() % 1500), chunk = std::vector<int>{1, 5, 64, 256}[trial % 4];
    std::vector<std::int32_t> pos;
    const unsigned keep_every = 1 + rng() % 6;
    for (int t = 0; t < n; ++t)
      if (rng() % keep_every == 0) pos.push_back(t);
    const int cnt = static_cast<int>(pos.size());
    const std::int64_t first = static_cast<std::int64_t>(rng() % 1000);
    std::vector<std::int64_t> expect(static_cast<std::size_t>(n), -1);  // the host's tier row of each evicted slot
    std::int64_t next = first;
    for (int t = 0, j = 0; t < n; ++t) {
      if (j < cnt && pos[j] == t) {
        ++j;
        continue;
      }
      expect[t] = next++;
    }
    for (int t0 = 0; t0 < n; t0 += chunk) {
      const auto k = kvevict::detail::kept_around_chunk(pos.data(), cnt, t0, chunk);
      int before = 0;
      for (int t = t0; t < std::min(n, t0 + chunk); ++t) {
        const bool ev = kvevict::detail::evicted_in_chunk(pos.data(), k, t);
        REQUIRE(ev == (expect[t] >= 0));
        if (!ev) continue;
        REQUIRE(kvevict::detail::offload_index(first, t0, k, before) == expect[t]);
        ++before;
      }
    }
  }
}

// The device's restore (cuda/tier.cuh, restore_kernel), one row emulated with its hazards: slots
// hold token ids, the requested tokens above every current one are written while the first tile
// loads, each tile loads all its moving tokens (in any order) before it stores any (in any order),
// and each current token's store is followed by the requested tokens between it and the one below.
// `merged` is the current positions' own array, as the host allows. The row must end as the sorted
// merge, slot by slot.
TEST_CASE("tier: the device restore's tile schedule merges in place, hazard-free", "[tier][device]") {
  using kvevict::detail::lower_bound_of;
  std::mt19937 rng(78);
  for (int trial = 0; trial < 2000; ++trial) {
    const int total = static_cast<int>(rng() % 300), tile = std::vector<int>{1, 3, 64}[trial % 3];
    std::vector<std::int32_t> cur, req;
    const unsigned mode = rng() % 4;  // mostly current, mostly requested, mixed, runs
    for (int t = 0; t < total; ++t) {
      const bool current = mode == 0 ? rng() % 5 != 0 : mode == 1 ? rng() % 5 == 0 : mode == 2 ? rng() % 2 == 0
                                                                                              : (t / 17) % 2 == 0;
      (current ? cur : req).push_back(t);
    }
    const int c = static_cast<int>(cur.size()), m = static_cast<int>(req.size());
    std::vector<int> slots(static_cast<std::size_t>(c + m), -1);  // token id = position; -1: the grown slots
    for (int i = 0; i < c; ++i) slots[i] = cur[i];
    std::vector<std::int32_t> out(slots.size(), -1);  // merged.row: current's own array
    std::copy(cur.begin(), cur.end(), out.begin());
    auto below = [&](int v) { return static_cast<int>(lower_bound_of(req.data(), 0, m, v)); };
    // what a warp does for requested token k: copy it from the tier (token id = its position) to `slot`
    auto restore_one = [&](int k, int slot) {
      slots[slot] = req[k];
      out[slot] = req[k];
    };
    const int top = c > 0 ? below(out[c - 1]) : 0;
    std::vector<std::function<void()>> first_phase;
    for (int k = top; k < m; ++k) first_phase.push_back([&, k] { restore_one(k, k + c); });
    for (int hi = c; hi > 0; hi -= tile) {
      const int lo = std::max(0, hi - tile);
      std::vector<int> p(hi - lo), bl(hi - lo), blp(hi - lo), buf(hi - lo, -2);
      std::vector<std::function<void()>> loads = hi == c ? first_phase : std::vector<std::function<void()>>{};
      for (int i = lo; i < hi; ++i)
        loads.push_back([&, i] {
          p[i - lo] = out[i];  // cur[i], read from the merged array it shares
          bl[i - lo] = below(out[i]);
          blp[i - lo] = i > 0 ? below(out[i - 1]) : 0;
          if (bl[i - lo] > 0) buf[i - lo] = slots[i];
        });
      std::shuffle(loads.begin(), loads.end(), rng);
      for (auto& f : loads) f();
      std::vector<int> order(hi - lo);
      std::iota(order.begin(), order.end(), lo);
      std::shuffle(order.begin(), order.end(), rng);
      for (int i : order) {
        const int dest = i + bl[i - lo];
        if (bl[i - lo] > 0) slots[dest] = buf[i - lo];
        out[dest] = p[i - lo];
        for (int k = blp[i - lo]; k < bl[i - lo]; ++k) restore_one(k, k + i);
      }
    }
    if (c == 0)
      for (auto& f : first_phase) f();
    std::vector<int> expect(cur.begin(), cur.end());
    expect.insert(expect.end(), req.begin(), req.end());
    std::sort(expect.begin(), expect.end());
    INFO("trial " << trial << ": " << c << " current, " << m << " requested, tile " << tile);
    REQUIRE(slots == expect);
    REQUIRE(std::vector<int>(out.begin(), out.end()) == expect);
  }
}

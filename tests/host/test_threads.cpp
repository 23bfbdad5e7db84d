// The host backend on several threads: the same plans, scores and compacted caches as on one,
// whatever the thread count, and a workspace sized for one thread still serves (on fewer threads).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/presets.hpp"
#include "common/test_cache.hpp"

using namespace testing;

namespace {

template <class Policy, class Cache, class T>
std::vector<std::int32_t> plan_with(kvevict::host_t exec, const Policy& p, const Cache& cache,
                                    const kvevict::signals<T>& sig) {
  auto kept = kvevict::keep_plan_buffer::for_cache(p, cache, sig);
  const kvevict::status st = kvevict::plan(exec, p, cache, sig, kept.view());
  INFO(st.message());
  REQUIRE(st.ok());
  std::vector<std::int32_t> out = kept.counts;
  out.insert(out.end(), kept.positions.begin(), kept.positions.end());
  return out;
}

}  // namespace

TEST_CASE("host threads: plans, scores and compaction do not depend on the thread count", "[threads]") {
  const int seqs = 2, kvh = 4, d = 24, q_heads = 8, window = 6;
  logical L = make_logical(seqs, kvh, d, {300, 211}, 5);
  std::vector<float> q(static_cast<std::size_t>(seqs) * q_heads * window * d);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (auto& x : q) x = 2.0f * nd(rng);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(seqs) * 300);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = i % 9 == 0 ? 1 : 5 + static_cast<int>(i % 13);
  const std::int32_t delims[] = {1};
  kvevict::signals<float> sig;
  sig.queries = q.data();
  sig.num_q_heads = q_heads;
  sig.token_ids = ids.data();
  sig.token_ids_stride = 300;

  kvevict::snapkv<> snap;
  snap.selector = {2, window, kvevict::uniform_budget{60}};
  kvevict::sablock<> sab;
  sab.selector = snap.selector;
  sab.granularity.segmenter.delimiter_ids = delims;
  sab.granularity.segmenter.num_delimiters = 1;
  kvevict::ada_snapkv<> ada;
  ada.selector = {2, window, kvevict::adaptive_budget{60}};
  // Every preset (tests/common/presets.hpp): per-head selection on threads where heads are
  // independent, a shared plan on one (ChunkKV), SABlock with sentences, H2O's sums, StreamingLLM's
  // scorer without per-head scoring. Its token ids: 1 ends a clause, 2 a sentence.
  std::vector<std::int32_t> sent(ids.size());
  for (std::size_t i = 0; i < sent.size(); ++i) sent[i] = i % 27 == 0 ? 2 : static_cast<std::int32_t>(ids[i]);
  std::vector<float> sums(static_cast<std::size_t>(seqs) * q_heads * 300);
  for (auto& x : sums) x = std::abs(nd(rng));
  kvevict::signals<float> all_sig = sig;
  all_sig.token_ids = sent.data();
  all_sig.attention_sums = sums.data();
  all_sig.sums_stride = 300;
  static_assert(kvevict::detail::selects_per_head<kvevict::sablock<>, kvevict::dense_cache<float>, float> &&
                    kvevict::detail::selects_per_head<kvevict::sentencekv<>, kvevict::dense_cache<float>, float> &&
                    kvevict::detail::selects_per_head<kvevict::snapkv<>, kvevict::dense_cache<float>, float> &&
                    kvevict::detail::selects_per_head<kvevict::chunkkv_per_head<>, kvevict::dense_cache<float>, float> &&
                    !kvevict::detail::selects_per_head<kvevict::chunkkv<>, kvevict::dense_cache<float>, float>,
                "per-head selection where heads are independent, and only there");

  for (layout_kind kind : {layout_kind::block_nhd, layout_kind::csr_hnd, layout_kind::dense}) {
    test_cache<float> c = build<float>(L, kind, 16, 9);
    c.visit([&](auto view) {
      INFO(name(kind));
      for (int threads : {2, 3, 8}) {
        const auto exec = kvevict::host.threads(threads);
        REQUIRE(plan_with(exec, snap, view, sig) == plan_with(kvevict::host.threads(1), snap, view, sig));
        REQUIRE(plan_with(exec, sab, view, sig) == plan_with(kvevict::host.threads(1), sab, view, sig));
        REQUIRE(plan_with(exec, ada, view, sig) == plan_with(kvevict::host.threads(1), ada, view, sig));
        for_each_preset(2, window, 60, [&](const auto& pr) {
          INFO(pr.name);
          REQUIRE(plan_with(exec, pr.policy, view, all_sig) ==
                  plan_with(kvevict::host.threads(1), pr.policy, view, all_sig));
        });
        // scores, bit for bit
        std::vector<float> s1(static_cast<std::size_t>(seqs) * kvh * 300), sn(s1.size());
        REQUIRE(kvevict::score(kvevict::host.threads(1), snap, view, sig, s1.data(), 300).ok());
        REQUIRE(kvevict::score(exec, snap, view, sig, sn.data(), 300).ok());
        REQUIRE(std::memcmp(s1.data(), sn.data(), s1.size() * sizeof(float)) == 0);
      }
      // more threads need more workspace; a one-thread workspace still serves, on one thread
      const std::size_t one = kvevict::plan_workspace_bytes(kvevict::host.threads(1), snap, view, sig);
      const std::size_t four = kvevict::plan_workspace_bytes(kvevict::host.threads(4), snap, view, sig);
      REQUIRE(four > one);
      std::vector<unsigned char> ws(one);
      auto kept = kvevict::keep_plan_buffer::for_cache(snap, view, sig);
      REQUIRE(kvevict::plan(kvevict::host.threads(4), snap, view, sig, kept.view(), ws.data(), ws.size()).ok());
      std::vector<std::int32_t> got = kept.counts;
      got.insert(got.end(), kept.positions.begin(), kept.positions.end());
      REQUIRE(got == plan_with(kvevict::host.threads(1), snap, view, sig));
      auto st = kvevict::plan(kvevict::host.threads(4), snap, view, sig, kept.view(), ws.data(), one - 1);
      REQUIRE(st.code == kvevict::errc::buffer_too_small);
      // SABlock's workspace grows with the threads too (a selection scratch per thread), and a
      // one-thread workspace still serves
      const std::size_t sab_one = kvevict::plan_workspace_bytes(kvevict::host.threads(1), sab, view, sig);
      REQUIRE(kvevict::plan_workspace_bytes(kvevict::host.threads(4), sab, view, sig) > sab_one);
      std::vector<unsigned char> ws2(sab_one);
      auto kept2 = kvevict::keep_plan_buffer::for_cache(sab, view, sig);
      REQUIRE(kvevict::plan(kvevict::host.threads(4), sab, view, sig, kept2.view(), ws2.data(), ws2.size()).ok());
      std::vector<std::int32_t> got2 = kept2.counts;
      got2.insert(got2.end(), kept2.positions.begin(), kept2.positions.end());
      REQUIRE(got2 == plan_with(kvevict::host.threads(1), sab, view, sig));
    });
  }
  // quantised keys (fp8 e4m3, int8; float queries): every preset, the same plan on any thread count
  auto quantised = [&](auto tag) {
    using Q = decltype(tag);
    test_cache<Q> c = build<Q>(L, layout_kind::block_nhd, 16, 9);
    auto view = c.block_view();
    for (int threads : {2, 3})
      for_each_preset(2, window, 60, [&](const auto& pr) {
        INFO(pr.name << " on " << threads << " threads, quantised keys");
        REQUIRE(plan_with(kvevict::host.threads(threads), pr.policy, view, all_sig) ==
                plan_with(kvevict::host.threads(1), pr.policy, view, all_sig));
      });
  };
  quantised(kvevict::float8_e4m3{});
  quantised(kvevict::int8{});
}

TEST_CASE("host threads: evict on all threads compacts as on one", "[threads]") {
  logical L = make_logical(1, 8, 16, {500}, 21);
  std::vector<float> q(static_cast<std::size_t>(16) * 8 * 16, 0.0f);
  std::mt19937 rng(4);
  std::normal_distribution<float> nd;
  for (auto& x : q) x = nd(rng);
  kvevict::signals<float> sig;
  sig.queries = q.data();
  sig.num_q_heads = 16;
  kvevict::snapkv<> p;
  p.selector = {4, 8, kvevict::uniform_budget{100}};
  test_cache<float> a = build<float>(L, layout_kind::block_nhd, 16, 2), b = a;
  auto va = a.block_view(), vb = b.block_view();
  auto ka = kvevict::keep_plan_buffer::for_cache(p, va, sig), kb = kvevict::keep_plan_buffer::for_cache(p, vb, sig);
  auto ra = kvevict::compact_result_buffer::for_cache(va), rb = kvevict::compact_result_buffer::for_cache(vb);
  REQUIRE(kvevict::evict(kvevict::host.threads(1), p, va, sig, ka.view(), ra.result).ok());
  REQUIRE(kvevict::evict(kvevict::host, p, vb, sig, kb.view(), rb.result).ok());
  REQUIRE(ka.positions == kb.positions);
  REQUIRE(a.k == b.k);
  REQUIRE(a.v == b.v);
  REQUIRE(ra.new_lens == rb.new_lens);
  REQUIRE(ra.freed_pages == rb.freed_pages);
  REQUIRE(kvevict::host.threads(3).thread_count() == 3);
  REQUIRE(kvevict::host.thread_count() >= 1);
}

TEST_CASE("host threads: a compaction large enough for threads moves the same bytes as on one", "[threads][compact]") {
  // 2 sequences x 8 heads x 128 dims fp32, 1,500 and 1,100 tokens, about 60% kept: the kept rows
  // are several MiB, above compact_bytes_per_thread, so host.threads(4) runs the rows in parallel.
  logical L = make_logical(2, 8, 128, {1500, 1100}, 31);
  for (layout_kind kind : {layout_kind::block_nhd, layout_kind::csr_hnd, layout_kind::head_rows, layout_kind::dense}) {
    INFO(name(kind));
    test_cache<float> a = build<float>(L, kind, 16, 5), b = a;
    std::int64_t moved = 0;
    a.visit([&](auto va) {
      b.visit([&](auto vb) {
        // per-head plans for (sequence, head)-row views, one per sequence for shared tables
        const bool per_head = decltype(va)::per_head_rows;
        kvevict::keep_plan_buffer kept(2 * 8, 1500);
        std::mt19937 rng(7);
        for (int s = 0; s < 2; ++s)
          for (int h = 0; h < 8; ++h) {
            const int r = s * 8 + h, n = va.seq_len(s, h);
            if (!per_head && h > 0) {
              kept.counts[r] = kept.counts[s * 8];
              std::copy_n(kept.view().row(s * 8), kept.counts[r], kept.view().row(r));
              continue;
            }
            int c = 0;
            for (int t = 0; t < n; ++t)
              if (rng() % 5 < 3) kept.view().row(r)[c++] = t;
            kept.counts[r] = c;
          }
        for (int r = 0; r < 16; ++r) moved += kept.counts[r];
        auto ra = kvevict::compact_result_buffer::for_cache(va), rb = kvevict::compact_result_buffer::for_cache(vb);
        REQUIRE(kvevict::compact(kvevict::host.threads(1), va, kept.const_view(), ra.result).ok());
        REQUIRE(kvevict::compact(kvevict::host.threads(4), vb, kept.const_view(), rb.result).ok());
        REQUIRE(ra.new_lens == rb.new_lens);
        REQUIRE(ra.freed() == rb.freed());
      });
    });
    REQUIRE(moved * 128 * static_cast<std::int64_t>(sizeof(float)) >= kvevict::detail::compact_bytes_per_thread);
    REQUIRE(a.k == b.k);
    REQUIRE(a.v == b.v);
  }
}

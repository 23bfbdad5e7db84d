#include <catch2/catch.hpp>

#include <set>

#include "common/test_cache.hpp"
#include "toy_engine.hpp"

namespace {

template <toy::table_kind Kind, class Policy>
void run_invariants(Policy policy, std::uint64_t seed) {
  const toy::model m;
  toy::settings s;
  s.num_seqs = 3;
  s.num_pages = 256;
  s.budget = 48;
  s.slack = 16;
  s.window = 8;
  s.page_size = 8;
  toy::engine<Kind, Policy> e(m, s, policy);
  kvevict::synthetic::rng r(seed);
  std::vector<std::vector<int>> tokens(s.num_seqs);
  std::vector<toy::elem> q, k, v;
  int steps_checked = 0, positions_apart = 0;
  for (int step = 0; step < 300; ++step) {
    for (int seq = 0; seq < s.num_seqs; ++seq) {
      if (step < 20 * seq) continue;  // sequences start at different times: different lengths
      const int tok = r.below(m.vocab);
      tokens[seq].push_back(tok);
      e.step(seq, tok);
    }
    e.maybe_evict();
    // Invariants after every step.
    std::set<int> owned;
    int held = 0;
    for (int seq = 0; seq < s.num_seqs; ++seq) {
      const int n = e.len(seq);
      REQUIRE(n <= s.budget + s.slack);
      REQUIRE(static_cast<int>(e.pages(seq).size()) == (n + s.page_size - 1) / s.page_size);
      for (int p : e.pages(seq)) {
        REQUIRE(owned.insert(p).second);  // no page in two sequences
        REQUIRE(e.pool().in_use(p));
      }
      held += static_cast<int>(e.pages(seq).size());
      for (int h = 0; h < m.hkv; ++h) {
        const auto& o = e.origin(seq, h);
        REQUIRE(static_cast<int>(o.size()) == n);
        for (std::size_t j = 1; j < o.size(); ++j) REQUIRE(o[j] > o[j - 1]);       // order kept
        if (n > 0) REQUIRE(o.back() == static_cast<int>(tokens[seq].size()) - 1);  // the newest token is kept
        // Every slot holds exactly the K and V of the token it claims to.
        for (int j = 0; j < n; ++j) {
          // Rotary phase of the token's text position o[j], which is not its slot j after eviction.
          m.project(tokens[seq][o[j]], o[j], q, k, v);
          REQUIRE(std::memcmp(e.key(seq, h, j), &k[std::size_t(h) * m.d], m.d * sizeof(toy::elem)) == 0);
          REQUIRE(std::memcmp(e.value(seq, h, j), &v[std::size_t(h) * m.d], m.d * sizeof(toy::elem)) == 0);
        }
      }
    }
    REQUIRE(held == e.pool().num_used());  // nothing leaked, nothing freed twice
    for (int seq = 0; seq < s.num_seqs; ++seq) {
      REQUIRE(e.next_position(seq) == static_cast<int>(tokens[seq].size()));  // text position, whatever was evicted
      positions_apart += e.next_position(seq) != e.len(seq);
    }
    ++steps_checked;
  }
  CHECK(steps_checked == 300);
  CHECK(e.evictions() > 5);
  CHECK(positions_apart > 0);  // eviction pulled text positions and cache lengths apart, and keys still matched

  // Attention over the kept cache equals attention recomputed from the kept tokens.
  m.project(7, 1000, q, k, v);
  for (int seq = 0; seq < s.num_seqs; ++seq)
    for (int qh = 0; qh < m.hq; ++qh) {
      const int h = qh / (m.hq / m.hkv), n = e.len(seq);
      std::vector<double> a(m.d, 0.0), b(m.d, 0.0);
      double za = 0, zb = 0;
      std::vector<toy::elem> kk, vv, qq;
      for (int j = 0; j < n; ++j) {
        m.project(tokens[seq][e.origin(seq, h)[j]], e.origin(seq, h)[j], qq, kk, vv);
        double la = 0, lb = 0;
        for (int x = 0; x < m.d; ++x) {
          const double qx = kvevict::to_float(q[std::size_t(qh) * m.d + x]);
          la += qx * kvevict::to_float(e.key(seq, h, j)[x]);
          lb += qx * kvevict::to_float(kk[std::size_t(h) * m.d + x]);
        }
        const double ea = std::exp(la / std::sqrt(double(m.d))), eb = std::exp(lb / std::sqrt(double(m.d)));
        za += ea;
        zb += eb;
        for (int x = 0; x < m.d; ++x) {
          a[x] += ea * kvevict::to_float(e.value(seq, h, j)[x]);
          b[x] += eb * kvevict::to_float(vv[std::size_t(h) * m.d + x]);
        }
      }
      for (int x = 0; x < m.d; ++x) REQUIRE(a[x] / za == Approx(b[x] / zb).margin(1e-12));
    }
}

}  // namespace

TEST_CASE("decode loop invariants: vLLM block table, H2O", "[decode]") {
  run_invariants<toy::table_kind::block_table>(kvevict::h2o<>{}, 1);
}
TEST_CASE("decode loop invariants: FlashInfer CSR, SnapKV on the query ring", "[decode]") {
  run_invariants<toy::table_kind::csr>(kvevict::snapkv<>{}, 2);
}
TEST_CASE("decode loop invariants: vLLM block table, StreamingLLM", "[decode]") {
  run_invariants<toy::table_kind::block_table>(kvevict::streaming_llm{}, 3);
}

TEST_CASE("after eviction a new token takes its text position, not the cache length", "[decode]") {
  const toy::model m;
  toy::settings s;
  s.num_seqs = 1;
  s.budget = 24;
  s.slack = 8;
  s.window = 4;
  s.page_size = 4;
  toy::engine<toy::table_kind::block_table, kvevict::streaming_llm> e(m, s, kvevict::streaming_llm{});
  for (int t = 0; t < 40; ++t) e.step(0, t % m.vocab);
  e.maybe_evict();
  REQUIRE(e.evictions() == 1);
  REQUIRE(e.len(0) == 24);
  REQUIRE(e.next_position(0) == 40);
  e.step(0, 5);
  std::vector<toy::elem> q, k_true, k_len, v;
  m.project(5, 40, q, k_true, v);  // the token's text position
  m.project(5, 24, q, k_len, v);   // what an engine that used the cache length would store
  for (int h = 0; h < m.hkv; ++h) {
    CHECK(std::memcmp(e.key(0, h, 24), &k_true[std::size_t(h) * m.d], m.d * sizeof(toy::elem)) == 0);
    CHECK(std::memcmp(e.key(0, h, 24), &k_len[std::size_t(h) * m.d], m.d * sizeof(toy::elem)) != 0);
  }
  CHECK(e.origin(0, 0).back() == 40);
}

TEST_CASE("query ring gathers the last rows, oldest first, zero-filled", "[decode]") {
  kvevict::query_ring<float> ring(2, 1, 3, 2);
  for (int i = 1; i <= 5; ++i) {
    const float q[2] = {float(i), float(-i)};
    ring.push(0, q);
  }
  const float q1[2] = {9, 9};
  ring.push(1, q1);
  std::vector<float> out(2 * 3 * 2);
  ring.gather(out.data());
  CHECK(out == std::vector<float>{3, -3, 4, -4, 5, -5, 0, 0, 0, 0, 9, 9});
  CHECK(ring.filled(0) == 3);
  CHECK(ring.filled(1) == 1);
}

TEST_CASE("decode budgets: only sequences over budget + slack are evicted", "[decode]") {
  const std::int32_t lens[] = {10, 100, 131, 300, 2};
  std::int32_t b[5], w[5];
  CHECK(kvevict::decode_budgets(lens, 5, 100, 30, 4, 16, nullptr, b, w) == 2);
  CHECK(std::vector<int>(b, b + 5) == std::vector<int>{14, 100, 100, 100, 6});
  CHECK(std::vector<int>(w, w + 5) == std::vector<int>{10, 16, 16, 16, 2});
}

TEST_CASE("apply_compaction packs a CSR page table to the new lengths", "[decode]") {
  std::vector<std::int32_t> indptr = {0, 3, 4, 8}, indices = {7, 2, 5, 1, 0, 3, 4, 6}, last = {4, 2, 1};
  const std::int32_t new_lens[] = {5, 5, 2, 2, 4, 4};  // 2 KV heads, page size 4
  kvevict::apply_compaction(indptr.data(), indices.data(), last.data(), 3, 4, new_lens, 2);
  CHECK(indptr == std::vector<std::int32_t>{0, 2, 3, 4});
  CHECK(std::vector<std::int32_t>(indices.begin(), indices.begin() + 4) == std::vector<std::int32_t>{7, 2, 1, 0});
  CHECK(last == std::vector<std::int32_t>{1, 2, 4});
}

TEST_CASE("H2O sums move with their tokens", "[decode]") {
  kvevict::keep_plan_buffer plan(2, 4);  // 1 sequence, 2 KV heads
  plan.counts = {2, 3};
  plan.positions = {1, 3, 0, 0, 0, 2, 4, 0};
  std::vector<float> sums = {10, 11, 12, 13, 14, 20, 21, 22, 23, 24};  // 2 query heads (one per KV head), stride 5
  const std::int32_t old_lens[] = {5, 5};
  kvevict::compact_attention_sums(plan.const_view(), 1, 2, 2, sums.data(), 5, old_lens);
  CHECK(sums == std::vector<float>{11, 13, 0, 0, 0, 20, 22, 24, 0, 0});
}

TEST_CASE("accumulate_step_attention adds the newest query's attention", "[decode]") {
  const int d = 8, n = 13;
  std::vector<float> k(n * d), v(n * d), q(2 * d);
  kvevict::synthetic::rng r(4);
  for (auto& x : k) x = r.normal();
  for (auto& x : q) x = r.normal();
  std::vector<int> table = {0, 1, 2, 3}, lens = {n};
  kvevict::block_table_cache<float> c{k.data(), v.data(), table.data(), lens.data(), 1, 4, 4, 4, 1, d};
  std::vector<float> sums(2 * 16, 1.0f), scratch(kvevict::host_backend::window_attention_scratch_floats(d, 1, 2, 16));
  kvevict::accumulate_step_attention(c, 0, q.data(), 2, sums.data(), 16, scratch.data());
  for (int j = 0; j < 2; ++j) {
    std::vector<double> l(n);
    double m = -1e30, z = 0;
    for (int t = 0; t < n; ++t) {
      double s = 0;
      for (int x = 0; x < d; ++x) s += double(q[j * d + x]) * k[t * d + x];
      l[t] = s / std::sqrt(double(d));
      m = std::max(m, l[t]);
    }
    for (int t = 0; t < n; ++t) z += std::exp(l[t] - m);
    for (int t = 0; t < n; ++t) CHECK(sums[j * 16 + t] == Approx(1.0 + std::exp(l[t] - m) / z).epsilon(1e-5));
    CHECK(sums[j * 16 + n] == 1.0f);
  }
}

TEST_CASE("one call plans and compacts a batch with per-sequence budgets, sinks and windows", "[decode]") {
  // StreamingLLM keeps sinks + the most recent tokens, so the expected sets are known exactly.
  const auto L = testing::make_logical(3, 2, 4, {40, 25, 60}, 3);
  auto c = testing::build<float>(L, testing::layout_kind::csr_nhd, 8, 3);
  const std::int32_t budgets[] = {10, 30, 16}, sinks[] = {2, 0, 5}, windows[] = {3, 4, 0};
  kvevict::signals<float> sig;
  sig.seq_budgets = budgets;
  sig.seq_sinks = sinks;
  sig.seq_windows = windows;
  kvevict::streaming_llm p;
  p.selector = {4, 8, kvevict::uniform_budget{12}};
  auto view = c.csr_view<kvevict::nhd>();
  kvevict::keep_plan_buffer kept(6, kvevict::plan_capacity(p, view, sig));
  std::vector<std::int32_t> lens(6), freed(32);
  kvevict::compact_result out{lens.data(), static_cast<int>(lens.size()), freed.data(), 32};
  const auto st = kvevict::evict(kvevict::host, p, view, sig, kept.view(), out);
  INFO(st.message());
  REQUIRE(st.ok());
  auto range = [](std::vector<int> v, int a, int b) {
    for (int t = a; t < b; ++t) v.push_back(t);
    return v;
  };
  CHECK(kept.kept(0) == range({0, 1}, 32, 40));           // 2 sinks + the last 8 of 40
  CHECK(kept.kept(2) == range({}, 0, 25));                // 25 <= 30: kept whole
  CHECK(kept.kept(4) == range({0, 1, 2, 3, 4}, 49, 60));  // 5 sinks + the last 11 of 60
  CHECK(lens == std::vector<std::int32_t>{10, 10, 25, 25, 16, 16});
  CHECK(out.num_freed == (5 - 2) + (8 - 2));  // pages of 8: 40 -> 10 tokens, 60 -> 16 tokens
  // A per-sequence budget below that sequence's protected tokens is rejected, naming it.
  const std::int32_t bad[] = {10, 30, 4};
  sig.seq_budgets = bad;
  const auto before = c.checksum();
  const auto st2 = kvevict::evict(kvevict::host, p, view, sig, kept.view(), out);
  CHECK(st2.code == kvevict::errc::budget_too_small);
  CHECK(std::string(st2.argument) == "signals.seq_budgets");
  CHECK(c.checksum() == before);
}

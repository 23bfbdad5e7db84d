#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>

#include "common/test_cache.hpp"

using namespace testing;

namespace {
struct fixture {
  logical L = make_logical(2, 2, 8, {40, 25}, 3);
  test_cache<float> c = build<float>(L, layout_kind::block_nhd, 8, 1);
  std::vector<float> q = std::vector<float>(2 * 4 * 8 * 8, 0.5f);
  kvevict::signals<float> sig;
  kvevict::snapkv<> p;
  kvevict::keep_plan_buffer kept{4, 64};
  std::vector<std::int32_t> lens = std::vector<std::int32_t>(4), freed = std::vector<std::int32_t>(32);
  kvevict::compact_result res{lens.data(), static_cast<int>(lens.size()), freed.data(), 32};
  fixture() {
    sig.queries = q.data();
    sig.num_q_heads = 4;
    p.selector = {2, 8, kvevict::uniform_budget{16}};
  }
  // evict must fail with `code` naming `arg`, leaving K and V byte-identical.
  void expect_rejected(kvevict::errc code, const std::string& arg) {
    const auto before = c.checksum();
    const auto st = kvevict::evict(kvevict::host, p, c.block_view(), sig, kept.view(), res);
    INFO(st.message());
    CHECK(st.code == code);
    CHECK(std::string(st.argument) == arg);
    CHECK(c.checksum() == before);
  }
};
}  // namespace

TEST_CASE("rejected inputs name the argument and leave the cache unchanged", "[errors]") {
  SECTION("budget below the protected tokens") {
    fixture f;
    f.p.selector.budget.entries = 9;
    f.expect_rejected(kvevict::errc::budget_too_small, "selector.budget.entries");
  }
  SECTION("window longer than a sequence") {
    fixture f;
    f.p.selector = {2, 30, kvevict::uniform_budget{40}};
    f.c.lens32[1] = 20;  // second sequence shorter than the window
    f.expect_rejected(kvevict::errc::out_of_range, "selector.window");
  }
  SECTION("page id out of range") {
    fixture f;
    f.c.table[1] = f.c.num_pages;
    f.expect_rejected(kvevict::errc::out_of_range, "cache.block_table");
  }
  SECTION("negative page id") {
    fixture f;
    f.c.table[0] = -1;
    f.expect_rejected(kvevict::errc::out_of_range, "cache.block_table");
  }
  SECTION("sequence longer than its block-table row") {
    fixture f;
    f.c.lens32[0] = f.c.stride * f.c.page_size + 1;
    f.expect_rejected(kvevict::errc::shape_mismatch, "cache.seq_lens");
  }
  SECTION("query heads not a multiple of KV heads") {
    fixture f;
    f.sig.num_q_heads = 3;
    f.expect_rejected(kvevict::errc::shape_mismatch, "signals.num_q_heads");
  }
  SECTION("missing queries") {
    fixture f;
    f.sig.queries = nullptr;
    f.expect_rejected(kvevict::errc::invalid_argument, "signals.queries");
  }
  SECTION("NaN key") {
    fixture f;
    f.c.k[f.c.addr(1, 0, 3)] = std::numeric_limits<float>::quiet_NaN();
    f.expect_rejected(kvevict::errc::non_finite, "cache.k / signals.queries");
  }
  SECTION("infinite query") {
    fixture f;
    f.q[5] = std::numeric_limits<float>::infinity();
    f.expect_rejected(kvevict::errc::non_finite, "cache.k / signals.queries");
  }
  SECTION("empty batch") {
    fixture f;
    f.c.num_seqs = 0;
    f.expect_rejected(kvevict::errc::empty_batch, "cache");
  }
  SECTION("plan capacity too small") {
    fixture f;
    f.kept = kvevict::keep_plan_buffer(4, 15);
    f.expect_rejected(kvevict::errc::buffer_too_small, "plan.capacity");
  }
  SECTION("freed-page output too small") {
    fixture f;
    f.res.freed_capacity = 1;
    f.expect_rejected(kvevict::errc::buffer_too_small, "result.freed_pages");
  }
  SECTION("negative sinks") {
    fixture f;
    f.p.selector.sinks = -1;
    f.expect_rejected(kvevict::errc::invalid_argument, "selector.sinks");
  }
  SECTION("layer outside the model") {
    fixture f;
    f.sig.layer = 3;
    f.sig.num_layers = 2;
    f.expect_rejected(kvevict::errc::out_of_range, "signals.layer");
  }
}

TEST_CASE("H2O rejects NaN attention sums", "[errors]") {
  fixture f;
  std::vector<float> sums(4 * 40, 1.0f);
  sums[44] = std::nanf("");
  f.sig.attention_sums = sums.data();
  f.sig.sums_stride = 40;
  kvevict::h2o<> p;
  p.selector = {2, 8, kvevict::uniform_budget{16}};
  const auto before = f.c.checksum();
  const auto st = kvevict::evict(kvevict::host, p, f.c.block_view(), f.sig, f.kept.view(), f.res);
  CHECK(st.code == kvevict::errc::non_finite);
  CHECK(std::string(st.argument) == "signals.attention_sums");
  CHECK(f.c.checksum() == before);
}

TEST_CASE("compact rejects bad plans and leaves the cache unchanged", "[errors]") {
  auto run = [](auto mutate, kvevict::errc code, const std::string& arg) {
    fixture f;
    kvevict::keep_plan_buffer plan(4, 64);
    for (int r = 0; r < 4; ++r) {
      plan.counts[r] = 10;
      for (int j = 0; j < 10; ++j) plan.positions[r * 64 + j] = 2 * j;
    }
    mutate(f, plan);
    const auto before = f.c.checksum();
    const auto st = kvevict::compact(kvevict::host, f.c.block_view(), plan.const_view(), f.res);
    INFO(st.message());
    CHECK(st.code == code);
    CHECK(std::string(st.argument) == arg);
    CHECK(f.c.checksum() == before);
  };
  run([](fixture&, kvevict::keep_plan_buffer& p) { p.positions[5] = p.positions[4]; }, kvevict::errc::invalid_argument,
      "plan.positions");
  run([](fixture&, kvevict::keep_plan_buffer& p) { p.positions[64 * 3 + 9] = 25; }, kvevict::errc::out_of_range,
      "plan.positions");
  run([](fixture&, kvevict::keep_plan_buffer& p) { p.counts[1] = 9; }, kvevict::errc::shape_mismatch, "plan.counts");
  run([](fixture&, kvevict::keep_plan_buffer& p) { p.counts[0] = 41; }, kvevict::errc::out_of_range, "plan.counts");
  run([](fixture& f, kvevict::keep_plan_buffer&) { f.c.table[f.c.stride] = f.c.table[0]; },
      kvevict::errc::invalid_argument, "cache");
  run([](fixture& f, kvevict::keep_plan_buffer&) { f.res.new_lens = nullptr; }, kvevict::errc::invalid_argument,
      "result.new_lens");
}

TEST_CASE("CSR page tables are validated", "[errors]") {
  const logical L = make_logical(2, 2, 8, {40, 25}, 3);
  auto c = build<float>(L, layout_kind::csr_nhd, 8, 1);
  kvevict::streaming_llm p;
  p.selector = {2, 8, kvevict::uniform_budget{16}};
  kvevict::keep_plan_buffer kept(4, 16);
  std::vector<std::int32_t> lens(4), freed(32);
  kvevict::compact_result res{lens.data(), static_cast<int>(lens.size()), freed.data(), 32};
  const auto before = c.checksum();
  auto expect = [&](kvevict::errc code, const std::string& arg) {
    const auto st =
        kvevict::evict(kvevict::host, p, c.csr_view<kvevict::nhd>(), kvevict::signals<float>{}, kept.view(), res);
    CHECK(st.code == code);
    CHECK(std::string(st.argument) == arg);
    CHECK(c.checksum() == before);
  };
  c.last[0] = 9;
  expect(kvevict::errc::out_of_range, "cache.last_page_len");
  c.last[0] = 8;
  c.indices[2] = 999;
  expect(kvevict::errc::out_of_range, "cache.indices");
  c.indices[2] = c.pages[0][2];
  c.indptr[1] = c.indptr[2] + 1;
  expect(kvevict::errc::invalid_argument, "cache.indptr");
}

TEST_CASE("status messages name the category and the argument", "[errors]") {
  const auto st =
      kvevict::make_error(kvevict::errc::budget_too_small, "selector.budget.entries", "below the protected tokens");
  CHECK(st.message() == "kvevict: budget too small in 'selector.budget.entries': below the protected tokens");
  CHECK(kvevict::ok_status().message() == "kvevict: ok");
}

TEST_CASE("SABlock's sentence-level parameters are validated before anything is written", "[errors][sablock]") {
  fixture f;
  std::vector<std::int32_t> ids(2 * 40, 5);
  f.sig.token_ids = ids.data();
  f.sig.token_ids_stride = 40;
  const std::int32_t delims[] = {1, 2}, ends[] = {1};
  auto expect = [&](auto mutate, kvevict::errc code, const std::string& arg) {
    kvevict::sablock<> p;
    p.selector = {2, 8, kvevict::uniform_budget{16}};
    p.granularity.segmenter = {delims, 2};
    p.granularity.segmenter.sentence_ids = ends;
    p.granularity.segmenter.num_sentence_ids = 1;
    mutate(p);
    const auto before = f.c.checksum();
    const auto st = kvevict::evict(kvevict::host, p, f.c.block_view(), f.sig, f.kept.view(), f.res);
    INFO(st.message());
    CHECK(st.code == code);
    CHECK(std::string(st.argument) == arg);
    CHECK(f.c.checksum() == before);
  };
  using P = kvevict::sablock<>;
  expect([](P& p) { p.granularity.alpha = 0.6, p.granularity.beta = 0.5; }, kvevict::errc::invalid_argument,
         "granularity.alpha + beta");
  expect([](P& p) { p.granularity.beta = -0.1; }, kvevict::errc::invalid_argument, "granularity.beta");
  expect([](P& p) { p.granularity.segmenter.sentence_ids = nullptr; }, kvevict::errc::invalid_argument,
         "segmenter.sentence_ids");
  expect([](P& p) { p.granularity.segmenter.sentence_max_len = 0; }, kvevict::errc::invalid_argument,
         "segmenter.sentence_min_len / sentence_max_len");
  // And the valid configuration runs.
  kvevict::sablock<> ok;
  ok.selector = {2, 8, kvevict::uniform_budget{16}};
  ok.granularity.segmenter = {delims, 2};
  ok.granularity.segmenter.sentence_ids = ends;
  ok.granularity.segmenter.num_sentence_ids = 1;
  CHECK(kvevict::evict(kvevict::host, ok, f.c.block_view(), f.sig, f.kept.view(), f.res).ok());
}

TEST_CASE("the check catalogue: one entry per code, and the front doors report through it", "[errors]") {
  // every code names an argument and says what is wrong (the CUDA backend decodes its status word
  // through the same table: tests/cuda checks that it agrees with status_of)
  for (int code = 1; code < kvevict::detail::ck_count_; ++code) {
    const auto st = kvevict::detail::status_of(code);
    INFO(code);
    CHECK(!st.ok());
    CHECK(std::string(st.argument).size() > 0);
    CHECK(std::string(st.detail).size() > 0);
  }
  CHECK(kvevict::detail::status_of(kvevict::detail::ck_ok).ok());
  // the host's front doors return the catalogue's entry, message included
  auto same = [](const kvevict::status& st, int code) {
    const auto want = kvevict::detail::status_of(code);
    INFO(st.message());
    CHECK(st.message() == want.message());
  };
  {
    fixture f;  // a page id out of range in a block table
    f.c.table[1] = 10000;
    same(kvevict::evict(kvevict::host, f.p, f.c.block_view(), f.sig, f.kept.view(), f.res),
         kvevict::detail::ck_table_page_out_of_range);
  }
  {
    fixture f;  // a sequence's window override longer than the selector's
    const std::int32_t w[2] = {9, 8};
    f.sig.seq_windows = w;
    same(kvevict::evict(kvevict::host, f.p, f.c.block_view(), f.sig, f.kept.view(), f.res),
         kvevict::detail::ck_seq_windows_range);
  }
  {
    fixture f;  // a page listed twice: compaction refuses it
    kvevict::keep_plan_buffer plan(4, 64);
    for (int r = 0; r < 4; ++r) plan.counts[r] = 0;
    f.c.table[f.c.stride] = f.c.table[0];
    same(kvevict::compact(kvevict::host, f.c.block_view(), plan.const_view(), f.res),
         kvevict::detail::ck_page_listed_twice);
  }
  // the predicates the host loops and the device kernels share
  using namespace kvevict::detail;
  CHECK(check_row_length(-1, 4, 8) == ck_seq_len_negative);
  CHECK(check_row_length(33, 4, 8) == ck_table_row_too_short);
  CHECK(check_row_length(32, 4, 8) == ck_ok);
  CHECK(check_page_id(7, 7) == ck_table_page_out_of_range);
  CHECK(check_page_id(-1, 7, true) == ck_indices_page_out_of_range);
  CHECK(check_page_id(6, 7) == ck_ok);
  CHECK(check_csr_sequence(-1, 3, 8) == ck_indptr_order);
  CHECK(check_csr_sequence(2, 0, 8) == ck_last_page_len);
  CHECK(check_csr_sequence(0, 0, 8) == ck_ok);
  kvevict::row_rule r{16, 2, 8, 0, 1, 16, 40};
  CHECK(check_rule(r, 8) == ck_ok);
  CHECK(check_rule(r, 7) == ck_seq_windows_range);
  r.entries = 9;
  CHECK(check_rule(r, 8) == ck_seq_budgets_small);
  r.sinks = -1;
  CHECK(check_rule(r, 8) == ck_seq_sinks);
  CHECK(check_window_fits(r, 7, false) == ck_window_longer);
  CHECK(check_window_fits(r, 7, true) == ck_window_longer_override);
  r.window = 0;
  CHECK(check_window_queries(r, true) == ck_window_empty);
  CHECK(check_window_queries(r, false) == ck_ok);
  r.longest = 16;  // kept whole: no query needed
  CHECK(check_window_queries(r, true) == ck_ok);
  CHECK(check_plan_count(5, 4, 8, false, 5) == ck_plan_count);
  CHECK(check_plan_count(3, 4, 8, true, 4) == ck_plan_uneven);
  CHECK(check_plan_position(3, 1, 3, 10) == ck_plan_order);
  CHECK(check_plan_position(10, 0, 0, 10) == ck_plan_position);
}

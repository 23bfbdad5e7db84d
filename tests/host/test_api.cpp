// A new user's first hour: output buffers that cannot be overrun, and the rough edges met while
// embedding the library from the README alone (FlashInfer-style cache of two sequences).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "common/test_cache.hpp"

using namespace testing;

namespace {

// Two sequences, 4 KV heads, FlashInfer CSR: 8 plan rows, where a one-sequence example sizes 4.
struct two_seqs {
  logical L = make_logical(2, 4, 8, {70, 45}, 11);
  test_cache<float> c = build<float>(L, layout_kind::csr_nhd, 8, 5);
  std::vector<float> q = std::vector<float>(2 * 8 * 8 * 8, 0.25f);  // [seqs, q_heads, window, head_dim]
  kvevict::signals<float> sig;
  kvevict::snapkv<> p;
  two_seqs() {
    sig.queries = q.data();
    sig.num_q_heads = 8;
    p.selector = {2, 8, kvevict::uniform_budget{24}};
  }
  auto view() { return c.csr_view<kvevict::nhd>(); }
};

constexpr std::int32_t sentinel = -77;

bool untouched(const std::vector<std::int32_t>& v) {
  for (auto x : v)
    if (x != sentinel) return false;
  return true;
}

void expect_error(const kvevict::status& st, kvevict::errc code, const std::string& arg) {
  INFO(st.message());
  CHECK(st.code == code);
  CHECK(std::string(st.argument) == arg);
}

}  // namespace

TEST_CASE("a plan one row short is rejected before anything is written (plan, compact, evict)", "[api][buffers]") {
  two_seqs f;
  const auto view = f.view();
  const int rows = kvevict::plan_rows(view), cap = kvevict::plan_capacity(f.p, view, f.sig);
  REQUIRE(rows == 8);
  // Exactly rows - 1 rows allocated, so AddressSanitizer would see a write past them.
  kvevict::keep_plan_buffer small(rows - 1, cap);
  std::fill(small.positions.begin(), small.positions.end(), sentinel);
  std::fill(small.counts.begin(), small.counts.end(), sentinel);
  std::vector<std::int32_t> new_lens(rows, sentinel), freed(64, sentinel);
  kvevict::compact_result out{new_lens.data(), rows, freed.data(), 64};
  const auto before = f.c.checksum();

  expect_error(kvevict::plan(kvevict::host, f.p, view, f.sig, small.view()), kvevict::errc::buffer_too_small,
               "plan.rows");
  expect_error(kvevict::evict(kvevict::host, f.p, view, f.sig, small.view(), out), kvevict::errc::buffer_too_small,
               "plan.rows");
  expect_error(kvevict::compact(kvevict::host, view, small.const_view(), out), kvevict::errc::buffer_too_small,
               "plan.rows");
  CHECK(untouched(small.positions));
  CHECK(untouched(small.counts));
  CHECK(untouched(new_lens));
  CHECK(untouched(freed));
  CHECK(out.num_freed == 0);
  CHECK(f.c.checksum() == before);

  // A hand-built plan that forgets its row count is rejected the same way.
  kvevict::keep_plan_buffer full(rows, cap);
  kvevict::keep_plan by_hand{full.positions.data(), full.counts.data(), cap};
  expect_error(kvevict::plan(kvevict::host, f.p, view, f.sig, by_hand), kvevict::errc::buffer_too_small, "plan.rows");
}

TEST_CASE("new_lens one entry short is rejected before anything is written (compact, evict)", "[api][buffers]") {
  two_seqs f;
  const auto view = f.view();
  const int rows = kvevict::plan_rows(view);
  auto kept = kvevict::keep_plan_buffer::for_cache(f.p, view, f.sig);
  REQUIRE(kvevict::plan(kvevict::host, f.p, view, f.sig, kept.view()).ok());
  const auto plan_before = kept.positions;
  std::vector<std::int32_t> new_lens(rows - 1, sentinel), freed(64, sentinel);
  kvevict::compact_result out{new_lens.data(), rows - 1, freed.data(), 64};
  const auto before = f.c.checksum();
  expect_error(kvevict::compact(kvevict::host, view, kept.const_view(), out), kvevict::errc::buffer_too_small,
               "result.new_lens");
  // evict checks it before planning: the plan buffer keeps what it held.
  std::fill(kept.positions.begin(), kept.positions.end(), sentinel);
  expect_error(kvevict::evict(kvevict::host, f.p, view, f.sig, kept.view(), out), kvevict::errc::buffer_too_small,
               "result.new_lens");
  CHECK(untouched(kept.positions));
  CHECK(untouched(new_lens));
  CHECK(untouched(freed));
  CHECK(f.c.checksum() == before);
  CHECK(plan_before != kept.positions);  // the first plan did write (the check above is not vacuous)
}

TEST_CASE("buffers sized by for_cache serve a two-sequence batch", "[api][buffers]") {
  two_seqs f;
  const auto view = f.view();
  auto kept = kvevict::keep_plan_buffer::for_cache(f.p, view, f.sig);
  auto out = kvevict::compact_result_buffer::for_cache(view);
  CHECK(kept.rows() == 8);
  CHECK(kept.capacity == 24);
  CHECK(out.new_lens.size() == 8u);
  CHECK(out.freed_pages.size() == static_cast<std::size_t>((70 + 7) / 8 + (45 + 7) / 8));  // every listed page
  const auto st = kvevict::evict(kvevict::host, f.p, view, f.sig, kept.view(), out.result);
  INFO(st.message());
  REQUIRE(st.ok());
  CHECK(out.new_lens == std::vector<std::int32_t>(8, 24));
  CHECK(out.freed().size() == static_cast<std::size_t>((9 - 3) + (6 - 3)));  // 24 tokens fill 3 pages of 8
  // Moving the buffer keeps `result` pointing at its own arrays.
  auto moved = std::move(out);
  CHECK(moved.result.new_lens == moved.new_lens.data());
  CHECK(moved.result.freed_pages == moved.freed_pages.data());
  CHECK(moved.freed().size() == 9u);
  // For a dense cache nothing is freed, so no freed list is needed.
  auto dense = build<float>(f.L, layout_kind::dense, 8, 5);
  CHECK(kvevict::compact_result_buffer::for_cache(dense.dense_view()).freed_pages.empty());
}

TEST_CASE("plan and score read a view over const keys and values", "[api]") {
  two_seqs f;
  auto dense = build<float>(f.L, layout_kind::dense, 8, 5);
  const auto mut = dense.dense_view();
  const kvevict::dense_cache<const float> ro{
      dense.k.data(), dense.v.data(), dense.lens32.data(), 2, 4, dense.capacity, 8};
  static_assert(std::is_same_v<decltype(ro)::value_type, float>);
  static_assert(kvevict::is_paged_kv_cache_v<kvevict::dense_cache<const float>>);
  static_assert(kvevict::paged_kv_cache<kvevict::block_table_cache<const kvevict::bfloat16>>);
  static_assert(kvevict::is_mutable_cache_v<kvevict::dense_cache<float>>);
  static_assert(!kvevict::is_mutable_cache_v<kvevict::dense_cache<const float>>);
  auto a = kvevict::keep_plan_buffer::for_cache(f.p, mut, f.sig), b = a;
  REQUIRE(kvevict::plan(kvevict::host, f.p, mut, f.sig, a.view()).ok());
  REQUIRE(kvevict::plan(kvevict::host, f.p, ro, f.sig, b.view()).ok());
  CHECK(a.positions == b.positions);
  CHECK(a.counts == b.counts);
  std::vector<float> s1(2 * 4 * 70), s2(s1.size());
  REQUIRE(kvevict::score(kvevict::host, f.p, mut, f.sig, s1.data(), 70).ok());
  REQUIRE(kvevict::score(kvevict::host, f.p, ro, f.sig, s2.data(), 70).ok());
  CHECK(s1 == s2);
}

TEST_CASE("score: allocating overload, workspace size, and its checks", "[api]") {
  two_seqs f;
  const auto view = f.view();
  const std::size_t bytes = kvevict::score_workspace_bytes(kvevict::host, f.p, view, f.sig);
  CHECK(bytes > 0);
  std::vector<unsigned char> ws(bytes);
  std::vector<float> a(2 * 4 * 70, -1.0f), b(a.size(), -1.0f);
  REQUIRE(kvevict::score(kvevict::host, f.p, view, f.sig, a.data(), 70, ws.data(), ws.size()).ok());
  REQUIRE(kvevict::score(kvevict::host, f.p, view, f.sig, b.data(), 70).ok());
  CHECK(a == b);
  // Scores are what plan selects on: the pooled window attention sums to about the window's rows.
  double total = 0;
  for (int t = 0; t < 70; ++t) total += a[t];
  CHECK(total > 0.5);
  // Below the one-thread size it is an error; between that and the all-threads size it runs on fewer threads.
  const std::size_t one = kvevict::score_workspace_bytes(kvevict::host.threads(1), f.p, view, f.sig);
  CHECK(one <= bytes);
  expect_error(kvevict::score(kvevict::host, f.p, view, f.sig, a.data(), 70, ws.data(), one - 1),
               kvevict::errc::buffer_too_small, "workspace");
  REQUIRE(kvevict::score(kvevict::host, f.p, view, f.sig, b.data(), 70, ws.data(), one).ok());
  CHECK(a == b);
  expect_error(kvevict::score(kvevict::host, f.p, view, f.sig, a.data(), 69), kvevict::errc::buffer_too_small,
               "stride");
  // A scorer that needs no scratch takes a null workspace.
  kvevict::streaming_llm s;
  s.selector = {2, 4, kvevict::uniform_budget{10}};
  CHECK(kvevict::score_workspace_bytes(kvevict::host, s, view, f.sig) == 0u);
  CHECK(kvevict::score(kvevict::host, s, view, f.sig, a.data(), 70, nullptr, 0).ok());
}

TEST_CASE("half and bfloat16 compare by value with ==", "[api][numeric]") {
  using kvevict::bfloat16;
  using kvevict::half;
  const auto nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(kvevict::from_float<half>(1.5f) == kvevict::from_float<half>(1.5f));
  CHECK(kvevict::from_float<half>(1.5f) != kvevict::from_float<half>(2.0f));
  CHECK(half{0x0000} == half{0x8000});  // +0 == -0
  CHECK(kvevict::from_float<half>(nan) != kvevict::from_float<half>(nan));
  CHECK(bfloat16{0x3f80} == kvevict::from_float<bfloat16>(1.0f));
  CHECK(bfloat16{0x0000} == bfloat16{0x8000});
  CHECK(kvevict::from_float<bfloat16>(nan) != kvevict::from_float<bfloat16>(nan));
  CHECK(bfloat16{0x3f80} != bfloat16{0x4000});
}

TEST_CASE("segmenters: no maximum length by name, and SABlock and SentenceKV need delimiter ids", "[api][segment]") {
  std::vector<std::int32_t> ids(200, 9);
  ids[149] = 1;  // one sentence of 150 tokens, then one of 50
  const std::int32_t delims[] = {1};
  kvevict::delimiter_segmenter seg{delims, 1, 3, kvevict::no_max_len};
  std::vector<std::int32_t> off(2 * 200 + 2);
  REQUIRE(seg.segment_ids(ids.data(), 0, 200, off.data()) == 2);
  CHECK(off[1] == 150);
  seg.max_len = 64;  // the default splits the long sentence into 3, the short one stays
  CHECK(seg.segment_ids(ids.data(), 0, 200, off.data()) == 4);

  two_seqs f;
  const auto view = f.view();
  std::vector<std::int32_t> tok(2 * 70, 9);
  f.sig.token_ids = tok.data();
  f.sig.token_ids_stride = 70;
  auto kept = kvevict::keep_plan_buffer::for_cache(f.p, view, f.sig);
  kvevict::sablock<> sb;  // no delimiter ids configured
  sb.selector = f.p.selector;
  expect_error(kvevict::plan(kvevict::host, sb, view, f.sig, kept.view()), kvevict::errc::invalid_argument,
               "segmenter.delimiter_ids");
  kvevict::sentencekv<> sk;
  sk.selector = f.p.selector;
  expect_error(kvevict::plan(kvevict::host, sk, view, f.sig, kept.view()), kvevict::errc::invalid_argument,
               "segmenter.delimiter_ids");
  sb.granularity.segmenter.delimiter_ids = delims;
  sb.granularity.segmenter.num_delimiters = 1;
  sb.granularity.segmenter.max_len = kvevict::no_max_len;
  CHECK(kvevict::plan(kvevict::host, sb, view, f.sig, kept.view()).ok());
}

TEST_CASE("views: one naming scheme, arrays by engine name, sizes as <accessor>_", "[api]") {
  // Designated initializers compile only with these names: the scheme is part of the API.
  float k[64] = {}, v[64] = {};
  const std::int32_t table[2] = {0, 1}, lens[1] = {5}, row_lens[1] = {4}, indptr[2] = {0, 2}, last[1] = {1};
  const kvevict::block_table_cache<float> bt{.k = k,
                                             .v = v,
                                             .block_table = table,
                                             .seq_lens = lens,
                                             .num_seqs_ = 1,
                                             .block_table_stride_ = 2,
                                             .num_pages_ = 2,
                                             .page_size_ = 4,
                                             .num_kv_heads_ = 2,
                                             .head_dim_ = 4};
  const kvevict::head_row_table_cache<float> hr{.k = k,
                                                .v = v,
                                                .block_table = table,
                                                .row_lens = row_lens,
                                                .num_seqs_ = 1,
                                                .block_table_stride_ = 1,
                                                .num_pages_ = 2,
                                                .page_size_ = 4,
                                                .num_kv_heads_ = 1,
                                                .head_dim_ = 4};
  const kvevict::csr_page_cache<float> csr{.k = k,
                                           .v = v,
                                           .indptr = indptr,
                                           .indices = table,
                                           .last_page_len = last,
                                           .num_seqs_ = 1,
                                           .num_pages_ = 2,
                                           .page_size_ = 4,
                                           .num_kv_heads_ = 2,
                                           .head_dim_ = 4};
  const kvevict::dense_cache<float> dn{
      .k = k, .v = v, .seq_lens = lens, .num_seqs_ = 1, .num_kv_heads_ = 2, .capacity_ = 8, .head_dim_ = 4};
  CHECK(bt.num_kv_heads() == 2);
  CHECK(bt.block_table_stride() == 2);
  CHECK(hr.seq_len(0, 0) == 4);
  CHECK(csr.seq_len(0) == 5);
  CHECK(dn.capacity() == 8);
  CHECK(dn.page_size() == 8);
  CHECK(kvevict::validate_cache(bt).ok());
  CHECK(kvevict::validate_cache(hr).ok());
  CHECK(kvevict::validate_cache(csr).ok());
  CHECK(kvevict::validate_cache(dn).ok());
}

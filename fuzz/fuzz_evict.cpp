// libFuzzer target: random caches (every layout and element type), page tables (sometimes
// corrupted), token ids, queries, attention sums, budgets and per-sequence overrides; `plan`,
// `compact` or `evict` with every preset. The contract checked on every input:
//  * on an error: a named argument, and K and V byte-identical to the input;
//  * on success: every plan row sorted, unique, in range, with the protected tokens and the exact
//    count (uniform budgets), and a compacted cache equal to a naive gather, byte for byte.
// Build and run: scripts/fuzz.sh.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "common/test_cache.hpp"

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "contract violation: %s %s\n", what, detail.c_str());
  std::abort();
}

const std::int32_t delimiters[] = {1, 2};

struct params {
  int budget, sinks, window;
  bool uniform_count;  // exact min(budget, n) per head expected
};

template <class T, class Policy>
void run(FuzzedDataProvider& in, testing::test_cache<T>& c, Policy policy, bool uniform_count) {
  const int kvh = c.kv_heads, d = c.head_dim, seqs = c.num_seqs;
  // Selector.
  policy.selector.sinks = in.ConsumeIntegralInRange<int>(-1, 6);
  policy.selector.window = in.ConsumeIntegralInRange<int>(-1, 12);
  policy.selector.budget.entries = in.ConsumeIntegralInRange<int>(-2, 90);
  // Signals.
  const int group = in.ConsumeIntegralInRange<int>(1, 3);
  const int hq = in.ConsumeBool() ? kvh * group : in.ConsumeIntegralInRange<int>(0, 7);
  const int rows = std::max(0, policy.selector.window) + in.ConsumeIntegralInRange<int>(0, 2);
  std::vector<T> queries(static_cast<size_t>(seqs) * std::max(hq, 1) * std::max(rows, 1) * d);
  for (auto& x : queries) x = kvevict::from_float<T>(in.ConsumeFloatingPointInRange<float>(-3.0f, 3.0f));
  if (in.ConsumeBool() && !queries.empty())
    queries[in.ConsumeIntegralInRange<size_t>(0, queries.size() - 1)] =
        kvevict::from_float<T>(std::numeric_limits<float>::quiet_NaN());
  int max_len = 1;
  for (int n : c.lens) max_len = std::max(max_len, n);
  const int stride = max_len + in.ConsumeIntegralInRange<int>(-1, 2);
  std::vector<float> sums(static_cast<size_t>(seqs) * std::max(hq, 1) * std::max(stride, 1));
  for (auto& x : sums) x = in.ConsumeFloatingPointInRange<float>(0.0f, 4.0f);
  if (in.ConsumeBool() && !sums.empty()) sums[in.ConsumeIntegralInRange<size_t>(0, sums.size() - 1)] = INFINITY;
  std::vector<std::int32_t> ids(static_cast<size_t>(seqs) * std::max(stride, 1));
  for (auto& x : ids) x = in.ConsumeIntegralInRange<int>(0, 7);
  std::vector<std::int32_t> seq_budgets(seqs), seq_windows(seqs);
  for (int s = 0; s < seqs; ++s) {
    seq_budgets[s] = in.ConsumeIntegralInRange<int>(-1, 90);
    seq_windows[s] = in.ConsumeIntegralInRange<int>(-1, std::max(0, policy.selector.window));
  }
  kvevict::signals<T> sig;
  if (in.ConsumeProbability<float>() < 0.9f) sig.queries = queries.data();
  sig.num_q_heads = hq;
  sig.query_rows = rows;
  sig.attention_sums = in.ConsumeProbability<float>() < 0.9f ? sums.data() : nullptr;
  sig.sums_stride = stride;
  sig.token_ids = in.ConsumeProbability<float>() < 0.9f ? ids.data() : nullptr;
  sig.token_ids_stride = stride;
  sig.num_layers = in.ConsumeIntegralInRange<int>(0, 4);
  sig.layer = in.ConsumeIntegralInRange<int>(-1, 4);
  const bool per_seq = in.ConsumeBool();
  if (per_seq) {
    sig.seq_budgets = seq_budgets.data();
    if (in.ConsumeBool()) sig.seq_windows = seq_windows.data();
  }
  const int op = in.ConsumeIntegralInRange<int>(0, 2);  // plan, compact (fuzzed plan), evict
  const std::vector<T> k0 = c.k, v0 = c.v;
  const auto sum0 = c.checksum();

  c.visit([&](auto view) {
    int cap = 1;
    if (kvevict::validate_cache(view).ok()) cap = kvevict::plan_capacity(policy, view, sig);
    cap = std::max(0, cap + (in.ConsumeProbability<float>() < 0.1f ? -1 : 0));
    kvevict::keep_plan_buffer kept(seqs * kvh, std::max(cap, max_len + 1));
    kept.capacity = std::max(cap, 0);
    if (op == 1) {  // a fuzzed plan: sorted random subsets, sometimes broken
      for (int r = 0; r < seqs * kvh; ++r) {
        const int n = c.lens[c.kind == testing::layout_kind::head_rows ? r : r / kvh];
        int cnt = 0;
        for (int t = 0; t < n && cnt < kept.capacity; ++t)
          if (in.ConsumeBool()) kept.positions[static_cast<size_t>(r) * kept.capacity + cnt++] = t;
        kept.counts[r] = cnt;
      }
      if (in.ConsumeProbability<float>() < 0.2f && !kept.positions.empty())
        kept.positions[in.ConsumeIntegralInRange<size_t>(0, kept.positions.size() - 1)] =
            in.ConsumeIntegralInRange<int>(-2, 300);
    }
    const int freed_cap = in.ConsumeIntegralInRange<int>(0, c.num_pages + 1);
    // Output buffers one row short (allocated so, for AddressSanitizer): 1 the plan, 2 new_lens.
    const int rows = seqs * kvh, shrink = rows > 0 ? in.ConsumeIntegralInRange<int>(0, 12) : 0;
    kvevict::keep_plan_buffer short_plan;
    if (shrink == 1) {
      short_plan = kvevict::keep_plan_buffer(rows - 1, kept.capacity);
      std::copy(kept.positions.begin(), kept.positions.begin() + short_plan.positions.size(),
                short_plan.positions.begin());
      std::copy(kept.counts.begin(), kept.counts.begin() + (rows - 1), short_plan.counts.begin());
    }
    kvevict::keep_plan_buffer& used = shrink == 1 ? short_plan : kept;
    const kvevict::keep_plan_buffer used0 = used;
    std::vector<std::int32_t> new_lens(static_cast<size_t>(rows - (shrink == 2 ? 1 : 0)), -7),
        freed(static_cast<size_t>(freed_cap) + 1, -7);
    const std::vector<std::int32_t> new_lens0 = new_lens, freed0 = freed;
    kvevict::compact_result out{new_lens.data(), static_cast<int>(new_lens.size()), freed.data(), freed_cap};
    kvevict::status st;
    if (op == 0)
      st = kvevict::plan(kvevict::host, policy, view, sig, used.view());
    else if (op == 1)
      st = kvevict::compact(kvevict::host, view, used.const_view(), out);
    else
      st = kvevict::evict(kvevict::host, policy, view, sig, used.view(), out);

    const bool shrunk = shrink == 1 || (shrink == 2 && op != 0);
    if (shrunk && st.ok()) fail("accepted an output buffer one row short");
    if (!st.ok()) {
      if (st.argument == nullptr || st.argument[0] == '\0') fail("error without an argument name");
      if (c.checksum() != sum0) fail("rejected call changed the cache", st.message());
      const std::string arg = st.argument;
      if (st.code == kvevict::errc::buffer_too_small && (arg == "plan.rows" || arg == "result.new_lens")) {
        if (!shrunk) fail("a full-size buffer reported too small", st.message());
        if (used.positions != used0.positions || used.counts != used0.counts || new_lens != new_lens0 ||
            freed != freed0 || out.num_freed != 0)
          fail("a buffer-size error wrote to a buffer", st.message());
      }
      return;
    }
    // Plan validity (op 0 and 2 made it; op 1 was accepted, so it must be valid too).
    for (int s = 0; s < seqs; ++s)
      for (int h = 0; h < kvh; ++h) {
        const int r = s * kvh + h, n = view.seq_len(s, h), cnt = kept.counts[r];
        const std::int32_t* row = kept.positions.data() + static_cast<size_t>(r) * kept.capacity;
        if (cnt < 0 || cnt > n) fail("count out of range");
        for (int j = 0; j < cnt; ++j) {
          if (row[j] < 0 || row[j] >= n) fail("position out of range");
          if (j > 0 && row[j] <= row[j - 1]) fail("positions not strictly increasing");
        }
        if (op == 1) continue;
        const int entries = per_seq ? seq_budgets[s] : policy.selector.budget.entries;
        const int sinks = policy.selector.sinks;
        const int window = per_seq && sig.seq_windows ? seq_windows[s] : policy.selector.window;
        if (cnt < n) {  // something was evicted: the protected tokens survive
          for (int t = 0; t < std::min(sinks, n); ++t)
            if (!std::binary_search(row, row + cnt, t)) fail("sink dropped");
          for (int t = std::max(0, n - window); t < n; ++t)
            if (!std::binary_search(row, row + cnt, t)) fail("recent-window token dropped");
        }
        if (uniform_count && cnt != std::min(entries, n)) fail("count is not min(budget, n)", std::to_string(cnt));
      }
    if (op == 0) {
      if (c.checksum() != sum0) fail("plan wrote to the cache");
      return;
    }
    // Compaction equals a naive gather, byte for byte.
    std::vector<T> ek = k0, ev = v0;
    std::vector<int> want_freed;
    for (int s = 0; s < seqs; ++s)
      for (int h = 0; h < kvh; ++h) {
        const int r = s * kvh + h;
        const std::int32_t* row = kept.positions.data() + static_cast<size_t>(r) * kept.capacity;
        for (int j = 0; j < kept.counts[r]; ++j)
          for (int x = 0; x < d; ++x) {
            ek[c.addr(s, h, j) + x] = k0[c.addr(s, h, row[j]) + x];
            ev[c.addr(s, h, j) + x] = v0[c.addr(s, h, row[j]) + x];
          }
        if (new_lens[r] != kept.counts[r]) fail("new length differs from the plan");
        const bool rows_per_head = c.kind == testing::layout_kind::head_rows;
        if (c.kind != testing::layout_kind::dense && (rows_per_head || h == 0)) {
          // The sequence's pages are those its (view) length covers; pages past it are not its own.
          const auto& pg = c.pages[c.list_of(s, h)];
          const int listed = view.num_row_pages(s, h);
          for (int lp = (kept.counts[r] + c.page_size - 1) / c.page_size; lp < listed; ++lp)
            want_freed.push_back(pg[lp]);
        }
      }
    if (std::memcmp(c.k.data(), ek.data(), ek.size() * sizeof(T)) != 0)
      fail("compacted K differs from the naive gather");
    if (std::memcmp(c.v.data(), ev.data(), ev.size() * sizeof(T)) != 0)
      fail("compacted V differs from the naive gather");
    if (std::vector<int>(freed.begin(), freed.begin() + out.num_freed) != want_freed) fail("freed pages differ");
  });
}

template <class T>
void with_type(FuzzedDataProvider& in) {
  const auto kind = testing::all_layouts[in.ConsumeIntegralInRange<int>(0, 5)];
  const int seqs = in.ConsumeIntegralInRange<int>(0, 3), kvh = in.ConsumeIntegralInRange<int>(1, 3);
  const int d = in.ConsumeIntegralInRange<int>(1, 9), ps = in.ConsumeIntegralInRange<int>(1, 17);
  std::vector<int> lens;
  for (int s = 0; s < std::max(seqs, 1); ++s) lens.push_back(in.ConsumeIntegralInRange<int>(0, 120));
  const auto seed = in.ConsumeIntegral<std::uint32_t>();
  const auto L = testing::make_logical(std::max(seqs, 1), kvh, d, lens, seed, kind == testing::layout_kind::head_rows);
  auto c = testing::build<T>(L, kind, ps, seed, in.ConsumeIntegralInRange<int>(0, 3));
  // Occasionally corrupt the page table or a length.
  if (in.ConsumeProbability<float>() < 0.15f && kind != testing::layout_kind::dense) {
    const int li = in.ConsumeIntegralInRange<int>(0, c.lists() - 1);
    if (!c.pages[li].empty())
      c.pages[li][in.ConsumeIntegralInRange<size_t>(0, c.pages[li].size() - 1)] =
          in.ConsumeIntegralInRange<int>(-1, c.num_pages);
    c.sync_tables();
  }
  if (in.ConsumeProbability<float>() < 0.05f) {
    c.lens32[0] = in.ConsumeIntegralInRange<int>(-3, 400);  // the view's length only: pages may not match
  }
  c.num_seqs = seqs;  // 0: the empty batch
  using namespace kvevict;
  // Every preset on bfloat16; float and half (same policy code, other conversions) with the
  // cheapest preset and fuzzed plans, which keeps the build small.
  const int choice = std::is_same_v<T, bfloat16> ? in.ConsumeIntegralInRange<int>(0, 9) : 0;
  switch (choice) {
    case 0:
      run(in, c, streaming_llm{}, true);
      break;
    case 1:
      run(in, c, h2o<>{}, true);
      break;
    case 2:
      run(in, c, snapkv<>{}, true);
      break;
    case 3:
      run(in, c, snapkv<gqa_max, max_pool<>>{}, true);
      break;
    case 4:
      run(in, c, pyramidkv<>{}, false);
      break;
    case 5:
      run(in, c, ada_snapkv<>{}, false);
      break;
    case 6:
      run(in, c, chunkkv<>{}, true);
      break;
    case 7: {
      sentencekv<> p;
      p.granularity.segmenter = {delimiters, 2, in.ConsumeIntegralInRange<int>(0, 5),
                                 in.ConsumeIntegralInRange<int>(0, 20)};
      run(in, c, p, true);
      break;
    }
    case 8: {
      sablock<> p;
      p.granularity.segmenter = {delimiters, 2, in.ConsumeIntegralInRange<int>(0, 5),
                                 in.ConsumeIntegralInRange<int>(0, 20)};
      p.granularity.alpha = in.ConsumeFloatingPointInRange<double>(-0.5, 1.5);
      p.granularity.g = in.ConsumeFloatingPointInRange<double>(-1.0, 60.0);
      p.granularity.steps = in.ConsumeIntegralInRange<int>(0, 40);
      p.granularity.block_size = in.ConsumeIntegralInRange<int>(-1, 9);
      run(in, c, p, true);
      break;
    }
    default: {
      sablock<key_similarity_segmenter, positional> p;
      run(in, c, p, true);
      break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  switch (in.ConsumeIntegralInRange<int>(0, 2)) {
    case 0:
      with_type<float>(in);
      break;
    case 1:
      with_type<kvevict::half>(in);
      break;
    default:
      with_type<kvevict::bfloat16>(in);
      break;
  }
  return 0;
}

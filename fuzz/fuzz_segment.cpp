// libFuzzer target: segmentation and block selection on raw inputs. Token ids, delimiters,
// min/max lengths, ranges, scores (finite) and SABlock parameters come from the fuzzer; checked:
// segments cover the range exactly, in order, none longer than max_len, none shorter than
// min_len unless it is the only one; two-level segments nest and cover the range; SABlock (one
// level and with sentences), units-then-fill and top-k mark exactly the budget.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include <kvevict/kvevict.hpp>

namespace {
[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "contract violation: %s\n", what);
  std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const int n = in.ConsumeIntegralInRange<int>(0, 400);
  std::vector<std::int32_t> ids(n);
  for (auto& x : ids) x = in.ConsumeIntegralInRange<int>(0, 6);
  const std::int32_t delims[] = {1, 2, 3};
  const int nd = in.ConsumeIntegralInRange<int>(0, 3);
  kvevict::delimiter_segmenter seg{delims, nd, in.ConsumeIntegralInRange<int>(1, 12),
                                   in.ConsumeIntegralInRange<int>(1, 70)};
  const int lo = in.ConsumeIntegralInRange<int>(0, n), hi = in.ConsumeIntegralInRange<int>(lo, n);
  std::vector<std::int32_t> off(2 * static_cast<size_t>(hi - lo) + 2);
  const int count = seg.segment_ids(ids.data(), lo, hi, off.data());
  if (hi == lo) {
    if (count != 0) fail("segments in an empty range");
    return 0;
  }
  if (count < 1 || off[0] != lo || off[count] != hi) fail("segments do not cover the range");
  for (int u = 0; u < count; ++u) {
    const int len = off[u + 1] - off[u];
    if (len < 1) fail("empty or reversed segment");
    if (len > seg.max_len) fail("segment longer than max_len");
  }
  // Before splitting, segments are >= min_len unless the range is shorter: after splitting,
  // a piece is at least floor(len / pieces) >= min(min_len, max_len) / 2 for min_len <= max_len.
  if (count == 1 && off[1] - off[0] != hi - lo) fail("single segment is not the range");

  // Two levels: sentences (ids ending one: a random subset) made of clauses, covering the range.
  {
    const std::int32_t ends[] = {1, 3};
    kvevict::delimiter_segmenter two = seg;
    two.sentence_ids = ends;
    two.num_sentence_ids = in.ConsumeIntegralInRange<int>(1, 2);
    two.sentence_min_len = in.ConsumeIntegralInRange<int>(1, 40);
    two.sentence_max_len = in.ConsumeIntegralInRange<int>(1, 300);
    std::vector<std::int32_t> o(static_cast<size_t>(hi - lo) + 1), st(static_cast<size_t>(hi - lo) + 1),
        raw(static_cast<size_t>(hi - lo) + 1);
    int ns = -1;
    const int c = two.segment_levels_ids(ids.data(), lo, hi, o.data(), st.data(), &ns, raw.data());
    if (c < 1 || ns < 1 || ns > c || o[0] != lo || o[c] != hi || st[0] != 0 || st[ns] != c)
      fail("two levels do not cover the range");
    for (int u = 0; u < c; ++u) {
      if (o[u + 1] <= o[u]) fail("empty clause");
      if (o[u + 1] - o[u] > two.max_len) fail("clause longer than max_len");
    }
    for (int k = 0; k < ns; ++k) {
      if (st[k + 1] <= st[k]) fail("empty sentence");
      if (o[st[k + 1]] - o[st[k]] > two.sentence_max_len) fail("sentence longer than sentence_max_len");
    }
  }

  // Selections on random finite scores mark exactly the budget.
  std::vector<double> a(n);
  for (auto& x : a) x = in.ConsumeFloatingPointInRange<double>(0.0, in.ConsumeBool() ? 1.0 : 1e6);
  const int bc = in.ConsumeIntegralInRange<int>(0, hi - lo);
  std::vector<unsigned char> keep(hi - lo);
  std::vector<double> r(hi - lo + 1), prefix(hi - lo + 1), means(hi - lo + 1),
      bound(kvevict::host_backend::sablock_bound_doubles(hi - lo));
  std::vector<std::int32_t> idx(hi - lo), order(hi - lo + 1);
  kvevict::host_backend::sablock_params prm{
      in.ConsumeFloatingPointInRange<double>(0.0, 1.0), in.ConsumeFloatingPointInRange<double>(0.0, 100.0),
      in.ConsumeIntegralInRange<int>(1, 64), in.ConsumeIntegralInRange<int>(0, 9)};
  prm.beta = in.ConsumeFloatingPointInRange<double>(0.0, 1.0 - prm.alpha);
  prm.sentence_blocks = in.ConsumeBool();
  // Sentences: consecutive clause ranges, cut at random clause boundaries.
  std::vector<std::int32_t> sent = {0};
  for (int u = 1; u < count; ++u)
    if (in.ConsumeBool()) sent.push_back(u);
  sent.push_back(count);
  const bool levels = in.ConsumeBool();
  if (bc < hi - lo) {
    kvevict::host_backend::sablock_select(a.data(), lo, hi, off.data(), count, levels ? sent.data() : nullptr,
                                          static_cast<int>(sent.size()) - 1, bc, prm, keep.data(), r.data(),
                                          prefix.data(), idx.data(), bound.data());
    int kept = 0;
    for (auto k : keep) kept += k;
    if (kept != bc) fail("SABlock did not keep exactly the budget");
  }
  std::fill(keep.begin(), keep.end(), 0);
  kvevict::host_backend::select_units_then_fill(a.data(), lo, hi, off.data(), count, bc, keep.data(), order.data(),
                                                idx.data(), means.data());
  int kept = 0;
  for (auto k : keep) kept += k;
  if (kept != bc) fail("units-then-fill did not keep exactly the budget");
  return 0;
}

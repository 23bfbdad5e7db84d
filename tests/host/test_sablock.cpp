#include <catch2/catch.hpp>

#include <kvevict/host/block_select.hpp>
#include <kvevict/segment/segmenters.hpp>

#include "common/mini_json.hpp"

TEST_CASE("SABlock golden cases: segments and kept positions", "[sablock][golden]") {
  const auto doc = mini_json::load(std::string(KVEVICT_FIXTURES_DIR) + "/sablock_golden.json");
  for (const auto& c : doc["cases"].arr) {
    const int n = static_cast<int>(c["num_tokens"].num), budget = static_cast<int>(c["budget"].num);
    const int sinks = static_cast<int>(c["sinks"].num), window = static_cast<int>(c["window"].num);
    const auto ids = c["token_ids"].ints();
    const auto delims = c["delimiter_ids"].ints();
    const auto scores = c["scores"].doubles();
    kvevict::delimiter_segmenter seg{delims.data(), static_cast<int>(delims.size()), static_cast<int>(c["min_len"].num),
                                     static_cast<int>(c["max_len"].num)};
    const int lo = sinks, hi = n - window;
    std::vector<std::int32_t> off(2 * (hi - lo) + 2);
    const int count = seg.segment_ids(ids.data(), lo, hi, off.data());
    std::vector<std::vector<int>> segs;
    for (int u = 0; u < count; ++u) segs.push_back({off[u], off[u + 1]});
    std::vector<std::vector<int>> want_segs;
    for (const auto& s : c["expected_segments"].arr) want_segs.push_back(s.ints());
    INFO(c["name"].str);
    CHECK(segs == want_segs);

    std::vector<int> kept;
    if (n <= budget) {
      for (int t = 0; t < n; ++t) kept.push_back(t);
    } else {
      const int bc = budget - sinks - window;
      std::vector<unsigned char> keep(hi - lo, 0);
      std::vector<double> r(hi - lo + 1), prefix(hi - lo + 1);
      std::vector<std::int32_t> idx(hi - lo);
      kvevict::host_backend::sablock_params prm{c["alpha"].num, c["g"].num, static_cast<int>(c["steps"].num), 0};
      kvevict::host_backend::sablock_select(scores.data(), lo, hi, off.data(), count, bc, prm, keep.data(), r.data(),
                                            prefix.data(), idx.data());
      for (int t = 0; t < sinks; ++t) kept.push_back(t);
      for (int t = lo; t < hi; ++t)
        if (keep[t - lo]) kept.push_back(t);
      for (int t = hi; t < n; ++t) kept.push_back(t);
    }
    CHECK(kept == c["expected_kept"].ints());
  }
}

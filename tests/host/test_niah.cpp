#include <catch2/catch.hpp>

#include <cstring>

#include "niah/report.hpp"

using namespace kvevict::synthetic;

namespace {
const niah_generator& gen() {
  static const niah_generator g;
  return g;
}

// Window-attention scores of one layer (no pooling), [kv_heads, n].
std::vector<float> window_scores(niah_sequence& s, int layer) {
  kvevict::eviction_policy<kvevict::window_attention<kvevict::gqa_mean, kvevict::no_pool>, kvevict::token_level,
                           kvevict::selector<>>
      p;
  p.selector = {4, s.cfg.window, kvevict::uniform_budget{96}};
  auto view = s.layer_view(layer);
  auto sig = s.layer_signals(layer);
  std::vector<float> out(static_cast<size_t>(s.cfg.kv_heads) * s.tokens);
  std::vector<unsigned char> ws(kvevict::plan_workspace_bytes(kvevict::host, p, view, sig));
  REQUIRE(kvevict::score(kvevict::host, p, view, sig, out.data(), s.tokens, ws.data(), ws.size()).ok());
  return out;
}
}  // namespace

TEST_CASE("NIAH generator: the needle sits at the requested depth", "[niah]") {
  for (int ctx : {1000, 3000}) {
    int last = 0;
    for (double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
      const auto s = gen().generate({ctx, depth, 7, 0});
      REQUIRE(s.tokens == ctx);
      const int haystack = ctx - s.cfg.window - 1 - (s.cfg.phrase_len + s.cfg.answer_len + 1);
      const int want = 1 + static_cast<int>(depth * haystack);
      INFO("context " << ctx << " depth " << depth << " phrase at " << s.phrase_begin);
      CHECK(std::abs(s.phrase_begin - want) <= 130);  // the nearest sentence start (sentences <= 4 x 31 tokens)
      CHECK(s.phrase_begin >= last);
      last = s.phrase_begin;
      if (depth == 0.0) CHECK(s.phrase_begin == 1);
      if (depth == 1.0) CHECK(s.answer_end + 1 == ctx - s.cfg.window);  // right before the question
      CHECK(s.token_ids[s.phrase_begin] == phrase0);
      for (int t = s.answer_begin; t < s.answer_end; ++t)
        CHECK((s.token_ids[t] >= digit0 && s.token_ids[t] < digit0 + 10));
      CHECK(s.token_ids[s.answer_end] == period);
    }
  }
}

TEST_CASE("NIAH generator: window queries peak on the key phrase, decode queries on the answer", "[niah]") {
  auto s = gen().generate({2000, 0.4, 3, 0});
  const int n = s.tokens, d = s.cfg.head_dim, group = s.cfg.q_heads / s.cfg.kv_heads;
  int retrieval_heads = 0;
  for (int l = 0; l < s.cfg.num_layers; ++l) {
    const auto sc = window_scores(s, l);
    for (int h = 0; h < s.cfg.kv_heads; ++h) {
      if (s.cfg.kind(l, h) != head_kind::retrieval) continue;
      ++retrieval_heads;
      // Outside the sink and the question, the highest-scored token is a key-phrase token, and
      // the phrase outscores the answer.
      int best = 1;
      for (int t = 1; t < n - s.cfg.window; ++t)
        if (sc[h * n + t] > sc[h * n + best]) best = t;
      CHECK(best >= s.phrase_begin);
      CHECK(best < s.answer_begin);
      double phrase = 0, answer = 0;
      for (int t = s.phrase_begin; t < s.answer_begin; ++t) phrase += sc[h * n + t] / s.cfg.phrase_len;
      for (int t = s.answer_begin; t < s.answer_end; ++t) answer += sc[h * n + t] / s.cfg.answer_len;
      CHECK(phrase > 10 * answer);
      // Decode query j attends most to answer token j.
      for (int g = 0; g < group; ++g)
        for (int j = 0; j < s.cfg.answer_len; ++j) {
          const auto* q = &s.decode_queries[l][((static_cast<size_t>(h) * group + g) * s.cfg.answer_len + j) * d];
          int arg = 0;
          double top = -1e30;
          for (int t = 0; t < n; ++t) {
            double dot = 0;
            for (int x = 0; x < d; ++x) dot += kvevict::to_float(q[x]) * kvevict::to_float(s.k[l][s.offset(t, h) + x]);
            if (dot > top) top = dot, arg = t;
          }
          CHECK(arg == s.answer_begin + j);
        }
    }
  }
  CHECK(retrieval_heads == 3);
}

TEST_CASE("NIAH generator: the same seed gives the same cache, another seed another", "[niah]") {
  const auto a = gen().generate({1500, 0.3, 11, 1}), b = gen().generate({1500, 0.3, 11, 1}),
             c = gen().generate({1500, 0.3, 12, 1});
  CHECK(a.token_ids == b.token_ids);
  for (int l = 0; l < a.cfg.num_layers; ++l) {
    CHECK(std::memcmp(a.k[l].data(), b.k[l].data(), a.k[l].size() * 2) == 0);
    CHECK(std::memcmp(a.v[l].data(), b.v[l].data(), a.v[l].size() * 2) == 0);
    CHECK(std::memcmp(a.window_queries[l].data(), b.window_queries[l].data(), a.window_queries[l].size() * 2) == 0);
  }
  CHECK(a.token_ids != c.token_ids);
}

TEST_CASE("NIAH report: a small grid runs and the full cache scores 100% and fidelity 1", "[niah][report]") {
  niah_report::grid g;
  g.contexts = {600, 900};
  g.depths = {0.0, 0.5, 1.0};
  g.budgets = {96, 256};
  g.seeds = {1};
  g.threads = 2;
  std::size_t calls = 0;
  const auto results = niah_report::run(g, [&](std::size_t, std::size_t) { ++calls; });
  CHECK(calls == 6);
  const std::size_t policies = std::tuple_size<decltype(niah_report::policies())>::value;
  REQUIRE(results.size() == 6 * 2 * policies);
  int full = 0;
  for (const auto& r : results) {
    CHECK(r.recall >= 0.0);
    CHECK(r.recall <= 1.0);
    CHECK(r.fidelity <= 1.0 + 1e-12);
    if (r.policy == "full_cache") {
      ++full;
      CHECK(r.success);
      CHECK(r.recall == 1.0);
      CHECK(r.fidelity == Approx(1.0).margin(1e-12));
    }
  }
  CHECK(full == 12);
  // Deterministic: a rerun gives the same quality numbers.
  const auto again = niah_report::run(g, [](std::size_t, std::size_t) {});
  for (std::size_t i = 0; i < results.size(); ++i) {
    CHECK(again[i].policy == results[i].policy);
    CHECK(again[i].success == results[i].success);
    CHECK(again[i].recall == results[i].recall);
    CHECK(again[i].fidelity == results[i].fidelity);
  }
}

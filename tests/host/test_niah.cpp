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
  std::size_t calls = 0;
  const auto results = niah_report::run({g}, 2, [&](const niah_report::progress_info& p) {
    ++calls;
    CHECK(p.done == calls);
    CHECK(p.total == 6);
  });
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
  const auto again = niah_report::run({g}, 2, [](const niah_report::progress_info&) {});
  for (std::size_t i = 0; i < results.size(); ++i) {
    CHECK(again[i].policy == results[i].policy);
    CHECK(again[i].success == results[i].success);
    CHECK(again[i].recall == results[i].recall);
    CHECK(again[i].fidelity == results[i].fidelity);
  }
}

namespace {
std::uint64_t fnv(const niah_sequence& s) {
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  mix(s.token_ids.data(), s.token_ids.size() * 4);
  for (int l = 0; l < s.cfg.num_layers; ++l) {
    mix(s.k[l].data(), s.k[l].size() * 2);
    mix(s.v[l].data(), s.v[l].size() * 2);
    mix(s.window_queries[l].data(), s.window_queries[l].size() * 2);
    mix(s.decode_queries[l].data(), s.decode_queries[l].size() * 2);
  }
  return h;
}

// Tokens strictly between the delimiters around position t.
int clause_length_around(const niah_sequence& s, int t) {
  auto delim = [&](int i) {
    const int id = s.token_ids[i];
    return id == period || id == comma || id == newline || id == question_mark;
  };
  int a = t, b = t;
  while (a > 0 && !delim(a - 1)) --a;
  while (b < s.tokens && !delim(b)) ++b;
  return b - a;
}
}  // namespace

TEST_CASE("NIAH generator: the single task draws the same caches as before the other tasks existed", "[niah]") {
  // Hashes of token ids, K, V and queries, recorded before the tasks were added (2026-11-28): the
  // single-needle numbers of earlier reports stay comparable.
  CHECK(fnv(gen().generate({1500, 0.3, 11, 0})) == 0xf0b8f6bd43ee8e18ull);
  CHECK(fnv(gen().generate({4000, 0.7, 2, 2})) == 0xa5336b602c6e2380ull);
}

TEST_CASE("NIAH generator: every task places its needles and required answers as documented", "[niah]") {
  const auto& cfg = gen().config();
  for (niah_task task : all_tasks)
    for (double depth : {0.0, 0.5, 1.0})
      for (std::uint64_t seed : {1, 2}) {
        const auto s = gen().generate({3000, depth, seed, 0, task});
        INFO(task_name(task) << " depth " << depth << " seed " << seed);
        REQUIRE(s.tokens == 3000);
        // Required answers: distinct answer tokens of asked needles, one decode query each.
        REQUIRE(s.decode_count() >= cfg.answer_len);
        std::vector<int> sorted(s.answers.begin(), s.answers.end());
        std::sort(sorted.begin(), sorted.end());
        CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
        CHECK(s.decode_queries[0].size() == static_cast<std::size_t>(cfg.q_heads) * s.decode_count() * cfg.head_dim);
        int asked = 0, asked_answers = 0;
        for (const auto& p : s.needles) {
          CHECK(s.token_ids[p.phrase_begin] == phrase0 + cfg.phrase_len * p.key);
          CHECK(p.answer_begin > p.phrase_begin);
          for (int t = p.answer_begin; t < p.answer_end; ++t) {
            const int id = s.token_ids[t];
            CHECK(((id >= digit0 && id < digit0 + 10) || (task == niah_task::long_value && id == comma)));
            const bool required = std::binary_search(sorted.begin(), sorted.end(), t);
            CHECK(required == p.asked);
          }
          asked += p.asked;
          if (p.asked) asked_answers += p.answer_end - p.answer_begin;
        }
        CHECK(asked_answers == s.decode_count());
        // The needle at depth is asked, and at the requested depth (sentence start nearest to it).
        CHECK(std::find(sorted.begin(), sorted.end(), s.answer_begin) != sorted.end());
        const bool tail = task == niah_task::long_sentence;  // its sentence goes on after the answer
        if (depth == 0.0) CHECK((tail ? s.phrase_begin <= 1 + 31 + cfg.long_clause_max : s.phrase_begin == 1));
        if (depth == 1.0) {
          CHECK(s.token_ids[s.tokens - cfg.window - 1] == period);  // the needle's sentence ends before the question
          if (!tail) CHECK(s.answer_end + 1 == s.tokens - cfg.window);
        }
        switch (task) {
          case niah_task::single:
          case niah_task::long_sentence:
            CHECK(s.needles.size() == 1);
            CHECK(asked == 1);
            CHECK(s.decode_count() == cfg.answer_len);
            break;
          case niah_task::multi_key:
          case niah_task::multi_query: {
            CHECK(s.needles.size() == static_cast<std::size_t>(cfg.keys));
            CHECK(asked == (task == niah_task::multi_key ? 1 : cfg.queries));
            std::vector<int> keys;
            for (const auto& p : s.needles) keys.push_back(p.key);
            std::sort(keys.begin(), keys.end());
            CHECK(std::adjacent_find(keys.begin(), keys.end()) == keys.end());  // different keys
            break;
          }
          case niah_task::multi_value:
            CHECK(s.needles.size() == static_cast<std::size_t>(cfg.values));
            CHECK(asked == cfg.values);
            for (const auto& p : s.needles) CHECK(p.key == 0);
            CHECK(s.decode_count() == cfg.values * cfg.answer_len);
            break;
          case niah_task::long_value: {
            CHECK(s.needles.size() == 1);
            const int len = s.answer_end - s.answer_begin;
            CHECK(len >= cfg.long_value_min);
            CHECK(len <= cfg.long_value_max);
            int commas = 0;
            for (int t = s.answer_begin; t < s.answer_end; ++t) commas += s.token_ids[t] == comma;
            CHECK(commas >= 2);  // the value spans at least three clauses
            CHECK(s.token_ids[s.answer_begin] != comma);
            CHECK(s.token_ids[s.answer_end - 1] != comma);
            CHECK(s.token_ids[s.answer_end] == period);
            break;
          }
        }
        if (task == niah_task::long_sentence) {
          const int len = clause_length_around(s, s.phrase_begin);
          CHECK(len >= cfg.long_clause_min);
          CHECK(len <= cfg.long_clause_max);
          CHECK(clause_length_around(s, s.answer_end - 1) == len);  // phrase and answer in the one clause
        }
      }
}

TEST_CASE("NIAH generator: window queries find the asked keys, decode queries their answers, in every task",
          "[niah]") {
  for (niah_task task : all_tasks) {
    auto s = gen().generate({2500, 0.4, 5, 0, task});
    INFO(task_name(task));
    const int n = s.tokens, d = s.cfg.head_dim, group = s.cfg.q_heads / s.cfg.kv_heads, m = s.decode_count();
    for (int l = 0; l < s.cfg.num_layers; ++l) {
      const auto sc = window_scores(s, l);
      for (int h = 0; h < s.cfg.kv_heads; ++h) {
        if (s.cfg.kind(l, h) != head_kind::retrieval) continue;
        auto phrase_mean = [&](const needle_place& p) {
          double x = 0;
          for (int t = p.phrase_begin; t < p.phrase_begin + s.cfg.phrase_len; ++t) x += sc[h * n + t];
          return x / s.cfg.phrase_len;
        };
        // Every asked phrase outscores every unasked one.
        for (const auto& a : s.needles)
          for (const auto& b : s.needles)
            if (a.asked && !b.asked) CHECK(phrase_mean(a) > phrase_mean(b));
        for (int g = 0; g < group; ++g)
          for (int j = 0; j < m; ++j) {
            const auto* q = &s.decode_queries[l][((static_cast<size_t>(h) * group + g) * m + j) * d];
            int arg = 0;
            double top = -1e30;
            for (int t = 0; t < n; ++t) {
              double dot = 0;
              for (int x = 0; x < d; ++x)
                dot += kvevict::to_float(q[x]) * kvevict::to_float(s.k[l][s.offset(t, h) + x]);
              if (dot > top) top = dot, arg = t;
            }
            CHECK(arg == s.answers[j]);
          }
      }
    }
    // Deterministic per task; another task draws another cache.
    CHECK(fnv(gen().generate({2500, 0.4, 5, 0, task})) == fnv(s));
    if (task != niah_task::single) CHECK(fnv(gen().generate({2500, 0.4, 5, 0, niah_task::single})) != fnv(s));
  }
}

TEST_CASE("NIAH report: every task's section runs and the full cache keeps every answer", "[niah][report]") {
  std::vector<niah_report::grid> sections;
  for (const auto& g0 : niah_report::default_report(false)) {
    niah_report::grid g = g0;
    g.contexts = {700};
    g.depths = {0.5};
    g.seeds = {1};
    g.budgets = {128};
    sections.push_back(g);
  }
  REQUIRE(sections.size() == 7);  // single, single_long, and the five other tasks
  const auto results = niah_report::run(sections, 2, [](const niah_report::progress_info&) {});
  const std::size_t policies = std::tuple_size<decltype(niah_report::policies())>::value;
  REQUIRE(results.size() == sections.size() * policies);
  for (const auto& r : results) {
    INFO(r.section << " " << r.policy);
    if (r.policy == "full_cache") {
      CHECK(r.success);
      CHECK(r.fidelity == Approx(1.0).margin(1e-12));
    }
    if (r.policy == "streaming_llm") CHECK(!r.success);  // the needle at depth 0.5 is outside sinks and window
  }
}

TEST_CASE("NIAH report: pooled scores taken from the unpooled memo entry equal the pooled scorer's",
          "[niah][report]") {
  // The report computes window attention once per layer and pools it for the pooled presets; this
  // must give the bits kvevict::score gives for the pooled scorer itself, or the report's plans
  // would not be the library's.
  auto s = gen().generate({1800, 0.4, 3, 0});
  for (int kernel : {5, 4, 1}) {
    auto p = niah_report::detail::configured(kvevict::snapkv<>{});
    p.scorer.pool_kernel = kernel;
    niah_report::detail::score_memo memo;
    for (int l = 0; l < s.cfg.num_layers; ++l) {
      auto view = s.layer_view(l);
      auto sig = s.layer_signals(l);
      std::vector<unsigned char> ws(kvevict::plan_workspace_bytes(kvevict::host, p, view, sig));
      const auto& e = niah_report::detail::memo_scores("snapkv", kvevict::host.threads(1), p, view, sig, "", l, ws,
                                                       memo);
      std::vector<float> direct(static_cast<size_t>(s.cfg.kv_heads) * s.tokens);
      REQUIRE(kvevict::score(kvevict::host, p, view, sig, direct.data(), s.tokens, ws.data(), ws.size()).ok());
      REQUIRE(e.scores.size() == direct.size());
      CHECK(std::memcmp(e.scores.data(), direct.data(), direct.size() * sizeof(float)) == 0);
      if (kernel > 1) CHECK(e.scores != window_scores(s, l));  // pooling changed something
    }
    CHECK(memo.by_key.size() == 2 * static_cast<size_t>(s.cfg.num_layers));  // unpooled and pooled per layer
  }
}

TEST_CASE("NIAH generator: the vectorised Box-Muller path gives the libm's floats", "[niah]") {
  // normal() is defined by the libm's log and cos; the fast path must give the same floats.
  rng r(17);
  double worst_log = 0, worst_cos = 0;
  long unusable = 0, uncertain = 0;
  const long draws = 2000000;
  for (long i = 0; i < draws; ++i) {
    double u = 1.0 - r.uniform();
    if (i % 4 == 1) u = 1.0 - std::ldexp(std::floor(r.uniform() * 1e6) + 1, -53);  // next to 1
    if (i % 4 == 2) u = std::ldexp(1.0 - 0.5 * r.uniform(), -static_cast<int>(r.uniform() * 53));  // every binade
    const double L = detail::log_unit(u), Lref = std::log(u);
    worst_log = std::max(worst_log, std::fabs(L - Lref) / std::fabs(Lref));
    const double a = 6.283185307179586 * r.uniform();
    std::uint64_t usable = 0;
    const double c = detail::cos_0_2pi(a, usable);
    if (usable)
      worst_cos = std::max(worst_cos, std::fabs(c - std::cos(a)) / std::fabs(std::cos(a)));
    else
      ++unusable;
    bool ok = false;
    const float f = detail::box_muller_certain(std::sqrt(-2.0 * L), c, usable, ok);
    uncertain += !ok;
    if (ok) REQUIRE(f == static_cast<float>(std::sqrt(-2.0 * Lref) * std::cos(a)));
  }
  // A few units of 2^-53 (the libm's own error included), far inside the 2^-40 the certificate allows.
  CHECK(worst_log < 0x1p-49);
  CHECK(worst_cos < 0x1p-49);
  CHECK(unusable < draws / 100000);
  CHECK(uncertain < draws / 10000);  // the fast path serves nearly every draw
  CHECK(detail::log_unit(1.0) == 0.0);
  CHECK(detail::log_unit(0x1p-53) == std::log(0x1p-53));
  std::uint64_t usable = 1;
  detail::cos_0_2pi(1.5707963267948966, usable);  // the double nearest pi/2: remainder ~6e-17
  CHECK(usable == 0);

  // normals() and normal() are the definition, bit for bit, in the same order of draws.
  for (std::uint64_t seed : {1ull, 2ull, 99ull}) {
    rng a(seed), b(seed), c(seed);
    std::vector<float> got(300007);
    a.normals(got.data(), static_cast<int>(got.size()));
    for (std::size_t i = 0; i < got.size(); ++i) {
      const double u1 = 1.0 - b.uniform(), u2 = b.uniform();
      const float want = static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
      if (std::memcmp(&got[i], &want, sizeof want) != 0) FAIL("draw " << i << " of seed " << seed);
      const float one = c.normal();
      if (std::memcmp(&one, &want, sizeof want) != 0) FAIL("normal() at draw " << i << " of seed " << seed);
    }
  }
}

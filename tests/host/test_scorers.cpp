#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>

#include "common/reference.hpp"
#include "common/test_cache.hpp"

using namespace testing;

namespace {

// Queries [num_seqs, q_heads, w, d] as T, plus the same values as double.
template <class T>
struct query_set {
  std::vector<T> q;
  std::vector<double> qd;
};
template <class T>
query_set<T> make_queries(int num_seqs, int q_heads, int w, int d, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.5f);
  query_set<T> qs;
  for (size_t i = 0; i < static_cast<size_t>(num_seqs) * q_heads * w * d; ++i) {
    qs.q.push_back(kvevict::from_float<T>(nd(rng)));
    qs.qd.push_back(kvevict::to_float(qs.q.back()));
  }
  return qs;
}

// Keys of (seq, head) as stored (rounded to T), read by the naive address formula.
template <class T>
std::vector<double> stored_keys(const test_cache<T>& c, int s, int h, int n) {
  std::vector<double> out;
  for (int t = 0; t < n; ++t)
    for (int x = 0; x < c.head_dim; ++x) out.push_back(kvevict::to_float(c.k[c.addr(s, h, t) + x]));
  return out;
}

// T: the cache's element type; Q: the queries' (T, or bf16 for a quantised cache); keys scaled
// by the view's k_scale and, with `token_scales`, by a random scale per (token, head) stored
// beside the pages.
template <class T, class Q = T>
void check_window_attention_all_layouts(float k_scale = 1.0f, bool token_scales = false) {
  const int kvh = 2, group = 3, d = 16, w = 5;
  for (layout_kind kind : all_layouts) {
    for (int ps : {7, 8, 9}) {
      const bool rows = kind == layout_kind::head_rows;
      const logical L = make_logical(2, kvh, d, {23, 40}, 11, rows);
      auto c = build<T>(L, kind, ps, 5);
      auto qs = make_queries<Q>(2, kvh * group, w, d, 3);
      kvevict::signals<Q> sig;
      sig.queries = qs.q.data();
      sig.num_q_heads = kvh * group;
      kvevict::eviction_policy<kvevict::window_attention<kvevict::gqa_mean, kvevict::no_pool>, kvevict::token_level,
                               kvevict::selector<>>
          p;
      p.selector = {0, w, kvevict::uniform_budget{w}};
      const int stride = L.max_len;
      std::vector<float> scores(static_cast<size_t>(2) * kvh * stride, -1.0f);
      std::vector<float> ts(c.k.size() / d);  // one per K row slot, as the pages lay the rows out
      std::mt19937 srng(17);
      for (float& x : ts) x = std::uniform_real_distribution<float>(0.25f, 4.0f)(srng);
      c.visit([&](auto view) {
        view.k_scale_ = k_scale;
        if (token_scales) view.k_token_scales = ts.data();
        std::vector<unsigned char> ws(kvevict::plan_workspace_bytes(kvevict::host, p, view, sig));
        REQUIRE(kvevict::score(kvevict::host, p, view, sig, scores.data(), stride, ws.data(), ws.size()).ok());
      });
      for (int s = 0; s < 2; ++s)
        for (int h = 0; h < kvh; ++h) {
          const int n = L.lens[s * kvh + h];
          std::vector<double> qg(qs.qd.begin() + ((static_cast<size_t>(s) * kvh * group + h * group) * w) * d,
                                 qs.qd.begin() + ((static_cast<size_t>(s) * kvh * group + (h + 1) * group) * w) * d);
          std::vector<double> keys = stored_keys(c, s, h, n);  // dequantised: the codes times the scale
          for (int t = 0; t < n; ++t)
            for (int x = 0; x < d; ++x)
              keys[static_cast<size_t>(t) * d + x] *= k_scale * (token_scales ? ts[c.addr(s, h, t) / d] : 1.0);
          auto per_q = ref::window_attention(keys, n, d, qg, group, w);
          for (int t = 0; t < n; ++t) {
            double m = 0;
            for (int j = 0; j < group; ++j) m += per_q[j][t];
            m /= group;
            INFO(name(kind) << " page_size " << ps << " seq " << s << " head " << h << " token " << t);
            REQUIRE(scores[(static_cast<size_t>(s) * kvh + h) * stride + t] == Approx(m).margin(1e-6).epsilon(1e-5));
          }
        }
    }
  }
}

}  // namespace

TEST_CASE("window attention equals the double-precision reference (every layout, float)", "[scorer]") {
  check_window_attention_all_layouts<float>();
}
TEST_CASE("window attention equals the double-precision reference (every layout, half)", "[scorer]") {
  check_window_attention_all_layouts<kvevict::half>();
}
TEST_CASE("window attention equals the double-precision reference (every layout, bfloat16)", "[scorer]") {
  check_window_attention_all_layouts<kvevict::bfloat16>();
}
TEST_CASE("window attention over quantised keys (fp8 e4m3, e5m2, int8 with k_scale) equals the reference",
          "[scorer][quantized]") {
  // bf16 queries; keys dequantised on load as code x k_scale. Scales of 0.5 and 0.03 (int8 codes
  // hold small integers, so its scale is larger: the keys then span several units).
  check_window_attention_all_layouts<kvevict::float8_e4m3, kvevict::bfloat16>(0.5f);
  check_window_attention_all_layouts<kvevict::float8_e5m2, kvevict::bfloat16>(0.03f);
  check_window_attention_all_layouts<kvevict::int8, kvevict::bfloat16>(0.7f);
  check_window_attention_all_layouts<kvevict::float8_e4m3, float>(1.0f);
}

TEST_CASE("window attention over keys with per-(token, head) scales equals the reference", "[scorer][quantized]") {
  // Each K row's scale sits beside the page (laid out as the rows, head_dim 1); keys are
  // code x k_scale x the row's scale, dequantised on load.
  check_window_attention_all_layouts<kvevict::float8_e4m3, kvevict::bfloat16>(0.5f, true);
  check_window_attention_all_layouts<kvevict::int8, kvevict::bfloat16>(0.05f, true);
  check_window_attention_all_layouts<float>(1.0f, true);
}

TEST_CASE("key norm over keys with per-(token, head) scales is the scaled norm", "[scorer][quantized]") {
  for (layout_kind kind : all_layouts) {
    const bool rows = kind == layout_kind::head_rows;
    const logical L = make_logical(2, 2, 8, {19, 33}, 5, rows);
    auto c = build<kvevict::float8_e4m3>(L, kind, 8, 3);
    std::vector<float> ts(c.k.size() / 8);
    for (std::size_t i = 0; i < ts.size(); ++i) ts[i] = 0.5f + 0.25f * static_cast<float>(i % 7);
    c.visit([&](auto view) {
      view.k_scale_ = 0.5f;
      view.k_token_scales = ts.data();
      for (int s = 0; s < 2; ++s)
        for (int h = 0; h < 2; ++h)
          for (int t = 0; t < view.seq_len(s, h); ++t) {
            double sq = 0;
            for (int x = 0; x < 8; ++x) sq += std::pow(static_cast<double>(kvevict::to_float(c.k[c.addr(s, h, t) + x])), 2);
            INFO(name(kind) << " seq " << s << " head " << h << " token " << t);
            REQUIRE(kvevict::key_norm::of(view, s, h, t) ==
                    Approx(-std::sqrt(sq) * 0.5 * ts[c.addr(s, h, t) / 8]).epsilon(1e-6));
          }
    });
  }
}

TEST_CASE("SnapKV 32q/8kv/d128/w64/pool5 keeps the PyTorch formula's set", "[scorer][snapkv]") {
  // The torch path of torch_path_baseline.py: window attention (causal in the window), softmax,
  // mean over the window, keys before the window only, avg_pool1d(5, padding 2), GQA mean,
  // window padded with the max (always kept), topk(budget). Here in double precision.
  const int hq = 32, hkv = 8, d = 128, w = 64, n = 600, budget = 160;
  const logical L = make_logical(1, hkv, d, {n}, 21);
  auto c = build<kvevict::bfloat16>(L, layout_kind::block_nhd, 16, 2);
  auto qs = make_queries<kvevict::bfloat16>(1, hq, w, d, 9);
  kvevict::snapkv<> p;
  p.selector = {0, w, kvevict::uniform_budget{budget}};
  p.scorer.pool_kernel = 5;
  kvevict::signals<kvevict::bfloat16> sig;
  sig.queries = qs.q.data();
  sig.num_q_heads = hq;
  auto view = c.block_view();
  kvevict::keep_plan_buffer kept(hkv, kvevict::plan_capacity(p, view));
  REQUIRE(kvevict::plan(kvevict::host, p, view, sig, kept.view()).ok());
  int compared_ties = 0;
  for (int h = 0; h < hkv; ++h) {
    std::vector<double> qg(qs.qd.begin() + static_cast<size_t>(h) * 4 * w * d,
                           qs.qd.begin() + static_cast<size_t>(h + 1) * 4 * w * d);
    auto per_q = ref::window_attention(stored_keys(c, 0, h, n), n, d, qg, 4, w);
    std::vector<double> s(n - w, 0.0);
    for (int j = 0; j < 4; ++j) {
      std::vector<double> x(per_q[j].begin(), per_q[j].begin() + (n - w));
      auto pooled = ref::avg_pool_zero_pad(x, 5);
      for (int t = 0; t < n - w; ++t) s[t] += pooled[t] / 4;
    }
    std::vector<double> full = s;
    const double mx = *std::max_element(s.begin(), s.end());
    for (int t = 0; t < w; ++t) full.push_back(mx + 1.0);
    const auto want = ref::kept_set(full, budget, 0, 0);
    const auto got = kept.kept(h);
    REQUIRE(got.size() == static_cast<size_t>(budget));
    if (got != want) {
      // Allowed only where the reference scores tie within 1e-6 at the cut.
      std::vector<double> sorted(s);
      std::sort(sorted.rbegin(), sorted.rend());
      const double cut = sorted[budget - w - 1];
      std::vector<int> diff;
      std::set_symmetric_difference(got.begin(), got.end(), want.begin(), want.end(), std::back_inserter(diff));
      for (int t : diff) REQUIRE(std::fabs(s[t] - cut) < 1e-6);
      ++compared_ties;
    }
  }
  CHECK(compared_ties <= 2);
}

TEST_CASE("pooling: both padding conventions and max pooling match naive loops", "[scorer]") {
  std::vector<float> x = {3, 1, 4, 1, 5, 9, 2, 6};
  std::vector<float> y(x.size());
  kvevict::host_backend::pool_1d<kvevict::avg_pool<kvevict::pad_zeros>>(x.data(), y.data(), 8, 3);
  CHECK(y[0] == Approx((0 + 3 + 1) / 3.0));
  CHECK(y[3] == Approx((4 + 1 + 5) / 3.0));
  CHECK(y[7] == Approx((2 + 6 + 0) / 3.0));
  kvevict::host_backend::pool_1d<kvevict::avg_pool<kvevict::pad_valid>>(x.data(), y.data(), 8, 3);
  CHECK(y[0] == Approx((3 + 1) / 2.0));
  CHECK(y[7] == Approx((2 + 6) / 2.0));
  kvevict::host_backend::pool_1d<kvevict::max_pool<>>(x.data(), y.data(), 8, 5);
  CHECK(std::vector<float>(y.begin(), y.end()) == std::vector<float>{4, 4, 5, 9, 9, 9, 9, 9});
  kvevict::host_backend::pool_1d<kvevict::avg_pool<kvevict::pad_zeros>>(x.data(), y.data(), 8, 1);
  CHECK(y == x);
}

TEST_CASE("pooling: the keys before the window are pooled as one sequence, the window's copied", "[scorer]") {
  const std::vector<float> x = {3, 1, 4, 1, 5, 9, 2, 6};
  std::vector<float> y(x.size(), -1.0f);
  // window 3: inputs [0, 5) pooled without the window's scores (5's neighbour 9 is not read)
  kvevict::host_backend::pool_before_window<kvevict::max_pool<>>(x.data(), y.data(), 8, 3, 3);
  CHECK(y == std::vector<float>{3, 4, 4, 5, 5, 9, 2, 6});
  // a window as long as the sequence: nothing pooled; longer: the same
  kvevict::host_backend::pool_before_window<kvevict::max_pool<>>(x.data(), y.data(), 8, 8, 3);
  CHECK(y == x);
  std::fill(y.begin(), y.end(), -1.0f);
  kvevict::host_backend::pool_before_window<kvevict::max_pool<>>(x.data(), y.data(), 8, 12, 3);
  CHECK(y == x);
}

TEST_CASE("H2O: engine-provided sums reduced over the GQA group, and prefill sums", "[scorer][h2o]") {
  const int kvh = 2, group = 2, d = 8, n = 37;
  const logical L = make_logical(1, kvh, d, {n}, 5);
  auto c = build<float>(L, layout_kind::csr_hnd, 6, 1);
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(0.0f, 3.0f);
  std::vector<float> sums(static_cast<size_t>(kvh) * group * 40);
  for (auto& x : sums) x = u(rng);
  kvevict::signals<float> sig;
  sig.attention_sums = sums.data();
  sig.sums_stride = 40;
  sig.num_q_heads = kvh * group;
  kvevict::h2o<kvevict::gqa_max> p;
  p.selector = {2, 4, kvevict::uniform_budget{15}};
  auto view = c.csr_view<kvevict::hnd>();
  kvevict::keep_plan_buffer kept(kvh, kvevict::plan_capacity(p, view));
  REQUIRE(kvevict::plan(kvevict::host, p, view, sig, kept.view()).ok());
  for (int h = 0; h < kvh; ++h) {
    std::vector<double> red(n);
    for (int t = 0; t < n; ++t) red[t] = std::max(sums[(h * group + 0) * 40 + t], sums[(h * group + 1) * 40 + t]);
    REQUIRE(kept.kept(h) == ref::kept_set(red, 15, 2, 4));
  }

  // Prefill sums equal the column sums of the full causal attention.
  auto qs = make_queries<float>(1, kvh * group, n, d, 8);
  std::vector<float> pre(static_cast<size_t>(kvh) * group * n);
  std::vector<float> scratch(kvevict::host_backend::window_attention_scratch_floats(d, n, group, n));
  kvevict::host_backend::prefill_attention_sums(view, 0, qs.q.data(), kvh * group, pre.data(), n, scratch.data());
  for (int h = 0; h < kvh; ++h) {
    std::vector<double> qg(qs.qd.begin() + static_cast<size_t>(h) * group * n * d,
                           qs.qd.begin() + static_cast<size_t>(h + 1) * group * n * d);
    auto per_q = ref::window_attention(stored_keys(c, 0, h, n), n, d, qg, group, n);
    for (int j = 0; j < group; ++j)
      for (int t = 0; t < n; ++t)
        REQUIRE(pre[(h * group + j) * n + t] == Approx(per_q[j][t] * n).epsilon(1e-5).margin(1e-6));
  }
}

TEST_CASE("StreamingLLM keeps the sinks and the most recent tokens", "[scorer][streaming]") {
  for (int ps : {3, 4, 5}) {
    const logical L = make_logical(2, 2, 4, {30, 9}, 1);
    auto c = build<kvevict::half>(L, layout_kind::block_nhd, ps, 2);
    kvevict::streaming_llm p;
    p.selector = {4, 3, kvevict::uniform_budget{12}};
    auto view = c.block_view();
    kvevict::keep_plan_buffer kept(4, kvevict::plan_capacity(p, view));
    REQUIRE(kvevict::plan(kvevict::host, p, view, kvevict::signals<kvevict::half>{}, kept.view()).ok());
    std::vector<int> want = {0, 1, 2, 3};
    for (int t = 22; t < 30; ++t) want.push_back(t);
    CHECK(kept.kept(0) == want);
    CHECK(kept.kept(1) == want);
    CHECK(kept.kept(2) == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8});  // 9 <= budget: all
  }
}

TEST_CASE("key norm: low-norm keys are kept", "[scorer]") {
  const logical L = make_logical(1, 2, 8, {40}, 6);
  auto c = build<kvevict::half>(L, layout_kind::block_hnd, 8, 3);
  kvevict::eviction_policy<kvevict::key_norm, kvevict::token_level, kvevict::selector<>> p;
  p.selector = {1, 2, kvevict::uniform_budget{10}};
  auto view = c.block_hnd_view();
  kvevict::keep_plan_buffer kept(2, 10);
  REQUIRE(kvevict::plan(kvevict::host, p, view, kvevict::signals<kvevict::half>{}, kept.view()).ok());
  for (int h = 0; h < 2; ++h) {
    std::vector<double> s(40);
    for (int t = 0; t < 40; ++t) {
      double sq = 0;
      for (int x = 0; x < 8; ++x) sq += std::pow(kvevict::to_float(c.k[c.addr(0, h, t) + x]), 2);
      s[t] = -std::sqrt(sq);
    }
    CHECK(kept.kept(h) == ref::kept_set(s, 10, 1, 2));
  }
}

TEST_CASE("regression (fuzz_evict): the softmax exponential is defined for NaN and keeps it", "[scorer][regression]") {
  // fuzz/regressions/evict/ev2_crash-5bf1...: a NaN query reached exp_nonpositive, whose float to
  // int conversion of NaN was undefined behaviour (UBSan float-cast-overflow). Now NaN stays NaN
  // (the plan then rejects the non-finite score) and every other input stays accurate.
  CHECK(std::isnan(kvevict::detail::exp_nonpositive(std::numeric_limits<float>::quiet_NaN())));
  CHECK(kvevict::detail::exp_nonpositive(-std::numeric_limits<float>::infinity()) ==
        Approx(std::exp(-87.0)).epsilon(1e-6));
  CHECK(kvevict::detail::exp_nonpositive(0.0f) == 1.0f);
  double worst = 0;
  for (float x = -87.0f; x <= 0.0f; x += 0.00731f)
    worst = std::max(worst, std::fabs(kvevict::detail::exp_nonpositive(x) - std::exp(double(x))) / std::exp(double(x)));
  CHECK(worst < 2e-7);
}

namespace {
// Window-attention scores over inputs built by integer arithmetic (no library distribution, so
// every compiler and libm gives the same inputs), hashed (FNV-1a over the score bits).
template <class T>
struct pin_reader {
  const T* k;
  int d;
  const float* ts;
  const T* operator()(int t) const { return k + static_cast<std::size_t>(t) * d; }
};
template <class T>
struct pin_scaled_reader : pin_reader<T> {
  float scale(int t) const { return this->ts[t]; }
};
inline std::uint64_t pin_fnv(std::uint64_t h, const void* p, std::size_t n) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}
//! Scores of every shape below with instruction set `isa`, hashed.
template <class Isa>
std::uint64_t pinned_scores_hash(Isa isa, bool wide = false) {
  std::uint32_t s = 12345u;
  auto next = [&s] {  // small values with few mantissa bits: exact in every key type
    s = s * 1664525u + 1013904223u;
    return static_cast<float>(static_cast<int>(s >> 20) % 193 - 96) / 32.0f;
  };
  std::uint64_t h = 1469598103934665603ull;
  auto one = [&](auto tag, bool token_scales, int n, int d, int group, int w, float kscale) {
    using T = decltype(tag);
    std::vector<T> k(static_cast<std::size_t>(n) * d), q(static_cast<std::size_t>(group) * w * d);
    std::vector<float> ts(static_cast<std::size_t>(n));
    for (auto& x : k) x = kvevict::from_float<T>(next());
    for (auto& x : q) x = kvevict::from_float<T>(next());
    for (auto& x : ts) x = 0.75f + (next() + 3.0f) / 16.0f;
    std::vector<float> scratch(kvevict::host_backend::window_attention_scratch_floats(d, w, group, n));
    std::vector<float> out(static_cast<std::size_t>(n) * group);
    auto emit = [&](int t, const float* col) {
      for (int j = 0; j < group; ++j) out[static_cast<std::size_t>(t) * group + j] = col[j];
    };
    if (token_scales)
      kvevict::host_backend::window_attention_group_isa(isa, pin_scaled_reader<T>{{k.data(), d, ts.data()}}, n, d,
                                                        q.data(), static_cast<std::size_t>(w) * d, group, w,
                                                        scratch.data(), emit, kscale);
    else
      kvevict::host_backend::window_attention_group_isa(isa, pin_reader<T>{k.data(), d, ts.data()}, n, d, q.data(),
                                                        static_cast<std::size_t>(w) * d, group, w, scratch.data(),
                                                        emit, kscale);
    h = pin_fnv(h, out.data(), out.size() * sizeof(float));
  };
  if (wide) {
    // Head dims above the conversion's run of 128 (two runs, a run and a tail, runs of 32).
    for (int n : {40, 300})
      for (int d : {160, 200, 256})
        for (int group : {1, 4})
          for (int w : {7, 40}) {
            one(kvevict::bfloat16{}, false, n, d, group, w, 1.0f);
            one(float{}, (n + d) % 2 == 1, n, d, group, w, (n % 3) ? 1.0f : 0.375f);
            one(kvevict::half{}, true, n, d, group, w, 1.0f);
          }
    return h;
  }
  // Partial and whole key tiles, runs of tiles with a partial last one, head dims below, at and
  // above the conversion's chunk, groups 1 to 4, the causal window from 1 to 64 queries.
  for (int n : {1, 16, 40, 97, 300, 1100})
    for (int d : {3, 32, 72, 128})
      for (int group : {1, 3, 4})
        for (int w : {1, 7, 64}) {
          if (w > n) continue;
          one(kvevict::bfloat16{}, false, n, d, group, w, 1.0f);
          one(float{}, (n + d) % 2 == 1, n, d, group, w, (n % 3) ? 1.0f : 0.375f);
        }
  one(kvevict::half{}, true, 5000, 128, 4, 64, 1.0f);
  // Long enough for several row blocks (two of 128 rows, then four of 64).
  one(kvevict::bfloat16{}, false, 12000, 8, 4, 64, 1.0f);
  one(float{}, false, 33000, 4, 4, 64, 1.0f);
  return h;
}
}  // namespace

// The scorer's bits are part of its contract (plans, the golden fixtures and the NIAH report
// depend on them): this hash was recorded with the scorer of 637382f (before the tile-wise
// steps and the row blocks' sizes of 2026-11-30), on the baseline, AVX2 and AVX-512 variants,
// with GCC 12 and clang 14.
TEST_CASE("window attention: the scores' bits are those recorded before the tile-wise rewrite", "[scorer][simd]") {
  using kvevict::host_backend::scorer_isa;
  for (scorer_isa isa : {scorer_isa::baseline, scorer_isa::automatic, scorer_isa::avx2, scorer_isa::avx512}) {
    INFO("isa " << static_cast<int>(isa) << " resolved to "
                << static_cast<int>(kvevict::host_backend::resolve_scorer_isa(isa)));
    CHECK(pinned_scores_hash(isa) == 0x5f032caa5ca31518ull);
    // Recorded with the scorer of 06d6f74 (its key tiles converted 32 dimensions at a time),
    // before the key rows were read whole and transposed in registers.
    CHECK(pinned_scores_hash(isa, true) == 0xfefb3c1bf200842eull);
  }
}

// The cap from KVEVICT_SCORER_ISA: ctest also runs the [simd] tests with it set to "baseline" and
// to an unknown value (tests/CMakeLists.txt), where the checks on the environment below bite.
TEST_CASE("window attention: KVEVICT_SCORER_ISA caps the automatic choice; its names are parsed strictly",
          "[scorer][simd]") {
  using kvevict::host_backend::parse_scorer_isa;
  using kvevict::host_backend::resolve_scorer_isa;
  using kvevict::host_backend::scorer_isa;
  bool ok = false;
  CHECK(parse_scorer_isa(nullptr, ok) == scorer_isa::automatic);
  CHECK(ok);
  CHECK(parse_scorer_isa("", ok) == scorer_isa::automatic);
  CHECK(ok);
  CHECK(parse_scorer_isa("auto", ok) == scorer_isa::automatic);
  CHECK(parse_scorer_isa("baseline", ok) == scorer_isa::baseline);
  CHECK(parse_scorer_isa("avx2", ok) == scorer_isa::avx2);
  CHECK(parse_scorer_isa("avx512", ok) == scorer_isa::avx512);
  CHECK(ok);
  for (const char* bad : {"AVX2", "avx", "avx512 ", "sse"}) {
    INFO(bad);
    CHECK(parse_scorer_isa(bad, ok) == scorer_isa::automatic);
    CHECK_FALSE(ok);
  }
  const scorer_isa best = resolve_scorer_isa(scorer_isa::automatic, scorer_isa::automatic);
  CHECK(resolve_scorer_isa(scorer_isa::automatic, scorer_isa::baseline) == scorer_isa::baseline);
  CHECK(resolve_scorer_isa(scorer_isa::automatic, scorer_isa::avx512) == best);
  // Capped at AVX2: AVX2 where the CPU has it (what an explicit request gives), else the baseline.
  const scorer_isa avx2 = resolve_scorer_isa(scorer_isa::avx2, scorer_isa::baseline);
  CHECK(resolve_scorer_isa(scorer_isa::automatic, scorer_isa::avx2) ==
        (best == scorer_isa::baseline ? scorer_isa::baseline : avx2));
  // The cap is on `automatic` only: explicit requests stay what they were.
  for (scorer_isa isa : {scorer_isa::baseline, scorer_isa::avx2, scorer_isa::avx512})
    CHECK(resolve_scorer_isa(isa, scorer_isa::baseline) == resolve_scorer_isa(isa, scorer_isa::automatic));
  // The environment's cap is applied (an unknown value, like an unset one, leaves `best`).
  const char* env = std::getenv("KVEVICT_SCORER_ISA");
  const scorer_isa cap = parse_scorer_isa(env, ok);
  INFO("KVEVICT_SCORER_ISA=" << (env ? env : "(unset)"));
  CHECK(resolve_scorer_isa(scorer_isa::automatic) ==
        resolve_scorer_isa(scorer_isa::automatic, ok ? cap : scorer_isa::automatic));
}

TEST_CASE("window attention: row blocks are multiples of 64 rows whose logits fit in 8 MiB", "[scorer]") {
  using kvevict::host_backend::window_attention_block_rows;
  CHECK(window_attention_block_rows(20, 1000000) == 20);  // fewer rows than the unit: all of them
  CHECK(window_attention_block_rows(64, 1000000) == 64);
  CHECK(window_attention_block_rows(256, 1) == 256);
  CHECK(window_attention_block_rows(256, 8192) == 256);  // 256 x 8,192 floats = 8 MiB
  CHECK(window_attention_block_rows(256, 8193) == 192);
  CHECK(window_attention_block_rows(256, 12000) == 128);
  CHECK(window_attention_block_rows(256, 32768) == 64);
  CHECK(window_attention_block_rows(256, 1000000) == 64);  // at least one unit, whatever n
  CHECK(window_attention_block_rows(100, 8192) == 100);     // a last, partial unit
  CHECK(window_attention_block_rows(100, 20000) == 64);
  // The scratch holds one block's logits (rows of n padded to 16 keys) beside the rest.
  const std::size_t fixed = kvevict::host_backend::window_attention_scratch_floats(128, 64, 4, 0);
  CHECK(kvevict::host_backend::window_attention_scratch_floats(128, 64, 4, 8192) == fixed + (256 + 4) * 8192u);
  CHECK(kvevict::host_backend::window_attention_scratch_floats(128, 64, 4, 32768) == fixed + (64 + 4) * 32768u);
}

TEST_CASE("window attention: every instruction set (baseline, AVX2, AVX-512 where the CPU has them) gives the same bits",
          "[scorer][simd]") {
  using kvevict::host_backend::scorer_isa;
  // Shapes that exercise full and partial row blocks (8-row micro-kernel of AVX-512 included),
  // partial key tiles and the causal window.
  for (int n : {1, 17, 100, 1000}) {
    for (int group : {1, 3, 4}) {
      for (int window : {7, 13}) {
        const int d = 40, w = std::min(n, window);
        std::mt19937 rng(n * 10 + group + window);
        std::normal_distribution<float> nd;
        std::vector<kvevict::bfloat16> k(static_cast<std::size_t>(n) * d), q(static_cast<std::size_t>(group) * w * d);
        for (auto& x : k) x = kvevict::from_float<kvevict::bfloat16>(nd(rng));
        for (auto& x : q) x = kvevict::from_float<kvevict::bfloat16>(2.0f * nd(rng));
        auto key = [&](int t) { return k.data() + static_cast<std::size_t>(t) * d; };
        std::vector<float> scratch(kvevict::host_backend::window_attention_scratch_floats(d, w, group, n));
        auto run = [&](scorer_isa isa) {
          std::vector<float> out(static_cast<std::size_t>(n) * group);
          kvevict::host_backend::window_attention_group_isa(
              isa, key, n, d, q.data(), static_cast<std::size_t>(w) * d, group, w, scratch.data(),
              [&out, group](int t, const float* col) {
                for (int j = 0; j < group; ++j) out[static_cast<std::size_t>(t) * group + j] = col[j];
              });
          return out;
        };
        const std::vector<float> base = run(scorer_isa::baseline);
        for (scorer_isa isa : {scorer_isa::automatic, scorer_isa::avx2, scorer_isa::avx512}) {
          const std::vector<float> other = run(isa);
          INFO("n " << n << " group " << group << " window " << w << " isa " << static_cast<int>(isa));
          REQUIRE(std::memcmp(base.data(), other.data(), base.size() * sizeof(float)) == 0);
        }
      }
    }
  }
  WARN("scorer instruction set on this CPU: "
       << static_cast<int>(kvevict::host_backend::resolve_scorer_isa(scorer_isa::automatic))
       << " (1 baseline, 2 AVX2, 3 AVX-512); avx2 resolves to "
       << static_cast<int>(kvevict::host_backend::resolve_scorer_isa(scorer_isa::avx2)) << ", avx512 to "
       << static_cast<int>(kvevict::host_backend::resolve_scorer_isa(scorer_isa::avx512)));
}

//! \file support/niah.hpp
//! NIAH-style synthetic per-layer KV caches: structured text, an attention sink, needles at chosen
//! depths, retrieval / local / diffuse heads, observation-window and decode queries; six tasks in
//! the spirit of RULER (`niah_task`).
//!
//! The mechanism (design: docs/niah.md). Text is sentences of 1-4 clauses; a clause has `3 + Geom`
//! words (mean 8, at most 30) and ends with a comma, the last clause of a sentence with a period
//! (a newline follows 10% of sentences). Word ids follow a Zipf law (s = 1.1 over 4,000 words).
//! A key is `0.8 word + 0.4 sentence topic + 0.4 noise` (per layer and KV head: repeated words
//! have similar keys). Token 0 is a sink whose key `1.5 S` every window query attends to. A needle
//! is "<key phrase of 6 tokens> <answer> ." at a sentence boundary: phrase keys carry `1.25 U_k`
//! (U_k: the retrieval direction of the needle's key k), answer keys only `0.35 U_k` plus an
//! answer-slot direction `1.5 D_j`. The last `window` tokens are the question.
//!
//! Heads (per layer, per KV head; GQA groups share the kind):
//! * retrieval: window queries `0.6 U_k + 0.6 S + 0.5 noise` (k: the asked key; strong on the
//!   phrase, weak on the answer); decode query j (generating required answer token j)
//!   `1.2 D_j + 0.3 U_k + 0.3 noise`;
//! * local: window and decode queries = mean of the 4 previous keys + 0.3 noise;
//! * diffuse: `0.3 noise`.
//! Layer 0 heads are (local, diffuse, retrieval, local), layer 1 (retrieval, retrieval, local,
//! diffuse). Optional distractors: needles of the asked key at 0.8 strength with other digits.
//! Every vector has i.i.d. N(0, 1) entries, so a logit `q . k / sqrt(d)` between matching unit
//! components is about `8 x` the product of their weights at head_dim 64 (phrase ~6, sink ~7, answer to its decode
//! query ~14, answer to the window queries ~1.7, other tokens ~N(0, 1)). Values are N(0, 1).
//!
//! Tasks (`niah_case::task`); success needs every required answer token kept in every retrieval head:
//! * `single`: one needle at `depth`, 5 digits (the classic NIAH; unchanged since the first report).
//! * `multi_key`: 4 needles with different keys (own phrase ids; `U_k = 0.6 U + 0.8 K_k`, so the
//!   other keys' phrases draw part of the question's attention); the question asks the one at
//!   `depth`. Only its answer is required.
//! * `multi_value`: one key, 3 needles with different 5-digit values (the first at `depth`, the
//!   others at random sentence boundaries); all 15 digits required.
//! * `multi_query`: 4 keys as in multi_key; the question asks 2 (window query rows alternate between
//!   them): the needle at `depth` and one at a random boundary. Both answers required.
//! * `long_sentence`: the needle is a clause of 30-80 tokens between delimiters inside a 3-clause
//!   sentence: topic words around "<phrase> <5 digits>" at a random offset in the clause.
//! * `long_value`: the answer is 20-40 tokens, digits with a comma after every 4-8 of them, so
//!   the value spans several clauses of one sentence; the commas are answer tokens too.
//! Needle shapes of the non-single tasks come from a second random stream (their lengths must be
//! known before the haystack is drawn); the single task draws exactly what it always did.
//!
//! These parameters are fixed here, once, and are the same for every policy. Deterministic: the
//! same config and case give the same cache on every platform (own RNG and normal sampler).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <vector>

#include <kvevict/cache/block_table_cache.hpp>
#include <kvevict/numeric.hpp>
#include <kvevict/signals.hpp>

namespace kvevict::synthetic {

//! Token ids of the synthetic vocabulary.
enum token_id : std::int32_t {
  bos = 0,
  period = 1,
  comma = 2,
  newline = 3,
  question_mark = 4,
  digit0 = 10,       // digits 10..19
  phrase0 = 20,      // key phrases: key k uses 20 + 6 k .. 25 + 6 k (k < 4)
  first_word = 100,  // ordinary words 100 .. 100 + vocab
};

//! Delimiter ids a segmenter should use for this vocabulary.
inline const std::int32_t delimiter_ids[] = {period, comma, newline, question_mark};
//! The delimiter ids that end a sentence (the others end a clause).
inline const std::int32_t sentence_end_ids[] = {period, newline, question_mark};

enum class head_kind { retrieval, local, diffuse };

//! The tasks of the report (see the file comment).
enum class niah_task : std::uint8_t { single, multi_key, multi_value, multi_query, long_sentence, long_value };
inline constexpr niah_task all_tasks[] = {niah_task::single,      niah_task::multi_key,     niah_task::multi_value,
                                          niah_task::multi_query, niah_task::long_sentence, niah_task::long_value};
inline const char* task_name(niah_task t) {
  switch (t) {
    case niah_task::single: return "single";
    case niah_task::multi_key: return "multi_key";
    case niah_task::multi_value: return "multi_value";
    case niah_task::multi_query: return "multi_query";
    case niah_task::long_sentence: return "long_sentence";
    case niah_task::long_value: return "long_value";
  }
  return "?";
}

//! The generator's fixed shape. Not tuned per policy.
struct niah_config {
  int kv_heads = 4;
  int q_heads = 16;  // GQA groups of 4
  int head_dim = 64;
  int num_layers = 2;
  int window = 32;  // question length = observation window
  int page_size = 16;
  int vocab = 4000;
  double zipf_s = 1.1;
  int phrase_len = 6;
  int answer_len = 5;
  int keys = 4;                    // multi_key / multi_query: needles with different keys
  int values = 3;                  // multi_value: values of the one key
  int queries = 2;                 // multi_query: keys the question asks
  int long_clause_min = 30, long_clause_max = 80;  // long_sentence: tokens between the needle clause's delimiters
  int long_value_min = 20, long_value_max = 40;    // long_value: answer tokens
  std::uint64_t world_seed = 20251027;  // word embeddings and directions (same for every case)
  //! Even layers: (local, diffuse, retrieval, local); odd layers: (retrieval, retrieval, local,
  //! diffuse), repeating every 4 KV heads.
  head_kind kind(int layer, int head) const {
    const int i = head % 4;
    if (layer % 2 == 0) return i == 2 ? head_kind::retrieval : i == 1 ? head_kind::diffuse : head_kind::local;
    return i < 2 ? head_kind::retrieval : i == 2 ? head_kind::local : head_kind::diffuse;
  }
};

//! One grid point.
struct niah_case {
  int context = 2000;  //!< tokens, question included
  double depth = 0.5;  //!< position in [0, 1] of the haystack of the (first) asked needle
  std::uint64_t seed = 1;
  int distractors = 0;
  niah_task task = niah_task::single;
};

namespace detail {
using kvevict::detail::bits_double;
using kvevict::detail::double_bits;

//! log(u) for u in [2^-53, 1]: u = m 2^k with m in [sqrt(1/2), sqrt(2)) (found by integer
//! arithmetic on the bits, as musl's log does), log m = 2 atanh(s), s = (m - 1) / (m + 1)
//! (|s| <= 0.172; m - 1 is exact), the series through s^19 (truncation below 2^-58), k ln 2 in two
//! parts. Relative error a few units of 2^-53, also near u = 1 (measured against std::log in
//! tests/host/test_niah.cpp). Integer and floating-point arithmetic only, no comparison: a loop
//! of these vectorises.
inline double log_unit(double u) {
  constexpr std::uint64_t sqrt_half = 0x3fe6a09e667f3bcdull, shift = 0x3ff0000000000000ull - sqrt_half;
  const std::uint64_t b = double_bits(u) + shift;  // the exponent field of b is k + 1023
  const double m = bits_double((b & 0x000fffffffffffffull) + sqrt_half);
  const double k = (bits_double(0x4330000000000000ull | (b >> 52)) - 4503599627370496.0) - 1023.0;  // exact
  const double f = m - 1.0, s = f / (2.0 + f), z = s * s, z2 = z * z, z4 = z2 * z2, z8 = z4 * z4;
  const double p = ((1.0 + z * (1.0 / 3)) + z2 * (1.0 / 5 + z * (1.0 / 7))) +
                   z4 * ((1.0 / 9 + z * (1.0 / 11)) + z2 * (1.0 / 13 + z * (1.0 / 15))) +
                   z8 * ((1.0 / 17 + z * (1.0 / 19)));
  constexpr double ln2_hi = 0x1.62e42fefa3800p-1, ln2_lo = 0x1.ef35793c76730p-45;  // hi: 42 bits
  return k * ln2_hi + (k * ln2_lo + 2.0 * s * p);
}

//! cos(angle) for `angle` in [0, 2 pi], relative error a few units of 2^-53 (measured against
//! std::cos in tests/host/test_niah.cpp); `usable` is 0 where the remainder of a sine quadrant is
//! below 2^-30 (there a tiny remainder's relative error is not bounded here), else 1.
//! Cody-Waite reduction by pi/2 in three parts, the first two of 33 bits (k x part is exact for
//! k <= 4, and the first difference is exact by Sterbenz), then the Taylor polynomials of sin and
//! cos on [-pi/4, pi/4] through r^17 and r^16 (truncation below 2^-55) in Estrin's scheme, and the
//! quadrant's choice and sign by bit masks: no branch, so that a loop of these vectorises.
inline double cos_0_2pi(double angle, std::uint64_t& usable) {
  constexpr double two_over_pi = 0.63661977236758134308, magic = 6755399441055744.0;  // 1.5 x 2^52
  constexpr double p1 = 0x1.921fb544p+0, p2 = 0x1.0b4611a6p-34, p3 = 0x1.3198a2e037073p-69;
  const double t = angle * two_over_pi + magic, kf = t - magic;  // k, the nearest integer (0..4),
  const std::uint64_t q = double_bits(t) & 3;                          // is t's lowest mantissa bits
  const double r = ((angle - kf * p1) - kf * p2) - kf * p3;
  const double z = r * r, z2 = z * z, z4 = z2 * z2, z8 = z4 * z4;
  const double sp = ((1.0 + z * (-1.0 / 6)) + z2 * (1.0 / 120 + z * (-1.0 / 5040))) +
                    z4 * ((1.0 / 362880 + z * (-1.0 / 39916800)) + z2 * (1.0 / 6227020800.0 + z * (-1.0 / 1307674368000.0))) +
                    z8 * (1.0 / 355687428096000.0);
  const double cp = ((1.0 + z * -0.5) + z2 * (1.0 / 24 + z * (-1.0 / 720))) +
                    z4 * ((1.0 / 40320 + z * (-1.0 / 3628800)) + z2 * (1.0 / 479001600.0 + z * (-1.0 / 87178291200.0))) +
                    z8 * (1.0 / 20922789888000.0);
  const std::uint64_t odd = 0 - (q & 1), negative = ((q + 1) >> 1) << 63;  // quadrants 1, 3; 1, 2
  // Tiny: |r| < 2^-30, i.e. its exponent field below 1023 - 30.
  const std::uint64_t tiny = ((double_bits(r) & 0x7fffffffffffffffull) - (static_cast<std::uint64_t>(1023 - 30) << 52)) >> 63;
  usable = 1 ^ (tiny & odd);
  return bits_double(((double_bits(r * sp) & odd) | (double_bits(cp) & ~odd)) ^ negative);
}

//! The Box-Muller float `static_cast<float>(radius * c)` where `radius` is the libm's
//! `std::sqrt(-2.0 * std::log(u1))` and `c` its `std::cos(angle)`, computed from `radius_fast =
//! std::sqrt(-2.0 * log_unit(u1))` and `c_fast = cos_0_2pi(angle)` where that float is certain:
//! the two double products differ by far less than 2^-40 of them (both sides are within a few
//! units of 2^-53 of the true functions), so when both ends of that interval round to the same
//! float, the libm's product rounds to it too. `ok` false where that fails (about 3e-5 of the
//! draws) and for a zero product, whose sign needs the libm's; the caller then computes the
//! libm's. glibc's cos saves and restores the rounding mode on every call, and neither libm
//! function vectorises; this path does both.
inline float box_muller_certain(double radius_fast, double c_fast, std::uint64_t usable, bool& ok) {
  const double y = radius_fast * c_fast, e = std::fabs(y) * 0x1p-40;
  const float lo = static_cast<float>(y - e), hi = static_cast<float>(y + e);
  ok = (usable != 0) & (y != 0.0) & (lo == hi);
  return lo;
}
}  // namespace detail

//! Deterministic random numbers (splitmix64, Box-Muller): the same sequence on every platform
//! whose libm's log and cos give the same doubles (the standard distributions differ between
//! standard libraries).
struct rng {
  std::uint64_t s;
  explicit rng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  float normal() {  // Box-Muller, one value per call
    float f;
    normals(&f, 1);
    return f;
  }
  //! `n` values of normal() into `out`, in order: each draws u1 = 1 - uniform(), then u2 =
  //! uniform(), and is `static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(2 pi u2))`
  //! with the platform's libm (the definition). Computed in blocks of independent draws by
  //! `detail::log_unit`, `detail::cos_0_2pi` (vectorised) and `detail::box_muller_certain`, and by
  //! the libm for the few draws where that is not certain to give the same float.
  void normals(float* out, int n) {
    constexpr int B = 32;
    double u1[B], angle[B], radius[B], c[B];
    std::uint64_t usable[B];
    bool ok[B];
    for (int i0 = 0; i0 < n; i0 += B) {
      const int m = std::min(B, n - i0);
      for (int i = 0; i < m; ++i) {
        u1[i] = 1.0 - uniform();
        angle[i] = 6.283185307179586 * uniform();
      }
      // Separate passes: the first and last vectorise; sqrt (errno) and the libm calls do not.
      for (int i = 0; i < m; ++i) {
        radius[i] = -2.0 * detail::log_unit(u1[i]);
        c[i] = detail::cos_0_2pi(angle[i], usable[i]);
      }
      for (int i = 0; i < m; ++i) radius[i] = std::sqrt(radius[i]);
      for (int i = 0; i < m; ++i) out[i0 + i] = detail::box_muller_certain(radius[i], c[i], usable[i], ok[i]);
      for (int i = 0; i < m; ++i)
        if (!ok[i]) out[i0 + i] = static_cast<float>(std::sqrt(-2.0 * std::log(u1[i])) * std::cos(angle[i]));
    }
  }

  int below(int n) { return static_cast<int>(uniform() * n); }
};

//! Where one needle of the task ended up (distractors are not listed).
struct needle_place {
  int phrase_begin = 0, answer_begin = 0, answer_end = 0;  //!< [answer_begin, answer_end) holds its answer
  int key = 0;                                             //!< which key phrase
  bool asked = false;                                      //!< the question asks it: its answer is required
};

//! A generated sequence: one paged cache per layer (vLLM-style, bf16), token ids, queries and
//! where the needles are. Owns its storage; `layer_view(l)` gives the cache view of layer `l`.
struct niah_sequence {
  niah_config cfg;
  niah_case c;
  int tokens = 0, pages = 0;
  std::vector<std::int32_t> token_ids;                     // [tokens]
  std::vector<std::int32_t> block_table, lens;             // [pages], [1]
  std::vector<std::vector<bfloat16>> k, v;                 // per layer [pages, page_size, kv_heads, head_dim]
  std::vector<std::vector<bfloat16>> window_queries;       // per layer [q_heads, window, head_dim]
  std::vector<std::vector<bfloat16>> decode_queries;       // per layer [q_heads, answers.size(), head_dim]
  std::vector<needle_place> needles;                       // in text order
  std::vector<std::int32_t> answers;                       // required answer positions; decode query j generates answers[j]
  int phrase_begin = 0, answer_begin = 0, answer_end = 0;  // the needle at `depth`

  block_table_cache<bfloat16> layer_view(int layer) {
    return {k[layer].data(), v[layer].data(), block_table.data(), lens.data(),  1,
            pages,           pages,           cfg.page_size,      cfg.kv_heads, cfg.head_dim};
  }
  signals<bfloat16> layer_signals(int layer) const {
    signals<bfloat16> s;
    s.queries = window_queries[layer].data();
    s.num_q_heads = cfg.q_heads;
    s.token_ids = token_ids.data();
    s.token_ids_stride = tokens;
    s.layer = layer;
    s.num_layers = cfg.num_layers;
    return s;
  }
  int decode_count() const { return static_cast<int>(answers.size()); }
  //! Element offset of (token, head) in a layer's K or V.
  std::size_t offset(int t, int h) const {
    return ((static_cast<std::size_t>(block_table[t / cfg.page_size]) * cfg.page_size + t % cfg.page_size) *
                cfg.kv_heads +
            h) *
           cfg.head_dim;
  }
};

//! Builds NIAH sequences. The "world" (word embeddings, directions) depends on the config only.
class niah_generator {
 public:
  explicit niah_generator(niah_config cfg = {}) : cfg_(cfg) {
    rng r(cfg.world_seed);
    const int d = cfg.head_dim, slots = cfg.num_layers * cfg.kv_heads;
    auto fill = [&](std::vector<float>& x, std::size_t n) {
      x.resize(n);
      for (std::size_t i = 0; i < n; i += 1 << 20)
        r.normals(x.data() + i, static_cast<int>(std::min<std::size_t>(n - i, 1 << 20)));
    };
    fill(words_, static_cast<std::size_t>(slots) * (cfg.vocab + 128) * d);  // ids < 128 too (digits, phrase)
    fill(topics_, static_cast<std::size_t>(slots) * 32 * d);
    fill(sink_, static_cast<std::size_t>(slots) * d);
    fill(retr_, static_cast<std::size_t>(slots) * d);
    fill(slot_dir_, static_cast<std::size_t>(slots) * cfg.answer_len * d);
    // Drawn after the tables above, so that those (and the single task) stay as they were.
    fill(extra_slot_dir_, static_cast<std::size_t>(slots) * extra_slots * d);
    fill(key_dir_, static_cast<std::size_t>(slots) * max_keys * d);
    // Zipf CDF over the vocabulary.
    cdf_.resize(cfg.vocab);
    double z = 0;
    for (int i = 0; i < cfg.vocab; ++i) cdf_[i] = (z += 1.0 / std::pow(i + 1.0, cfg.zipf_s));
    for (auto& x : cdf_) x /= z;
  }

  const niah_config& config() const { return cfg_; }

  niah_sequence generate(const niah_case& c) const {
    niah_sequence s;
    s.cfg = cfg_;
    s.c = c;
    // The task joins the seed only off the single task, so that its haystacks stay as they were.
    rng r(c.seed * 1000003ull + static_cast<std::uint64_t>(c.context) * 7919ull +
          static_cast<std::uint64_t>(std::llround(c.depth * 1e6)) + static_cast<std::uint64_t>(c.task) * 0x2545F491ull);
    std::vector<token> text = build_text(s, r);
    build_caches(s, text, r);
    return s;
  }

 private:
  static constexpr int max_keys = 4;
  static constexpr int max_answers = 64;             // required answer tokens per sequence
  static constexpr int extra_slots = max_answers + 32;  // + answers of needles nobody asks
  enum class role : std::uint8_t { sink, word, phrase, answer, other_needle, question };
  struct token {
    std::int32_t id;
    role what;
    std::int16_t topic;  // sentence topic (0..31) for words
    std::int16_t slot;   // answer-slot direction for answers
    float strength;      // 1 for the needle, 0.8 for distractors
    std::int8_t key = 0;      // key direction of phrases and answers
    std::int8_t needle = -1;  // index of the task's needle (-1: haystack, question, distractor)
  };
  using needle_tokens = std::vector<token>;

  int word(rng& r) const {
    return first_word + static_cast<int>(std::lower_bound(cdf_.begin(), cdf_.end(), r.uniform()) - cdf_.begin());
  }
  int clause_len(rng& r) const {
    int len = 3;
    while (len < 30 && r.uniform() > 1.0 / 6.0) ++len;  // 3 + geometric: mean ~8 words
    return len;
  }

  //! The needles of a non-single task, in insertion order: the one at `depth` last. `required`
  //! gets the number of required answer tokens (their slots are 0 .. required - 1).
  std::vector<needle_tokens> task_needles(const niah_case& c, int& required) const {
    rng r(c.seed * 0x51ED27F1ull + static_cast<std::uint64_t>(c.context) * 131ull +
          static_cast<std::uint64_t>(std::llround(c.depth * 1e6)) * 17ull + static_cast<std::uint64_t>(c.task));
    const int P = cfg_.phrase_len;
    int unasked_slot = max_answers;
    required = c.task == niah_task::single ? cfg_.answer_len : 0;
    auto phrase = [&](needle_tokens& n, int key, int idx) {
      for (int i = 0; i < P; ++i)
        n.push_back({phrase0 + P * key + i, role::phrase, 0, 0, 1.0f, static_cast<std::int8_t>(key),
                     static_cast<std::int8_t>(idx)});
    };
    auto answer = [&](needle_tokens& n, std::int32_t id, int key, bool asked, int idx) {
      const int slot = asked ? required++ : unasked_slot++;
      n.push_back({id, role::answer, 0, static_cast<std::int16_t>(slot), 1.0f, static_cast<std::int8_t>(key),
                   static_cast<std::int8_t>(idx)});
    };
    auto digits = [&](needle_tokens& n, int count, int key, bool asked, int idx) {
      for (int j = 0; j < count; ++j) answer(n, digit0 + r.below(10), key, asked, idx);
    };
    auto end = [&](needle_tokens& n, std::int32_t id, int idx) {
      n.push_back({id, role::other_needle, 0, 0, 1.0f, 0, static_cast<std::int8_t>(idx)});
    };
    auto words = [&](needle_tokens& n, int count, std::int16_t topic) {
      for (int i = 0; i < count; ++i) n.push_back({word(r), role::word, topic, 0, 0.0f});
    };
    std::vector<needle_tokens> out;
    const int K = std::min(cfg_.keys, max_keys);
    switch (c.task) {
      case niah_task::single:
        break;
      case niah_task::multi_key:
      case niah_task::multi_query: {
        const int asked0 = r.below(K);
        std::vector<int> order;  // keys in insertion order; the first asked key last (at depth)
        for (int k = 0; k < K; ++k)
          if (k != asked0) order.push_back(k);
        order.push_back(asked0);
        const int extra_asked = c.task == niah_task::multi_query ? std::min(cfg_.queries, K) - 1 : 0;
        for (int i = 0; i < K; ++i) {
          const int k = order[i];
          const bool asked = k == asked0 || i < extra_asked;
          needle_tokens n;
          phrase(n, k, i);
          digits(n, cfg_.answer_len, k, asked, i);
          end(n, period, i);
          out.push_back(std::move(n));
        }
        break;
      }
      case niah_task::multi_value:
        for (int v = 0; v < cfg_.values; ++v) {
          needle_tokens n;
          phrase(n, 0, v);
          digits(n, cfg_.answer_len, 0, true, v);
          end(n, period, v);
          out.push_back(std::move(n));
        }
        break;
      case niah_task::long_sentence: {
        needle_tokens n;
        const auto topic = static_cast<std::int16_t>(r.below(32));
        words(n, clause_len(r), topic);
        n.push_back({comma, role::word, topic, 0, 0.0f});
        const int clause = cfg_.long_clause_min + r.below(cfg_.long_clause_max - cfg_.long_clause_min + 1);
        const int filler = std::max(0, clause - P - cfg_.answer_len), before = r.below(filler + 1);
        words(n, before, topic);
        phrase(n, 0, 0);
        digits(n, cfg_.answer_len, 0, true, 0);
        words(n, filler - before, topic);
        n.push_back({comma, role::word, topic, 0, 0.0f});
        words(n, clause_len(r), topic);
        n.push_back({period, role::word, topic, 0, 0.0f});
        out.push_back(std::move(n));
        break;
      }
      case niah_task::long_value: {
        needle_tokens n;
        phrase(n, 0, 0);
        const int len = std::min(max_answers, cfg_.long_value_min +
                                                  r.below(cfg_.long_value_max - cfg_.long_value_min + 1));
        for (int j = 0, run = 4 + r.below(5); j < len; ++j) {
          if (run == 0 && j + 1 < len) {  // a comma closes a clause of the value (never first or last)
            answer(n, comma, 0, true, 0);
            run = 4 + r.below(5);
          } else {
            answer(n, digit0 + r.below(10), 0, true, 0);
            --run;
          }
        }
        end(n, period, 0);
        out.push_back(std::move(n));
        break;
      }
    }
    return out;
  }

  std::vector<token> build_text(niah_sequence& s, rng& r) const {
    const int n = s.c.context, w = cfg_.window;
    const int needle_len = cfg_.phrase_len + cfg_.answer_len + 1;
    int required = cfg_.answer_len;
    const std::vector<needle_tokens> task = task_needles(s.c, required);
    int task_len = task.empty() ? needle_len : 0;
    for (const auto& t : task) task_len += static_cast<int>(t.size());
    const int haystack = std::max(0, n - w - 1 - task_len - needle_len * s.c.distractors);
    std::vector<token> text = {{bos, role::sink, 0, 0, 0.0f}};
    while (static_cast<int>(text.size()) < 1 + haystack) {
      const auto topic = static_cast<std::int16_t>(r.below(32));
      const int clauses = 1 + r.below(4);
      for (int cl = 0; cl < clauses; ++cl) {
        const int len = clause_len(r);
        for (int i = 0; i < len; ++i) text.push_back({word(r), role::word, topic, 0, 0.0f});
        text.push_back({cl + 1 == clauses ? period : comma, role::word, topic, 0, 0.0f});
      }
      if (r.uniform() < 0.1) text.push_back({newline, role::word, topic, 0, 0.0f});
    }
    text.resize(1 + haystack);
    // The sentence start nearest to `frac` of the haystack (1 = right after the sink).
    auto boundary_at = [&](double frac) {
      const int end = static_cast<int>(text.size());
      const int target = 1 + static_cast<int>(frac * (end - 1));
      int best = frac <= 0.0 ? 1 : end;
      for (int t = 1; t <= end && frac > 0.0; ++t) {
        const bool start = t == 1 || t == end || text[t - 1].id == period || text[t - 1].id == newline;
        if (start && std::abs(t - target) < std::abs(best - target)) best = t;
      }
      return best;
    };
    // The classic needle (single task, distractors): phrase of key 0, 5 digits, period.
    auto classic = [&](float strength, std::int8_t idx) {
      needle_tokens sent;
      for (int i = 0; i < cfg_.phrase_len; ++i) sent.push_back({phrase0 + i, role::phrase, 0, 0, strength, 0, idx});
      for (int j = 0; j < cfg_.answer_len; ++j)
        sent.push_back({digit0 + r.below(10), role::answer, 0, static_cast<std::int16_t>(j), strength, 0, idx});
      sent.push_back({period, role::other_needle, 0, 0, strength, 0, idx});
      return sent;
    };
    auto insert = [&](int at, const needle_tokens& sent) { text.insert(text.begin() + at, sent.begin(), sent.end()); };
    for (int i = 0; i < s.c.distractors; ++i) {
      const int at = boundary_at(r.uniform());
      insert(at, classic(0.8f, -1));
    }
    if (task.empty()) {
      const int at = boundary_at(s.c.depth);  // the needle last, so its position is exact
      insert(at, classic(1.0f, 0));
    } else {
      for (std::size_t i = 0; i + 1 < task.size(); ++i) {
        const int at = boundary_at(r.uniform());
        insert(at, task[i]);
      }
      insert(boundary_at(s.c.depth), task.back());
    }
    for (int i = 0; i < w - 1; ++i) text.push_back({word(r), role::question, 0, 0, 0.0f});
    text.push_back({question_mark, role::question, 0, 0, 0.0f});
    s.tokens = static_cast<int>(text.size());
    s.token_ids.resize(text.size());
    for (std::size_t t = 0; t < text.size(); ++t) s.token_ids[t] = text[t].id;
    locate(s, text, task.empty() ? 1 : static_cast<int>(task.size()), required);
    return text;
  }

  //! Fills `needles`, `answers` and the depth needle's positions from the tagged text.
  static void locate(niah_sequence& s, const std::vector<token>& text, int count, int required) {
    std::vector<needle_place> by_index(static_cast<std::size_t>(count));
    std::vector<int> first(static_cast<std::size_t>(count), -1);
    s.answers.assign(static_cast<std::size_t>(required), -1);
    for (int t = 0; t < static_cast<int>(text.size()); ++t) {
      const token& tk = text[t];
      if (tk.needle < 0) continue;
      auto& p = by_index[tk.needle];
      if (first[tk.needle] < 0) first[tk.needle] = t;
      if (tk.what == role::phrase && p.phrase_begin == 0) p.phrase_begin = t, p.key = tk.key;  // 0: the sink, unset
      if (tk.what == role::answer) {
        if (p.answer_end == 0) p.answer_begin = t;
        p.answer_end = t + 1;
        if (tk.slot < required) s.answers[tk.slot] = t, p.asked = true;
      }
    }
    const needle_place at_depth = by_index.back();  // inserted last, at `depth`
    s.phrase_begin = at_depth.phrase_begin, s.answer_begin = at_depth.answer_begin, s.answer_end = at_depth.answer_end;
    std::vector<int> order(static_cast<std::size_t>(count));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return first[a] < first[b]; });
    for (int i : order) s.needles.push_back(by_index[i]);
  }

  const float* vec(const std::vector<float>& table, int slot, int index, int per_slot) const {
    return &table[(static_cast<std::size_t>(slot) * per_slot + index) * cfg_.head_dim];
  }
  const float* word_vec(int slot, std::int32_t id) const {
    return vec(words_, slot, id < first_word ? id : id - first_word + 128, cfg_.vocab + 128);
  }
  //! Answer-slot direction D_j: the first `answer_len` from the original table (single task unchanged).
  const float* slot_vec(int slot, int j) const {
    return j < cfg_.answer_len ? vec(slot_dir_, slot, j, cfg_.answer_len)
                               : vec(extra_slot_dir_, slot, j - cfg_.answer_len, extra_slots);
  }

  void build_caches(niah_sequence& s, const std::vector<token>& text, rng& r) const {
    const int n = s.tokens, d = cfg_.head_dim, kvh = cfg_.kv_heads, L = cfg_.num_layers;
    const int answers = s.decode_count();
    s.pages = (n + cfg_.page_size - 1) / cfg_.page_size;
    const int step = std::gcd(37, s.pages) == 1 ? 37 : 1;  // scatter the pages (a permutation)
    s.block_table.resize(s.pages);
    for (int p = 0; p < s.pages; ++p) s.block_table[p] = (p * step) % s.pages;
    s.lens = {n};
    const std::size_t elems = static_cast<std::size_t>(s.pages) * cfg_.page_size * kvh * d;
    s.k.assign(L, std::vector<bfloat16>(elems, bfloat16{0}));
    s.v.assign(L, std::vector<bfloat16>(elems, bfloat16{0}));
    s.window_queries.assign(L, std::vector<bfloat16>(static_cast<std::size_t>(cfg_.q_heads) * cfg_.window * d));
    s.decode_queries.assign(L, std::vector<bfloat16>(static_cast<std::size_t>(cfg_.q_heads) * answers * d));
    // Keys the question asks (window query row i asks asked[i % size]) and the key of each answer.
    std::vector<int> asked, answer_key(static_cast<std::size_t>(answers), 0);
    for (const auto& p : s.needles)
      if (p.asked && std::find(asked.begin(), asked.end(), p.key) == asked.end()) asked.push_back(p.key);
    const needle_place* depth_needle = nullptr;
    for (const auto& p : s.needles)
      if (p.phrase_begin == s.phrase_begin) depth_needle = &p;
    if (depth_needle) {  // the needle at depth is asked first
      asked.erase(std::find(asked.begin(), asked.end(), depth_needle->key));
      asked.insert(asked.begin(), depth_needle->key);
    }
    for (int j = 0; j < answers; ++j) answer_key[j] = text[s.answers[j]].key;
    const bool distinct_keys = s.c.task == niah_task::multi_key || s.c.task == niah_task::multi_query;
    const int group = cfg_.q_heads / kvh;
    std::vector<float> kf(static_cast<std::size_t>(n) * d), q(d), keys(static_cast<std::size_t>(max_keys) * d),
        noise(2 * static_cast<std::size_t>(d));
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < kvh; ++h) {
        const int slot = l * kvh + h;
        const float* S = vec(sink_, slot, 0, 1);
        const float* U = vec(retr_, slot, 0, 1);
        // U_k: U itself with one key; 0.6 U + 0.8 K_k when keys differ (same norm, cosine 0.36).
        for (int key = 0; key < max_keys; ++key) {
          const float* Kk = vec(key_dir_, slot, key, max_keys);
          for (int x = 0; x < d; ++x) keys[key * d + x] = distinct_keys ? 0.6f * U[x] + 0.8f * Kk[x] : U[x];
        }
        auto Uk = [&](int key) { return &keys[static_cast<std::size_t>(key) * d]; };
        for (int t = 0; t < n; ++t) {
          float* k = &kf[static_cast<std::size_t>(t) * d];
          const token& tk = text[t];
          // A sink's key has no noise; every other key draws d normals, then its value d more.
          r.normals(noise.data(), tk.what == role::sink ? d : 2 * d);
          const float* E = word_vec(slot, tk.id);
          const float* T = vec(topics_, slot, tk.topic, 32);
          const float* D = slot_vec(slot, tk.slot);
          const float* Ut = Uk(tk.key);
          for (int x = 0; x < d; ++x) {
            switch (tk.what) {
              case role::sink:
                k[x] = 1.5f * S[x];
                break;
              case role::phrase:
                k[x] = 0.8f * E[x] + 1.25f * tk.strength * Ut[x] + 0.3f * noise[x];
                break;
              case role::answer:
                k[x] = 0.8f * E[x] + 1.5f * D[x] + 0.35f * tk.strength * Ut[x] + 0.3f * noise[x];
                break;
              case role::other_needle:
              case role::question:
                k[x] = 0.8f * E[x] + 0.4f * noise[x];
                break;
              case role::word:
                k[x] = 0.8f * E[x] + 0.4f * T[x] + 0.4f * noise[x];
                break;
            }
          }
          const float* vn = noise.data() + (tk.what == role::sink ? 0 : d);
          for (int x = 0; x < d; ++x) {
            s.k[l][s.offset(t, h) + x] = from_float<bfloat16>(k[x]);
            s.v[l][s.offset(t, h) + x] = from_float<bfloat16>(vn[x]);
          }
        }
        const head_kind kind = cfg_.kind(l, h);
        // Retrieval heads: wa * A + wb * B + wn * noise; local heads: mean of the keys p-3..p
        // (p: the query's position) + noise; diffuse heads: small noise.
        auto query = [&](int p, float wa, const float* A, float wb, const float* B, float wn) {
          r.normals(noise.data(), d);  // one per element, whatever the head
          for (int x = 0; x < d; ++x) {
            if (kind == head_kind::retrieval) {
              q[x] = wa * A[x] + wb * B[x] + wn * noise[x];
            } else if (kind == head_kind::diffuse) {
              q[x] = 0.3f * noise[x];
            } else {
              float m = 0;
              for (int t = std::max(0, p - 3); t <= p; ++t) m += kf[static_cast<std::size_t>(t) * d + x];
              q[x] = m / 4.0f + 0.3f * noise[x];
            }
          }
        };
        for (int g = 0; g < group; ++g) {
          const int qh = h * group + g;
          for (int i = 0; i < cfg_.window; ++i) {
            query(n - cfg_.window + i, 0.6f, Uk(asked[i % asked.size()]), 0.6f, S, 0.5f);
            for (int x = 0; x < d; ++x)
              s.window_queries[l][(static_cast<std::size_t>(qh) * cfg_.window + i) * d + x] =
                  from_float<bfloat16>(q[x]);
          }
          for (int j = 0; j < answers; ++j) {
            query(n - 1, 1.2f, slot_vec(slot, j), 0.3f, Uk(answer_key[j]), 0.3f);
            for (int x = 0; x < d; ++x)
              s.decode_queries[l][(static_cast<std::size_t>(qh) * answers + j) * d + x] = from_float<bfloat16>(q[x]);
          }
        }
      }
  }

  niah_config cfg_;
  std::vector<float> words_, topics_, sink_, retr_, slot_dir_, extra_slot_dir_, key_dir_;
  std::vector<double> cdf_;
};

}  // namespace kvevict::synthetic

//! \file synthetic/niah.hpp
//! NIAH-style synthetic per-layer KV caches: structured text, an attention sink, a needle at a
//! chosen depth, retrieval / local / diffuse heads, observation-window and decode queries.
//!
//! The mechanism (design: niah.md). Text is sentences of 1-4 clauses; a clause has `3 + Geom`
//! words (mean 8, at most 30) and ends with a comma, the last clause of a sentence with a period
//! (a newline follows 10% of sentences). Word ids follow a Zipf law (s = 1.1 over 4,000 words).
//! A key is `0.8 word + 0.4 sentence topic + 0.4 noise` (per layer and KV head: repeated words
//! have similar keys). Token 0 is a sink whose key `1.5 S` every window query attends to. The
//! needle sentence "<key phrase of 6 tokens> <5 answer digits> ." sits at `depth` of the haystack
//! (at a sentence boundary): phrase keys carry `1.25 U` (U: the retrieval direction), answer keys
//! only `0.35 U` plus a digit-slot direction `1.5 D_j`. The last `window` tokens are the question.
//!
//! Heads (per layer, per KV head; GQA groups share the kind):
//! * retrieval: window queries `0.6 U + 0.6 S + 0.5 noise` (strong on the phrase, weak on the
//!   answer); decode query j (generating answer digit j) `1.2 D_j + 0.3 U + 0.3 noise`;
//! * local: window and decode queries = mean of the 4 previous keys + 0.3 noise;
//! * diffuse: `0.3 noise`.
//! Layer 0 heads are (local, diffuse, retrieval, local), layer 1 (retrieval, retrieval, local,
//! diffuse). Optional distractors: sentences with the phrase at 0.8 strength and other digits.
//! Every vector has i.i.d. N(0, 1) entries, so a logit `q . k / sqrt(d)` between matching unit
//! components is about `8 x` the product of their weights at head_dim 64 (phrase ~6, sink ~7, answer to its decode
//! query ~14, answer to the window queries ~1.7, other tokens ~N(0, 1)). Values are N(0, 1).
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

#include "../cache/block_table_cache.hpp"
#include "../numeric.hpp"
#include "../signals.hpp"

namespace kvevict::synthetic {

//! Token ids of the synthetic vocabulary.
enum token_id : std::int32_t {
  bos = 0,
  period = 1,
  comma = 2,
  newline = 3,
  question_mark = 4,
  digit0 = 10,       // digits 10..19
  phrase0 = 20,      // key phrase 20..25
  first_word = 100,  // ordinary words 100 .. 100 + vocab
};

//! Delimiter ids a segmenter should use for this vocabulary.
inline const std::int32_t delimiter_ids[] = {period, comma, newline, question_mark};

enum class head_kind { retrieval, local, diffuse };

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
  double depth = 0.5;  //!< needle position in [0, 1] of the haystack
  std::uint64_t seed = 1;
  int distractors = 0;
};

//! Deterministic random numbers (splitmix64, Box-Muller): the same sequence on every platform,
//! unlike the standard distributions.
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
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  int below(int n) { return static_cast<int>(uniform() * n); }
};

//! A generated sequence: one paged cache per layer (vLLM-style, bf16), token ids, queries and
//! where the needle is. Owns its storage; `layer_view(l)` gives the cache view of layer `l`.
struct niah_sequence {
  niah_config cfg;
  niah_case c;
  int tokens = 0, pages = 0;
  std::vector<std::int32_t> token_ids;                     // [tokens]
  std::vector<std::int32_t> block_table, lens;             // [pages], [1]
  std::vector<std::vector<bfloat16>> k, v;                 // per layer [pages, page_size, kv_heads, head_dim]
  std::vector<std::vector<bfloat16>> window_queries;       // per layer [q_heads, window, head_dim]
  std::vector<std::vector<bfloat16>> decode_queries;       // per layer [q_heads, answer_len, head_dim]
  int phrase_begin = 0, answer_begin = 0, answer_end = 0;  // needle positions

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
      for (auto& e : x) e = r.normal();
    };
    fill(words_, static_cast<std::size_t>(slots) * (cfg.vocab + 128) * d);  // ids < 128 too (digits, phrase)
    fill(topics_, static_cast<std::size_t>(slots) * 32 * d);
    fill(sink_, static_cast<std::size_t>(slots) * d);
    fill(retr_, static_cast<std::size_t>(slots) * d);
    fill(slot_dir_, static_cast<std::size_t>(slots) * cfg.answer_len * d);
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
    rng r(c.seed * 1000003ull + static_cast<std::uint64_t>(c.context) * 7919ull +
          static_cast<std::uint64_t>(std::llround(c.depth * 1e6)));
    std::vector<token> text = build_text(s, r);
    build_caches(s, text, r);
    return s;
  }

 private:
  enum class role : std::uint8_t { sink, word, phrase, answer, other_needle, question };
  struct token {
    std::int32_t id;
    role what;
    std::int16_t topic;  // sentence topic (0..31) for words
    std::int8_t slot;    // answer digit index for answers
    float strength;      // 1 for the needle, 0.8 for distractors
  };

  int word(rng& r) const {
    return first_word + static_cast<int>(std::lower_bound(cdf_.begin(), cdf_.end(), r.uniform()) - cdf_.begin());
  }

  std::vector<token> build_text(niah_sequence& s, rng& r) const {
    const int n = s.c.context, w = cfg_.window;
    const int needle_len = cfg_.phrase_len + cfg_.answer_len + 1;
    const int haystack = std::max(0, n - w - 1 - needle_len * (1 + s.c.distractors));
    std::vector<token> text = {{bos, role::sink, 0, 0, 0.0f}};
    while (static_cast<int>(text.size()) < 1 + haystack) {
      const auto topic = static_cast<std::int16_t>(r.below(32));
      const int clauses = 1 + r.below(4);
      for (int cl = 0; cl < clauses; ++cl) {
        int len = 3;
        while (len < 30 && r.uniform() > 1.0 / 6.0) ++len;  // 3 + geometric: mean ~8 words
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
    auto insert_needle = [&](int at, role phrase_role, float strength) {
      std::vector<token> sent;
      for (int i = 0; i < cfg_.phrase_len; ++i) sent.push_back({phrase0 + i, phrase_role, 0, 0, strength});
      for (int j = 0; j < cfg_.answer_len; ++j)
        sent.push_back({digit0 + r.below(10), role::answer, 0, static_cast<std::int8_t>(j), strength});
      sent.push_back({period, role::other_needle, 0, 0, strength});
      text.insert(text.begin() + at, sent.begin(), sent.end());
    };
    for (int i = 0; i < s.c.distractors; ++i) insert_needle(boundary_at(r.uniform()), role::phrase, 0.8f);
    const int at = boundary_at(s.c.depth);  // the needle last, so its position is exact
    insert_needle(at, role::phrase, 1.0f);
    s.phrase_begin = at;
    s.answer_begin = at + cfg_.phrase_len;
    s.answer_end = s.answer_begin + cfg_.answer_len;
    for (int i = 0; i < w - 1; ++i) text.push_back({word(r), role::question, 0, 0, 0.0f});
    text.push_back({question_mark, role::question, 0, 0, 0.0f});
    s.tokens = static_cast<int>(text.size());
    s.token_ids.resize(text.size());
    for (std::size_t t = 0; t < text.size(); ++t) s.token_ids[t] = text[t].id;
    return text;
  }

  const float* vec(const std::vector<float>& table, int slot, int index, int per_slot) const {
    return &table[(static_cast<std::size_t>(slot) * per_slot + index) * cfg_.head_dim];
  }
  const float* word_vec(int slot, std::int32_t id) const {
    return vec(words_, slot, id < first_word ? id : id - first_word + 128, cfg_.vocab + 128);
  }

  void build_caches(niah_sequence& s, const std::vector<token>& text, rng& r) const {
    const int n = s.tokens, d = cfg_.head_dim, kvh = cfg_.kv_heads, L = cfg_.num_layers;
    s.pages = (n + cfg_.page_size - 1) / cfg_.page_size;
    const int step = std::gcd(37, s.pages) == 1 ? 37 : 1;  // scatter the pages (a permutation)
    s.block_table.resize(s.pages);
    for (int p = 0; p < s.pages; ++p) s.block_table[p] = (p * step) % s.pages;
    s.lens = {n};
    const std::size_t elems = static_cast<std::size_t>(s.pages) * cfg_.page_size * kvh * d;
    s.k.assign(L, std::vector<bfloat16>(elems, bfloat16{0}));
    s.v.assign(L, std::vector<bfloat16>(elems, bfloat16{0}));
    s.window_queries.assign(L, std::vector<bfloat16>(static_cast<std::size_t>(cfg_.q_heads) * cfg_.window * d));
    s.decode_queries.assign(L, std::vector<bfloat16>(static_cast<std::size_t>(cfg_.q_heads) * cfg_.answer_len * d));
    const int group = cfg_.q_heads / kvh;
    std::vector<float> kf(static_cast<std::size_t>(n) * d), q(d);
    for (int l = 0; l < L; ++l)
      for (int h = 0; h < kvh; ++h) {
        const int slot = l * kvh + h;
        const float* S = vec(sink_, slot, 0, 1);
        const float* U = vec(retr_, slot, 0, 1);
        for (int t = 0; t < n; ++t) {
          float* k = &kf[static_cast<std::size_t>(t) * d];
          const token& tk = text[t];
          const float* E = word_vec(slot, tk.id);
          const float* T = vec(topics_, slot, tk.topic, 32);
          const float* D = vec(slot_dir_, slot, tk.slot, cfg_.answer_len);
          for (int x = 0; x < d; ++x) {
            switch (tk.what) {
              case role::sink:
                k[x] = 1.5f * S[x];
                break;
              case role::phrase:
                k[x] = 0.8f * E[x] + 1.25f * tk.strength * U[x] + 0.3f * r.normal();
                break;
              case role::answer:
                k[x] = 0.8f * E[x] + 1.5f * D[x] + 0.35f * tk.strength * U[x] + 0.3f * r.normal();
                break;
              case role::other_needle:
              case role::question:
                k[x] = 0.8f * E[x] + 0.4f * r.normal();
                break;
              case role::word:
                k[x] = 0.8f * E[x] + 0.4f * T[x] + 0.4f * r.normal();
                break;
            }
          }
          for (int x = 0; x < d; ++x) {
            s.k[l][s.offset(t, h) + x] = from_float<bfloat16>(k[x]);
            s.v[l][s.offset(t, h) + x] = from_float<bfloat16>(r.normal());
          }
        }
        const head_kind kind = cfg_.kind(l, h);
        // Retrieval heads: wa * A + wb * B + wn * noise; local heads: mean of the keys p-3..p
        // (p: the query's position) + noise; diffuse heads: small noise.
        auto query = [&](int p, float wa, const float* A, float wb, const float* B, float wn) {
          for (int x = 0; x < d; ++x) {
            if (kind == head_kind::retrieval) {
              q[x] = wa * A[x] + wb * B[x] + wn * r.normal();
            } else if (kind == head_kind::diffuse) {
              q[x] = 0.3f * r.normal();
            } else {
              float m = 0;
              for (int t = std::max(0, p - 3); t <= p; ++t) m += kf[static_cast<std::size_t>(t) * d + x];
              q[x] = m / 4.0f + 0.3f * r.normal();
            }
          }
        };
        for (int g = 0; g < group; ++g) {
          const int qh = h * group + g;
          for (int i = 0; i < cfg_.window; ++i) {
            query(n - cfg_.window + i, 0.6f, U, 0.6f, S, 0.5f);
            for (int x = 0; x < d; ++x)
              s.window_queries[l][(static_cast<std::size_t>(qh) * cfg_.window + i) * d + x] =
                  from_float<bfloat16>(q[x]);
          }
          for (int j = 0; j < cfg_.answer_len; ++j) {
            query(n - 1, 1.2f, vec(slot_dir_, slot, j, cfg_.answer_len), 0.3f, U, 0.3f);
            for (int x = 0; x < d; ++x)
              s.decode_queries[l][(static_cast<std::size_t>(qh) * cfg_.answer_len + j) * d + x] =
                  from_float<bfloat16>(q[x]);
          }
        }
      }
  }

  niah_config cfg_;
  std::vector<float> words_, topics_, sink_, retr_, slot_dir_;
  std::vector<double> cdf_;
};

}  // namespace kvevict::synthetic

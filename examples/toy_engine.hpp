// A toy inference engine over a paged KV cache, for the examples and the decode tests: one
// attention layer with random weights, a page pool, a vLLM-style block table or a
// FlashInfer-style CSR page table, prefill then decode, with kvevict's decode-time eviction.
//
// Each step appends the token's K and V through the slot mapping (allocating a page when the
// last one is full), computes the step's attention output on the host, feeds the H2O sums and the
// query ring, and evicts every sequence that crossed budget + slack back to the budget.
#pragma once

#include <kvevict/kvevict.hpp>
#include <kvevict/support/niah.hpp>
#include <kvevict/support/page_pool.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace toy {

using elem = kvevict::bfloat16;

//! One attention layer with random weights: token -> (q, k, v).
struct model {
  int vocab = 512, dm = 64, hq = 8, hkv = 2, d = 32;
  std::vector<float> emb, wq, wk, wv;  // [vocab, dm], [dm, hq*d], [dm, hkv*d], [dm, hkv*d]
  explicit model(std::uint64_t seed = 1) {
    kvevict::synthetic::rng r(seed);
    auto fill = [&](std::vector<float>& x, std::size_t n, float scale) {
      x.resize(n);
      for (auto& e : x) e = scale * r.normal();
    };
    fill(emb, std::size_t(vocab) * dm, 1.0f);
    fill(wq, std::size_t(dm) * hq * d, 0.35f / std::sqrt(float(dm)) * 4);
    fill(wk, std::size_t(dm) * hkv * d, 1.0f / std::sqrt(float(dm)));
    fill(wv, std::size_t(dm) * hkv * d, 1.0f / std::sqrt(float(dm)));
  }
  //! q, k, v of `token` at sequence position `pos`; q and k carry the rotary embedding of `pos`
  //! (RoPE, rotate-half convention, base 10000), as a real model's do.
  void project(int token, int pos, std::vector<elem>& q, std::vector<elem>& k, std::vector<elem>& v) const {
    auto mat = [&](const std::vector<float>& w, int cols, bool rotary, std::vector<elem>& out) {
      std::vector<float> y(cols);
      for (int c = 0; c < cols; ++c) {
        float s = 0;
        for (int i = 0; i < dm; ++i) s += emb[std::size_t(token) * dm + i] * w[std::size_t(i) * cols + c];
        y[c] = s;
      }
      if (rotary)
        for (int h = 0; h < cols / d; ++h)
          for (int i = 0; i < d / 2; ++i) {
            const double theta = pos * std::pow(10000.0, -2.0 * i / d);
            const float c = float(std::cos(theta)), sn = float(std::sin(theta));
            float& a = y[std::size_t(h) * d + i];
            float& b = y[std::size_t(h) * d + i + d / 2];
            const float a0 = a, b0 = b;
            a = a0 * c - b0 * sn;
            b = b0 * c + a0 * sn;
          }
      out.resize(cols);
      for (int c = 0; c < cols; ++c) out[c] = kvevict::from_float<elem>(y[c]);
    };
    mat(wq, hq * d, true, q);
    mat(wk, hkv * d, true, k);
    mat(wv, hkv * d, false, v);
  }
};

enum class table_kind { block_table, csr };

//! Engine settings. `evict = false` gives the reference loop (full cache).
struct settings {
  int num_seqs = 4, num_pages = 512, page_size = 16, max_tokens = 4096;
  bool evict = true;
  int budget = 128, slack = 32, sinks = 4, window = 16;
};

template <table_kind Kind, class Policy>
class engine {
 public:
  engine(const model& m, settings s, Policy p)
      : m_(m),
        s_(s),
        policy_(p),
        pool_(s.num_pages, std::size_t(s.page_size) * m.hkv * m.d),
        pages_(s.num_seqs),
        lens_(s.num_seqs, 0),
        origin_(std::size_t(s.num_seqs) * m.hkv),
        position_(s.num_seqs, 0),
        sums_(std::size_t(s.num_seqs) * m.hq * s.max_tokens, 0.0f),
        ring_(s.num_seqs, m.hq, s.window, m.d) {
    policy_.selector.sinks = s.sinks;
    policy_.selector.window = s.window;
    policy_.selector.budget.entries = s.budget;
  }

  //! Appends `token` to sequence `seq` and returns the step's attention output [hq * d].
  //!
  //! Two counters per sequence, which eviction pulls apart: `position_[seq]`, the token's position
  //! in the text (what the rotary embedding encodes), and `lens_[seq]`, the cache length (the slot
  //! the token is written to). After compaction a kept key sits at a new slot but keeps the rotary
  //! phase of its old position, so the next token must take the next *text* position, never the
  //! cache length.
  std::vector<float> step(int seq, int token) {
    const int position = position_[seq]++;
    m_.project(token, position, q_, k_, v_);
    const int pos = lens_[seq];  // cache slot
    if (pos % s_.page_size == 0) {
      const int page = pool_.allocate();
      if (page < 0) {
        std::fprintf(stderr, "toy engine: page pool exhausted\n");
        std::exit(3);
      }
      pages_[seq].push_back(page);
    }
    // Slot mapping: slot = page * page_size + offset, K/V [num_pages, page_size, hkv, d].
    const std::size_t slot = std::size_t(pages_[seq][pos / s_.page_size]) * s_.page_size + pos % s_.page_size;
    for (int h = 0; h < m_.hkv; ++h)
      for (int x = 0; x < m_.d; ++x) {
        pool_.k()[(slot * m_.hkv + h) * m_.d + x] = k_[std::size_t(h) * m_.d + x];
        pool_.v()[(slot * m_.hkv + h) * m_.d + x] = v_[std::size_t(h) * m_.d + x];
      }
    lens_[seq] = pos + 1;
    for (int h = 0; h < m_.hkv; ++h) origin_[std::size_t(seq) * m_.hkv + h].push_back(position);
    ring_.push(seq, q_.data());
    return attend(seq);
  }

  //! Evicts every sequence over budget + slack back to the budget (no-op for the full cache).
  void maybe_evict() {
    if (!s_.evict) return;
    std::vector<std::int32_t> budgets(s_.num_seqs), windows(s_.num_seqs);
    if (kvevict::decode_budgets(lens_.data(), s_.num_seqs, s_.budget, s_.slack, s_.sinks, s_.window,
                                ring_.filled_counts(), budgets.data(), windows.data()) == 0)
      return;
    rebuild_tables();
    std::vector<elem> queries(std::size_t(s_.num_seqs) * m_.hq * s_.window * m_.d);
    ring_.gather(queries.data());
    kvevict::signals<elem> sig;
    sig.queries = queries.data();
    sig.num_q_heads = m_.hq;
    sig.query_rows = s_.window;
    sig.attention_sums = sums_.data();
    sig.sums_stride = s_.max_tokens;
    sig.seq_budgets = budgets.data();
    sig.seq_windows = windows.data();
    with_view([&](auto view) {
      auto kept = kvevict::keep_plan_buffer::for_cache(policy_, view, sig);
      auto res = kvevict::compact_result_buffer::for_cache(view);
      const kvevict::compact_result& out = res.result;
      const std::vector<std::int32_t>& new_lens = res.new_lens;
      const auto st = kvevict::evict(kvevict::host, policy_, view, sig, kept.view(), res.result);
      if (!st) {
        std::fprintf(stderr, "toy engine: %s\n", st.message().c_str());
        std::exit(4);
      }
      std::vector<std::int32_t> old_lens(new_lens.size());
      for (int r = 0; r < s_.num_seqs * m_.hkv; ++r) old_lens[r] = lens_[r / m_.hkv];
      kvevict::compact_attention_sums(kept.const_view(), s_.num_seqs, m_.hkv, m_.hq, sums_.data(), s_.max_tokens,
                                      old_lens.data());
      // The kept tokens' text positions; position_ (the next token's) is not touched by eviction.
      for (int r = 0; r < s_.num_seqs * m_.hkv; ++r) {
        auto& o = origin_[r];
        const auto keep = kept.kept(r);
        std::vector<int> next;
        for (int p : keep) next.push_back(o[p]);
        o = next;
      }
      for (int i = 0; i < out.num_freed; ++i)
        if (!pool_.release(out.freed_pages[i])) {
          std::fprintf(stderr, "toy engine: page %d freed twice\n", out.freed_pages[i]);
          std::exit(5);
        }
      if constexpr (Kind == table_kind::csr) {
        kvevict::apply_compaction(indptr_.data(), indices_.data(), last_.data(), s_.num_seqs, s_.page_size,
                                  new_lens.data(), m_.hkv);
        for (int q = 0; q < s_.num_seqs; ++q)
          pages_[q].assign(indices_.begin() + indptr_[q], indices_.begin() + indptr_[q + 1]);
      } else {
        for (int q = 0; q < s_.num_seqs; ++q)
          pages_[q].resize((new_lens[std::size_t(q) * m_.hkv] + s_.page_size - 1) / s_.page_size);
      }
      for (int q = 0; q < s_.num_seqs; ++q) lens_[q] = new_lens[std::size_t(q) * m_.hkv];
      ++evictions_;
    });
  }

  // Inspection (tests, printing).
  const std::vector<int>& pages(int seq) const { return pages_[seq]; }
  int len(int seq) const { return lens_[seq]; }
  //! Text position the next token of `seq` takes (tokens seen so far), independent of evictions.
  int next_position(int seq) const { return position_[seq]; }
  const std::vector<int>& origin(int seq, int head) const { return origin_[std::size_t(seq) * m_.hkv + head]; }
  const kvevict::page_pool<elem>& pool() const { return pool_; }
  std::size_t bytes_held() const { return std::size_t(pool_.num_used()) * pool_.page_elems() * 2 * sizeof(elem); }
  int evictions() const { return evictions_; }
  //! K or V of (seq, head, cache position), read through the engine's own page list.
  const elem* key(int seq, int head, int pos) const { return &pool_.k_storage()[addr(seq, head, pos)]; }
  const elem* value(int seq, int head, int pos) const { return &pool_.v_storage()[addr(seq, head, pos)]; }

 private:
  std::size_t addr(int seq, int head, int pos) const {
    const std::size_t slot = std::size_t(pages_[seq][pos / s_.page_size]) * s_.page_size + pos % s_.page_size;
    return (slot * m_.hkv + head) * m_.d;
  }

  // Host attention of the step's query over the sequence's cache; feeds the H2O sums.
  std::vector<float> attend(int seq) {
    const int n = lens_[seq], group = m_.hq / m_.hkv;
    std::vector<float> out(std::size_t(m_.hq) * m_.d, 0.0f), p(n);
    for (int qh = 0; qh < m_.hq; ++qh) {
      const int h = qh / group;
      float mx = -1e30f;
      for (int t = 0; t < n; ++t) {
        float dot = 0;
        const elem* k = key(seq, h, t);
        for (int x = 0; x < m_.d; ++x)
          dot += kvevict::to_float(q_[std::size_t(qh) * m_.d + x]) * kvevict::to_float(k[x]);
        p[t] = dot / std::sqrt(float(m_.d));
        mx = std::max(mx, p[t]);
      }
      float z = 0;
      for (int t = 0; t < n; ++t) z += (p[t] = std::exp(p[t] - mx));
      for (int t = 0; t < n; ++t) {
        p[t] /= z;
        const elem* v = value(seq, h, t);
        for (int x = 0; x < m_.d; ++x) out[std::size_t(qh) * m_.d + x] += p[t] * kvevict::to_float(v[x]);
      }
      // The engine passes its own probabilities to the H2O accumulator.
      kvevict::accumulate_attention(&sums_[(std::size_t(seq) * m_.hq + qh) * s_.max_tokens], s_.max_tokens, p.data(), n,
                                    1, n);
    }
    return out;
  }

  void rebuild_tables() {
    int stride = 1;
    for (auto& p : pages_) stride = std::max<int>(stride, int(p.size()));
    table_.assign(std::size_t(s_.num_seqs) * stride, 0);
    indptr_.assign(1, 0);
    indices_.clear();
    last_.clear();
    for (int q = 0; q < s_.num_seqs; ++q) {
      for (std::size_t i = 0; i < pages_[q].size(); ++i) table_[std::size_t(q) * stride + i] = pages_[q][i];
      indices_.insert(indices_.end(), pages_[q].begin(), pages_[q].end());
      indptr_.push_back(int(indices_.size()));
      last_.push_back(lens_[q] == 0 ? 0 : lens_[q] - (int(pages_[q].size()) - 1) * s_.page_size);
    }
    if (indices_.empty()) indices_.push_back(0);
    stride_ = stride;
  }

  template <class F>
  void with_view(F&& f) {
    if constexpr (Kind == table_kind::block_table)
      f(kvevict::block_table_cache<elem>{pool_.k(), pool_.v(), table_.data(), lens_.data(), s_.num_seqs, stride_,
                                         pool_.num_pages(), s_.page_size, m_.hkv, m_.d});
    else
      f(kvevict::csr_page_cache<elem>{pool_.k(), pool_.v(), indptr_.data(), indices_.data(), last_.data(), s_.num_seqs,
                                      pool_.num_pages(), s_.page_size, m_.hkv, m_.d});
  }

  const model& m_;
  settings s_;
  Policy policy_;
  kvevict::page_pool<elem> pool_;
  std::vector<std::vector<int>> pages_;
  std::vector<std::int32_t> lens_;
  std::vector<std::vector<int>> origin_;  // [seq * hkv + head] original position of each cache slot
  std::vector<int> position_;             // [seq] text position of the next token (not the cache length)
  std::vector<float> sums_;
  kvevict::query_ring<elem> ring_;
  std::vector<elem> q_, k_, v_;
  std::vector<std::int32_t> table_, indptr_, indices_, last_;
  int stride_ = 1, evictions_ = 0;
};

//! Runs prefill (prompt_len tokens per sequence, sequence s gets prompt_len + 97 s) and `decode`
//! steps on an evicting engine and on the full-cache reference with the same tokens; prints
//! memory held and the attention-output error, returns the mean relative error.
template <table_kind Kind, class Policy>
double compare_loops(const char* title, Policy policy, settings s, int prompt_len, int decode) {
  const model m;
  settings full = s;
  full.evict = false;
  engine<Kind, Policy> ev(m, s, policy), ref(m, full, policy);
  kvevict::synthetic::rng r(99);
  auto next_token = [&] { return r.below(m.vocab); };
  double err_sum = 0;
  int err_n = 0;
  auto compare = [&](const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < a.size(); ++i) num += (a[i] - b[i]) * (a[i] - b[i]), den += b[i] * b[i];
    err_sum += std::sqrt(num / den);
    ++err_n;
  };
  for (int q = 0; q < s.num_seqs; ++q)
    for (int t = 0; t < prompt_len + 97 * q; ++t) {
      const int tok = next_token();
      ev.step(q, tok);
      ref.step(q, tok);
    }
  ev.maybe_evict();  // compress the prompts
  std::printf("%s\n  after prefill: %zu KiB held (full cache %zu KiB)\n", title, ev.bytes_held() / 1024,
              ref.bytes_held() / 1024);
  for (int i = 0; i < decode; ++i) {
    for (int q = 0; q < s.num_seqs; ++q) {
      const int tok = next_token();
      compare(ev.step(q, tok), ref.step(q, tok));
    }
    ev.maybe_evict();
    if ((i + 1) % (decode / 4) == 0)
      std::printf("  decode step %4d: %6zu KiB held (full cache %6zu KiB), mean attention-output error %.4f\n", i + 1,
                  ev.bytes_held() / 1024, ref.bytes_held() / 1024, err_sum / err_n);
  }
  std::printf("  evictions: %d, pages in use %d of %d\n", ev.evictions(), ev.pool().num_used(), ev.pool().num_pages());
  std::printf("  sequence 0: cache length %d, next token's rotary position %d (its text position, not the length)\n",
              ev.len(0), ev.next_position(0));
  return err_sum / err_n;
}

}  // namespace toy

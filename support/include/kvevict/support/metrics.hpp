//! \file support/metrics.hpp
//! NIAH quality metrics of keep plans on a synthetic sequence.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <kvevict/keep_plan.hpp>
#include "niah.hpp"

namespace kvevict::synthetic {

//! Quality of the kept sets of every layer of one sequence.
struct niah_quality {
  bool success = false;  //!< every required answer token kept in every retrieval head of every layer (NIAH "accuracy")
  double recall = 0;     //!< required answer tokens kept / required, over the retrieval heads of every layer
  //! Mean over the decode queries of the retrieval heads (the queries that generate the answer) of
  //! `1 - |o_kept - o_full| / |o_full|`, o = softmax(q k / sqrt(d)) v over the kept / full cache.
  double fidelity = 0;
};

//! Precomputes, for one sequence, the decode attention of every retrieval head over the full
//! cache (double precision), so that each plan is then scored in O(kept tokens x head_dim).
class niah_evaluator {
 public:
  explicit niah_evaluator(const niah_sequence& s) : s_(&s) {
    const auto& cfg = s.cfg;
    const int d = cfg.head_dim, group = cfg.q_heads / cfg.kv_heads, n = s.tokens, m = s.decode_count();
    for (int l = 0; l < cfg.num_layers; ++l)
      for (int h = 0; h < cfg.kv_heads; ++h) {
        if (cfg.kind(l, h) != head_kind::retrieval) continue;
        // The head's group x decode queries in one pass over its keys and values (each row converted
        // once); every query's sums run over x and t in order, as one query at a time would.
        const int nq = group * m;
        std::vector<query_attention> qs(static_cast<std::size_t>(nq));
        // qt[x * nq + j]: query j's element x, so that the nq dot products of a key run side by side
        // (each still sums its x in order).
        std::vector<double> qt(static_cast<std::size_t>(nq) * d), mx(static_cast<std::size_t>(nq), -1e300),
            z(static_cast<std::size_t>(nq), 0.0), dot(static_cast<std::size_t>(nq)), full(static_cast<std::size_t>(nq) * d),
            rows(static_cast<std::size_t>(kBlock) * d), w(static_cast<std::size_t>(nq) * kBlock);
        for (int j = 0; j < nq; ++j) {  // query j = g * m + answer
          qs[j].layer = l;
          qs[j].head = h;
          qs[j].weight.resize(static_cast<std::size_t>(n));
          const bfloat16* q = &s.decode_queries[l][(static_cast<std::size_t>(h) * group * m + j) * d];
          for (int x = 0; x < d; ++x) qt[static_cast<std::size_t>(x) * nq + j] = to_float(q[x]);
        }
        const double sqrt_d = std::sqrt(static_cast<double>(d));
        for (int t = 0; t < n; ++t) {
          const bfloat16* k = &s.k[l][s.offset(t, h)];
          std::fill(dot.begin(), dot.end(), 0.0);
          for (int x = 0; x < d; ++x) {
            const double kx = to_float(k[x]);
            const double* qx = &qt[static_cast<std::size_t>(x) * nq];
            for (int j = 0; j < nq; ++j) dot[j] += qx[j] * kx;
          }
          for (int j = 0; j < nq; ++j) {
            qs[j].weight[t] = dot[j] / sqrt_d;
            mx[j] = std::max(mx[j], qs[j].weight[t]);
          }
        }
        for (int t0 = 0; t0 < n; t0 += kBlock) {
          const int cnt = std::min(kBlock, n - t0);
          value_rows(l, h, cnt, n - t0, [&](int i) { return t0 + i; }, rows.data());
          for (int j = 0; j < nq; ++j)
            for (int i = 0; i < cnt; ++i) {
              double& wt = qs[j].weight[t0 + i];
              wt = std::exp(wt - mx[j]);
              z[j] += wt;
              w[static_cast<std::size_t>(j) * kBlock + i] = wt;
            }
          add_weighted_rows(w.data(), kBlock, nq, rows.data(), cnt, d, full.data());
        }
        for (int j = 0; j < nq; ++j) qs[j].full.assign(full.begin() + static_cast<std::ptrdiff_t>(j) * d,
                                                       full.begin() + static_cast<std::ptrdiff_t>(j + 1) * d);
        for (int j = 0; j < nq; ++j) {
          double norm = 0;
          for (auto& x : qs[j].full) {
            x /= z[j];
            norm += x * x;
          }
          qs[j].full_norm = std::sqrt(norm);
          queries_.push_back(std::move(qs[j]));
        }
      }
  }

  //! `kept[l]`: the plan of layer `l` (rows = KV heads of this single-sequence cache).
  niah_quality evaluate(const std::vector<const_keep_plan>& kept) const {
    const auto& s = *s_;
    const auto& cfg = s.cfg;
    const int d = cfg.head_dim;
    niah_quality out;
    int answers = 0, answers_kept = 0;
    bool ok = true;
    auto row = [&](int l, int h) { return kept[l].positions + static_cast<std::size_t>(h) * kept[l].capacity; };
    for (int l = 0; l < cfg.num_layers; ++l)
      for (int h = 0; h < cfg.kv_heads; ++h) {
        if (cfg.kind(l, h) != head_kind::retrieval) continue;
        const std::int32_t *b = row(l, h), *e = b + kept[l].counts[h];
        for (const int t : s.answers) {
          const bool in = std::binary_search(b, e, t);
          ++answers;
          answers_kept += in;
          ok = ok && in;
        }
      }
    // The queries of one (layer, head) are consecutive and read the same kept values: each value
    // row is converted once per block of kept tokens and added into every query's output (each
    // query's sums run over the kept tokens in order, as one query at a time would).
    double fid = 0;
    std::vector<double> part, z, rows(static_cast<std::size_t>(kBlock) * d), w;
    for (std::size_t q0 = 0, q1; q0 < queries_.size(); q0 = q1) {
      const int layer = queries_[q0].layer, head = queries_[q0].head;
      for (q1 = q0; q1 < queries_.size() && queries_[q1].layer == layer && queries_[q1].head == head;) ++q1;
      const std::size_t nq = q1 - q0;
      part.assign(nq * static_cast<std::size_t>(d), 0.0);
      z.assign(nq, 0.0);
      w.resize(nq * kBlock);
      const std::int32_t* b = row(layer, head);
      const int count = kept[layer].counts[head];
      for (int i0 = 0; i0 < count; i0 += kBlock) {
        const int cnt = std::min(kBlock, count - i0);
        value_rows(layer, head, cnt, count - i0, [&](int i) { return b[i0 + i]; }, rows.data());
        for (std::size_t j = 0; j < nq; ++j)
          for (int i = 0; i < cnt; ++i) {
            const double wt = queries_[q0 + j].weight[b[i0 + i]];
            z[j] += wt;
            w[j * kBlock + i] = wt;
          }
        add_weighted_rows(w.data(), kBlock, static_cast<int>(nq), rows.data(), cnt, d, part.data());
      }
      for (std::size_t j = 0; j < nq; ++j) {
        const auto& qa = queries_[q0 + j];
        const double* pj = part.data() + j * static_cast<std::size_t>(d);
        double err = 0;
        for (int x = 0; x < d; ++x) {
          const double o = z[j] > 0 ? pj[x] / z[j] : 0.0;
          err += (o - qa.full[x]) * (o - qa.full[x]);
        }
        fid += 1.0 - std::sqrt(err) / qa.full_norm;
      }
    }
    out.success = ok && answers > 0;
    out.recall = answers > 0 ? static_cast<double>(answers_kept) / answers : 0.0;
    out.fidelity = queries_.empty() ? 0.0 : fid / static_cast<double>(queries_.size());
    return out;
  }

 private:
  static constexpr int kBlock = 64;  // tokens whose value rows are converted and added together
  static constexpr int kAhead = 8;   // kept tokens apart: rows are scattered over the pages

  //! The value rows of tokens `token(0..cnt-1)` of (layer, head) as doubles, `rows[i * d + x]`;
  //! `token(i)` is valid for i < `valid` (>= cnt), and the rows kAhead tokens on are prefetched
  //! (kept tokens are scattered over the pages).
  template <class Token>
  void value_rows(int layer, int head, int cnt, int valid, Token token, double* rows) const {
    const auto& s = *s_;
    const int d = s.cfg.head_dim;
    for (int i = 0; i < cnt; ++i) {
#if defined(__GNUC__)
      if (i + kAhead < valid) {
        const bfloat16* ahead = &s.v[layer][s.offset(token(i + kAhead), head)];
        for (int x = 0; x < d; x += 32) __builtin_prefetch(ahead + x);
      }
#endif
      const bfloat16* v = &s.v[layer][s.offset(token(i), head)];
      for (int x = 0; x < d; ++x) rows[static_cast<std::size_t>(i) * d + x] = to_float(v[x]);
    }
  }

  //! `acc[j * d + x] += w[j * w_stride + i] * rows[i * d + x]` for i = 0, 1, ..., cnt - 1 in that
  //! order (the order of one query at a time), with 16 of a query's sums held in registers across
  //! the tokens instead of loaded and stored for each.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__ELF__)
  // Four doubles a lane on AVX2 machines (no FMA: every product and sum rounds as in the default
  // build, so the quality numbers do not depend on the machine).
  __attribute__((target_clones("avx2", "default")))
#endif
  static void add_weighted_rows(const double* w, std::size_t w_stride, int nq, const double* rows, int cnt, int d,
                                double* acc) {
    int x0 = 0;
#if defined(__GNUC__)
    typedef double v4 __attribute__((vector_size(32)));
    // Loads and stores by memcpy, through references (a vector returned by value would change the
    // ABI between the clones).
    for (; x0 + 16 <= d; x0 += 16)
      for (int j = 0; j < nq; ++j) {
        const double* wj = w + static_cast<std::size_t>(j) * w_stride;
        double* aj = acc + static_cast<std::size_t>(j) * d + x0;
        v4 a0, a1, a2, a3, r0, r1, r2, r3;
        std::memcpy(&a0, aj, sizeof a0);
        std::memcpy(&a1, aj + 4, sizeof a1);
        std::memcpy(&a2, aj + 8, sizeof a2);
        std::memcpy(&a3, aj + 12, sizeof a3);
        for (int i = 0; i < cnt; ++i) {
          const v4 wi = {wj[i], wj[i], wj[i], wj[i]};
          const double* r = rows + static_cast<std::size_t>(i) * d + x0;
          std::memcpy(&r0, r, sizeof r0);
          std::memcpy(&r1, r + 4, sizeof r1);
          std::memcpy(&r2, r + 8, sizeof r2);
          std::memcpy(&r3, r + 12, sizeof r3);
          a0 += wi * r0;
          a1 += wi * r1;
          a2 += wi * r2;
          a3 += wi * r3;
        }
        std::memcpy(aj, &a0, sizeof a0);
        std::memcpy(aj + 4, &a1, sizeof a1);
        std::memcpy(aj + 8, &a2, sizeof a2);
        std::memcpy(aj + 12, &a3, sizeof a3);
      }
#endif
    for (int j = 0; j < nq; ++j)
      for (int x = x0; x < d; ++x)
        for (int i = 0; i < cnt; ++i)
          acc[static_cast<std::size_t>(j) * d + x] +=
              w[static_cast<std::size_t>(j) * w_stride + i] * rows[static_cast<std::size_t>(i) * d + x];
  }

  struct query_attention {
    int layer = 0, head = 0;
    std::vector<double> weight;  // [tokens] exp(logit - max)
    std::vector<double> full;    // [head_dim] output over the full cache
    double full_norm = 0;
  };
  const niah_sequence* s_;
  std::vector<query_attention> queries_;
};

}  // namespace kvevict::synthetic

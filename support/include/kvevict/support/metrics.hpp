//! \file support/metrics.hpp
//! NIAH quality metrics of keep plans on a synthetic sequence.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
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
        std::vector<double> qd(static_cast<std::size_t>(nq) * d), mx(static_cast<std::size_t>(nq), -1e300),
            z(static_cast<std::size_t>(nq), 0.0), row(static_cast<std::size_t>(d));
        for (int j = 0; j < nq; ++j) {  // query j = g * m + answer
          qs[j].layer = l;
          qs[j].head = h;
          qs[j].weight.resize(static_cast<std::size_t>(n));
          qs[j].full.assign(static_cast<std::size_t>(d), 0.0);
          const bfloat16* q = &s.decode_queries[l][(static_cast<std::size_t>(h) * group * m + j) * d];
          for (int x = 0; x < d; ++x) qd[static_cast<std::size_t>(j) * d + x] = to_float(q[x]);
        }
        for (int t = 0; t < n; ++t) {
          const bfloat16* k = &s.k[l][s.offset(t, h)];
          for (int x = 0; x < d; ++x) row[x] = to_float(k[x]);
          for (int j = 0; j < nq; ++j) {
            const double* qj = &qd[static_cast<std::size_t>(j) * d];
            double dot = 0;
            for (int x = 0; x < d; ++x) dot += qj[x] * row[x];
            qs[j].weight[t] = dot / std::sqrt(static_cast<double>(d));
            mx[j] = std::max(mx[j], qs[j].weight[t]);
          }
        }
        for (int t = 0; t < n; ++t) {
          const bfloat16* v = &s.v[l][s.offset(t, h)];
          for (int x = 0; x < d; ++x) row[x] = to_float(v[x]);
          for (int j = 0; j < nq; ++j) {
            double& w = qs[j].weight[t];
            w = std::exp(w - mx[j]);
            z[j] += w;
            for (int x = 0; x < d; ++x) qs[j].full[x] += w * row[x];
          }
        }
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
    // row is converted once and added into every query's output (each query's sums run over the
    // kept tokens in order, as one query at a time would).
    double fid = 0;
    std::vector<double> part, z, vrow(static_cast<std::size_t>(d));
    for (std::size_t q0 = 0, q1; q0 < queries_.size(); q0 = q1) {
      const int layer = queries_[q0].layer, head = queries_[q0].head;
      for (q1 = q0; q1 < queries_.size() && queries_[q1].layer == layer && queries_[q1].head == head;) ++q1;
      const std::size_t nq = q1 - q0;
      part.assign(nq * static_cast<std::size_t>(d), 0.0);
      z.assign(nq, 0.0);
      const std::int32_t* b = row(layer, head);
      for (int i = 0; i < kept[layer].counts[head]; ++i) {
        const int t = b[i];
        const bfloat16* v = &s.v[layer][s.offset(t, head)];
        for (int x = 0; x < d; ++x) vrow[x] = to_float(v[x]);
        for (std::size_t j = 0; j < nq; ++j) {
          const double w = queries_[q0 + j].weight[t];
          double* pj = part.data() + j * static_cast<std::size_t>(d);
          z[j] += w;
          for (int x = 0; x < d; ++x) pj[x] += w * vrow[x];
        }
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

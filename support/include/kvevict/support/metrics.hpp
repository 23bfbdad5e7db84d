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
        for (int g = 0; g < group; ++g)
          for (int j = 0; j < m; ++j) {
            query_attention qa;
            qa.layer = l;
            qa.head = h;
            qa.weight.resize(static_cast<std::size_t>(n));
            const bfloat16* q =
                &s.decode_queries[l][((static_cast<std::size_t>(h) * group + g) * m + j) * d];
            double m = -1e300;
            for (int t = 0; t < n; ++t) {
              double dot = 0;
              const bfloat16* k = &s.k[l][s.offset(t, h)];
              for (int x = 0; x < d; ++x) dot += static_cast<double>(to_float(q[x])) * to_float(k[x]);
              qa.weight[t] = dot / std::sqrt(static_cast<double>(d));
              m = std::max(m, qa.weight[t]);
            }
            qa.full.assign(static_cast<std::size_t>(d), 0.0);
            double z = 0;
            for (int t = 0; t < n; ++t) {
              qa.weight[t] = std::exp(qa.weight[t] - m);
              z += qa.weight[t];
              const bfloat16* v = &s.v[l][s.offset(t, h)];
              for (int x = 0; x < d; ++x) qa.full[x] += qa.weight[t] * to_float(v[x]);
            }
            double norm = 0;
            for (auto& x : qa.full) {
              x /= z;
              norm += x * x;
            }
            qa.full_norm = std::sqrt(norm);
            queries_.push_back(std::move(qa));
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
    double fid = 0;
    std::vector<double> part(static_cast<std::size_t>(d));
    for (const auto& qa : queries_) {
      std::fill(part.begin(), part.end(), 0.0);
      double z = 0;
      const std::int32_t* b = row(qa.layer, qa.head);
      for (int i = 0; i < kept[qa.layer].counts[qa.head]; ++i) {
        const int t = b[i];
        z += qa.weight[t];
        const bfloat16* v = &s.v[qa.layer][s.offset(t, qa.head)];
        for (int x = 0; x < d; ++x) part[x] += qa.weight[t] * to_float(v[x]);
      }
      double err = 0;
      for (int x = 0; x < d; ++x) {
        const double o = z > 0 ? part[x] / z : 0.0;
        err += (o - qa.full[x]) * (o - qa.full[x]);
      }
      fid += 1.0 - std::sqrt(err) / qa.full_norm;
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

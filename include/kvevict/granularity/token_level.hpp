//! \file granularity/token_level.hpp
//! Token granularity: each token is a unit; protected top-k per (sequence, KV head).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../keep_plan.hpp"
#include "../select/row_rule.hpp"
#include "../select/top_k.hpp"
#include "../signals.hpp"
#include "../status.hpp"

namespace kvevict {

//! Token-level selection: per KV head, the protected tokens plus the highest-scored others up to
//! the head's budget (ties to the lower position). Exactly `min(budget, n)` tokens are kept.
//! Granularity interface: `validate(cache, signals)`, `scratch_bytes(cache, max_len)` and
//! `select(...)` filling one plan row per KV head of a sequence; optionally `select_head(...)`
//! filling one (seq, head) row, which `plan` then runs on several threads.
struct token_level {
  template <class Cache, class T>
  status validate(const Cache&, const signals<T>&) const {
    return ok_status();
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int max_len) const {
    return sizeof(std::int32_t) * static_cast<std::size_t>(max_len);
  }
  //! \param scores  [kv_heads, stride]  \param budgets [kv_heads]
  template <class Cache, class T>
  void select(const Cache& cache, const signals<T>& sig, int seq, const row_rule& rule, const float* scores,
              std::size_t stride, const int* budgets, keep_plan plan, void* scratch) const {
    for (int h = 0; h < cache.num_kv_heads(); ++h) select_head(cache, sig, seq, h, rule, scores, stride, budgets, plan, scratch);
  }
  //! One head's row (heads are independent: `plan` may run them on several threads).
  template <class Cache, class T>
  void select_head(const Cache& cache, const signals<T>&, int seq, int h, const row_rule& rule, const float* scores,
                   std::size_t stride, const int* budgets, keep_plan plan, void* scratch) const {
    const int r = seq * cache.num_kv_heads() + h;
    plan.counts[r] = host_backend::select_protected_top_k(scores + static_cast<std::size_t>(h) * stride,
                                                          cache.seq_len(seq, h), budgets[h], rule.sinks, rule.window,
                                                          plan.row(r), static_cast<std::int32_t*>(scratch));
  }
};

}  // namespace kvevict

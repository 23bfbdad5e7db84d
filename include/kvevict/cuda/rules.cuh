//! \file cuda/rules.cuh
//! The selector's per-sequence rules (budget, sinks, window, kept whole) evaluated on the device,
//! and their checks. Not API.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../detail/row_rules.hpp"
#include "../select/budget.hpp"
#include "../select/row_rule.hpp"
#include "../select/selector.hpp"
#include "../signals.hpp"
#include "backend.cuh"

namespace kvevict::cuda_backend {

//! The selector's rule sources (select/row_rule.hpp) and its budget, trivially copyable: `info`
//! gives a sequence's `row_rule` on the device, computed as the host computes it.
struct seq_rules {
  row_rule_source src;
  bool pyramid;
  pyramid_budget pyr;
  bool adaptive;          //!< Ada-KV's per-head budgets (`adaptive_budget`)
  double floor_fraction;  //!< adaptive_budget's
  //! Each (sequence, head) row's budget, once the per-head allocation wrote it (cuda/adaptive.cuh);
  //! null otherwise. Read only for sequences not kept whole.
  const std::int32_t* row_budgets;

  template <class Cache>
  __device__ row_rule info(const Cache& c, int s) const {
    return pyramid ? src.of(pyr, c, s) : src.of(uniform_budget{}, c, s);
  }
};

template <class Budget, class T>
seq_rules make_rules(const selector<Budget>& sel, const signals<T>& sig) {
  static_assert(std::is_same_v<Budget, uniform_budget> || std::is_same_v<Budget, pyramid_budget> ||
                    std::is_same_v<Budget, adaptive_budget>,
                "kvevict::cuda: this budget has no CUDA implementation (uniform, pyramid and adaptive budgets have)");
  seq_rules r{};
  r.src = rule_source(sel, sig);
  r.pyramid = std::is_same_v<Budget, pyramid_budget>;
  if constexpr (std::is_same_v<Budget, pyramid_budget>) r.pyr = sel.budget;
  r.adaptive = std::is_same_v<Budget, adaptive_budget>;
  if constexpr (std::is_same_v<Budget, adaptive_budget>) r.floor_fraction = sel.budget.floor_fraction;
  return r;
}

//! The checks `plan` makes of sequence `s`'s parameters (as the host backend orders them) and of
//! the plan's capacity.
template <class Cache>
__device__ void check_sequence_rules(const Cache& c, const seq_rules& rules, int s, bool needs_window_queries,
                                     int capacity, int* word) {
  const row_rule si = rules.info(c, s);
  raise(word, detail::check_rule(si, rules.src.window));
  for (int h = 0; h < c.num_kv_heads(); ++h) {
    const int n = c.seq_len(s, h);
    raise(word, detail::check_window_fits(si, n, rules.src.seq_windows != nullptr));
    // The most a head may keep: the budget, or with per-head budgets the sequence's whole budget
    // (the host's `max_budget(entries, kv_heads)`).
    const long long most = rules.adaptive ? static_cast<long long>(si.budget) * c.num_kv_heads() : si.budget;
    const long long kept = n < most ? n : most;
    if (kept > capacity) raise(word, ck_plan_capacity_kept);
  }
  raise(word, detail::check_window_queries(si, needs_window_queries));
}

}  // namespace kvevict::cuda_backend

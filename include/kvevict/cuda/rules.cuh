//! \file cuda/rules.cuh
//! The selector's per-sequence rules (budget, sinks, window, kept whole) evaluated on the device,
//! and their checks. Not API.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../detail/row_rules.hpp"
#include "../select/budget.hpp"
#include "../select/selector.hpp"
#include "../signals.hpp"
#include "backend.cuh"

namespace kvevict::cuda_backend {

//! One sequence's selector parameters after the overrides of `signals`.
struct seq_info {
  int entries, sinks, window;
  int budget;       //!< entries this layer keeps per head (the layer budget for pyramid budgets)
  bool kept_whole;  //!< no head holds more than `budget` tokens: keep all, score nothing
};

//! Trivially copyable copy of the selector and the per-sequence override pointers.
struct seq_rules {
  int entries, sinks, window;  // the selector's
  bool pyramid;
  pyramid_budget pyr;
  int layer, num_layers;
  const std::int32_t* seq_budgets;
  const std::int32_t* seq_sinks;
  const std::int32_t* seq_windows;

  template <class Cache>
  __device__ seq_info info(const Cache& c, int s) const {
    seq_info si;
    si.entries = seq_budgets ? seq_budgets[s] : entries;
    si.sinks = seq_sinks ? seq_sinks[s] : sinks;
    si.window = seq_windows ? seq_windows[s] : window;
    si.budget = pyramid ? pyr.layer_budget(si.entries, layer, num_layers, si.sinks, si.window) : si.entries;
    si.kept_whole = detail::longest_head(c, s) <= si.budget;
    return si;
  }
};

template <class Budget, class T>
seq_rules make_rules(const selector<Budget>& sel, const signals<T>& sig) {
  static_assert(std::is_same_v<Budget, uniform_budget> || std::is_same_v<Budget, pyramid_budget>,
                "kvevict::cuda: per-head adaptive budgets (adaptive_budget) have no CUDA implementation yet; "
                "use uniform_budget or pyramid_budget with kvevict::cuda, or plan on kvevict::host");
  seq_rules r{};
  r.entries = sel.budget.entries;
  r.sinks = sel.sinks;
  r.window = sel.window;
  r.pyramid = std::is_same_v<Budget, pyramid_budget>;
  if constexpr (std::is_same_v<Budget, pyramid_budget>) r.pyr = sel.budget;
  r.layer = sig.layer;
  r.num_layers = sig.num_layers;
  r.seq_budgets = sig.seq_budgets;
  r.seq_sinks = sig.seq_sinks;
  r.seq_windows = sig.seq_windows;
  return r;
}

//! The checks `plan` makes of sequence `s`'s parameters (as the host backend orders them) and of
//! the plan's capacity.
template <class Cache>
__device__ void check_sequence_rules(const Cache& c, const seq_rules& rules, int s, bool needs_window_queries,
                                     int capacity, int* word) {
  const seq_info si = rules.info(c, s);
  if (si.sinks < 0) raise(word, dc_seq_sinks);
  if (si.window < 0 || si.window > rules.window) raise(word, dc_seq_windows_range);
  if (si.entries < si.sinks + si.window) raise(word, dc_seq_budgets_small);
  for (int h = 0; h < c.num_kv_heads(); ++h) {
    const int n = c.seq_len(s, h);
    if (si.window > n) raise(word, rules.seq_windows ? dc_window_longer_override : dc_window_longer);
    const int kept = n < si.budget ? n : si.budget;
    if (kept > capacity) raise(word, dc_plan_capacity);
  }
  if (needs_window_queries && si.window < 1 && !si.kept_whole) raise(word, dc_window_empty);
}

}  // namespace kvevict::cuda_backend

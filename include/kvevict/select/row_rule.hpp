//! \file select/row_rule.hpp
//! The selection rules of one sequence's rows, computed once from the selector and the signals'
//! per-sequence overrides, on the host and the device alike, and handed to the budget and the
//! granularity (instead of their former positional `entries, sinks, window, layer, num_layers`).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "../config.hpp"
#include "../detail/row_rules.hpp"

namespace kvevict {

//! What selection obeys for the rows (KV heads) of one sequence.
struct row_rule {
  int entries;     //!< the budget's `entries`, or the sequence's `signals.seq_budgets` override
  int sinks;       //!< protected first tokens (the selector's, or `signals.seq_sinks`)
  int window;      //!< protected last tokens (the selector's, or `signals.seq_windows`)
  int layer;       //!< `signals.layer`
  int num_layers;  //!< `signals.num_layers`
  int budget;      //!< the most a head keeps before any per-head allocation: the layer's budget
  int longest;     //!< the most tokens any KV head of the sequence holds

  //! No head holds more than it may keep: the sequence is kept whole, without scoring.
  KVEVICT_HOST_DEVICE bool kept_whole() const { return longest <= budget; }
  //! The compressible range `[lo, hi)` of a row of `n` tokens (after the sinks, before the window).
  KVEVICT_HOST_DEVICE detail::token_range range(int n) const { return detail::compressible_range(n, sinks, window); }
};

namespace detail {
//! Whether budget `B` has a layer budget (`int layer_budget(const row_rule&) const`), as per-layer
//! budgets do; without one a layer's budget is `entries`.
template <class B, class = void>
struct has_layer_budget : std::false_type {};
template <class B>
struct has_layer_budget<B, std::void_t<decltype(int(std::declval<const B&>().layer_budget(std::declval<const row_rule&>())))>>
    : std::true_type {};
}  // namespace detail

//! The sources of a `row_rule`: the selector's parameters and the signals' per-sequence override
//! arrays (device pointers on the CUDA backend). Trivially copyable, so it travels to kernels.
struct row_rule_source {
  int entries, sinks, window;                  //!< the selector's
  const std::int32_t* seq_budgets = nullptr;   //!< [num_seqs] or null
  const std::int32_t* seq_sinks = nullptr;     //!< [num_seqs] or null
  const std::int32_t* seq_windows = nullptr;   //!< [num_seqs] or null
  int layer = 0, num_layers = 1;

  //! Sequence `s`'s rule over `cache` (any view with `num_kv_heads` and `seq_len(seq, head)`),
  //! `budget` giving the layer's budget.
  template <class Budget, class Cache>
  KVEVICT_HOST_DEVICE row_rule of(const Budget& budget, const Cache& cache, int s) const {
    row_rule r;
    r.entries = seq_budgets ? seq_budgets[s] : entries;
    r.sinks = seq_sinks ? seq_sinks[s] : sinks;
    r.window = seq_windows ? seq_windows[s] : window;
    r.layer = layer;
    r.num_layers = num_layers;
    if constexpr (detail::has_layer_budget<Budget>::value)
      r.budget = budget.layer_budget(r);
    else
      r.budget = r.entries;
    r.longest = detail::longest_head(cache, s);
    return r;
  }
};

//! The rule sources of a selector (`sinks`, `window`, `budget.entries`) and signals (`layer`,
//! `num_layers`, `seq_budgets`, `seq_sinks`, `seq_windows`).
template <class Selector, class Signals>
row_rule_source rule_source(const Selector& sel, const Signals& sig) {
  return {sel.budget.entries, sel.sinks,     sel.window,    sig.seq_budgets, sig.seq_sinks,
          sig.seq_windows,    sig.layer,     sig.num_layers};
}

}  // namespace kvevict

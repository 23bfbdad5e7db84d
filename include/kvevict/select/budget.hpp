//! \file select/budget.hpp
//! Budget allocators: how many entries each (sequence, KV head) of a layer keeps.
//!
//! A budget counts every kept entry, protected sinks and recent window included. `entries` is
//! the allocator's own member, or a sequence's override (`signals.seq_budgets`). Allocator
//! interface (policy/hooks.hpp): `validate(sinks, window)`, `max_budget(entries, kv_heads)` (the
//! most one head may keep), `scratch_bytes(kv_heads, max_len)` and `allocate(rule, ...)` (host),
//! writing one budget per KV head of a sequence; optionally `layer_budget(rule)`, what every head
//! of the layer keeps before per-head allocation (`entries` without it).
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <math.h>
#include <cstddef>
#include <cstdint>

#include "../config.hpp"
#include "../detail/adaptive_alloc.hpp"
#include "../status.hpp"
#include "row_rule.hpp"
#include "top_k.hpp"

namespace kvevict {

//! The same budget for every layer and KV head.
struct uniform_budget {
  static constexpr bool per_head = false;
  int entries = 128;  //!< kept entries per (sequence, KV head)

  status validate(int sinks, int window) const {
    if (entries < 0) return make_error(errc::invalid_argument, "selector.budget.entries", "must be >= 0");
    if (entries < sinks + window)
      return make_error(errc::budget_too_small, "selector.budget.entries",
                        "below the protected tokens (sinks + window)");
    return ok_status();
  }
  static int max_budget(int entries_, int /*kv_heads*/) { return entries_; }
  std::size_t scratch_bytes(int, int) const { return 0; }
  //! \param budgets [kv_heads] output
  void allocate(const row_rule& rule, const float*, std::size_t, const int*, int kv_heads, int* budgets, void*) const {
    for (int h = 0; h < kv_heads; ++h) budgets[h] = rule.budget;
  }
};

//! Per-layer budgets that shrink linearly with depth (PyramidKV, arXiv 2406.02069).
//!
//! With `Bc = entries - sinks - window` (the average compressible budget), the bottom layer gets
//! `max = 2 Bc - min` and the top layer `min = floor(Bc / beta)`, layers in between on the line:
//! layer `l` of `L` keeps `sinks + window + floor(max - l (max - min) / (L - 1))` (`entries` when
//! `L == 1`). Average over layers: `entries`, up to the floor.
struct pyramid_budget {
  static constexpr bool per_head = false;
  int entries = 128;   //!< average kept entries per (sequence, KV head) over layers
  double beta = 20.0;  //!< bottom-to-top ratio control, as in PyramidKV (> 0)

  status validate(int sinks, int window) const {
    if (entries < sinks + window)
      return make_error(errc::budget_too_small, "selector.budget.entries",
                        "below the protected tokens (sinks + window)");
    if (!(beta >= 1.0)) return make_error(errc::invalid_argument, "selector.budget.beta", "must be >= 1");
    return ok_status();
  }
  int layer_budget(int layer, int num_layers, int sinks, int window) const {
    return layer_budget(entries, layer, num_layers, sinks, window);
  }
  KVEVICT_HOST_DEVICE int layer_budget(int entries_, int layer, int num_layers, int sinks, int window) const {
    if (num_layers <= 1) return entries_;
    // In double, clamped to int: also defined for parameters not yet validated (a row_rule is
    // computed before its checks).
    const double bc = static_cast<double>(entries_) - sinks - window;
    const double lo = floor(bc / beta), hi = 2.0 * bc - lo;  // ::floor: also callable on the device
    const double b = hi - layer * (hi - lo) / (num_layers - 1);
    const double v = static_cast<double>(sinks) + window + floor(b + 1e-9);
    return v >= INT_MAX ? INT_MAX : v <= INT_MIN ? INT_MIN : static_cast<int>(v);
  }
  //! The layer's budget under `rule` (its entries, sinks, window, layer and num_layers).
  KVEVICT_HOST_DEVICE int layer_budget(const row_rule& rule) const {
    return layer_budget(rule.entries, rule.layer, rule.num_layers, rule.sinks, rule.window);
  }
  static int max_budget(int entries_, int /*kv_heads*/) { return 2 * entries_; }
  std::size_t scratch_bytes(int, int) const { return 0; }
  void allocate(const row_rule& rule, const float*, std::size_t, const int*, int kv_heads, int* budgets, void*) const {
    for (int h = 0; h < kv_heads; ++h) budgets[h] = rule.budget;
  }
};

//! Per-head adaptive budgets (Ada-KV, arXiv 2407.11550) with a floor.
//!
//! The layer's compressible budget `H x (entries - sinks - window)` is shared by its `H` KV heads:
//! each head first gets `floor(floor_fraction x (entries - sinks - window))` (Ada-KV's safeguard),
//! the rest goes to the highest compressible-range scores over all heads of the sequence (ties:
//! lower head, then lower position), no head past its length. Head `h` then keeps `sinks + window
//! + its share`. Needs a cache whose rows are (sequence, head) to compact.
struct adaptive_budget {
  static constexpr bool per_head = true;
  int entries = 128;            //!< average kept entries per (sequence, KV head)
  double floor_fraction = 0.2;  //!< share of the compressible budget every head is guaranteed, in [0, 1]

  status validate(int sinks, int window) const {
    if (entries < sinks + window)
      return make_error(errc::budget_too_small, "selector.budget.entries",
                        "below the protected tokens (sinks + window)");
    if (!(floor_fraction >= 0.0 && floor_fraction <= 1.0))
      return make_error(errc::invalid_argument, "selector.budget.floor_fraction", "must lie in [0, 1]");
    return ok_status();
  }
  static int max_budget(int entries_, int kv_heads) { return entries_ * kv_heads; }
  std::size_t scratch_bytes(int kv_heads, int max_len) const {
    return sizeof(std::int64_t) * static_cast<std::size_t>(kv_heads) * static_cast<std::size_t>(max_len) +
           sizeof(int) * static_cast<std::size_t>(kv_heads);
  }
  //! \param scores [kv_heads, stride]  \param lens [kv_heads]  \param budgets [kv_heads] output
  void allocate(const row_rule& rule, const float* scores, std::size_t stride, const int* lens, int kv_heads,
                int* budgets, void* scratch) const {
    const int bc = rule.entries - rule.sinks - rule.window;
    const int guaranteed = detail::ada_guaranteed(floor_fraction, bc);  // the device's rounding too
    std::int64_t* cand = static_cast<std::int64_t*>(scratch);  // (head << 32 | position), compressible ranges
    std::size_t nc = 0;
    for (int h = 0; h < kv_heads; ++h) {
      const auto [lo, hi] = rule.range(lens[h]);
      for (int t = lo; t < hi; ++t) cand[nc++] = static_cast<std::int64_t>(h) << 32 | static_cast<std::int64_t>(t);
    }
    int* granted = reinterpret_cast<int*>(cand + nc);
    std::int64_t pool = static_cast<std::int64_t>(kv_heads) * bc;
    for (int h = 0; h < kv_heads; ++h) {
      const int n = lens[h];
      const auto [lo, hi] = rule.range(n);
      granted[h] = std::min(guaranteed, hi - lo);
      budgets[h] = lo + (n - hi) + granted[h];
      pool -= granted[h];
    }
    auto score_of = [&](std::int64_t c) {
      return scores[static_cast<std::size_t>(c >> 32) * stride + (c & 0xffffffff)];
    };
    std::sort(cand, cand + nc, [&](std::int64_t a, std::int64_t b) {
      const float sa = score_of(a), sb = score_of(b);
      return sa > sb || (sa == sb && a < b);
    });
    // Restricted to one head, the global order is that head's own order: its first `granted`
    // candidates are the guaranteed share; later ones compete for the pool.
    for (std::size_t i = 0; i < nc && pool > 0; ++i) {
      const int h = static_cast<int>(cand[i] >> 32);
      if (granted[h] > 0) {
        --granted[h];
      } else {
        ++budgets[h];
        --pool;
      }
    }
  }
};

}  // namespace kvevict

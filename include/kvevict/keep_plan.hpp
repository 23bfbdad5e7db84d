//! \file keep_plan.hpp
//! The keep plan (per (sequence, KV head), the sorted positions that survive eviction), the
//! outputs of `compact`, and owning buffers sized from the cache so that the easy path is the
//! right one.
//!
//! Every output array carries its size, and every front door checks it before writing
//! (`errc::buffer_too_small`, naming the field): a buffer sized for one sequence and used with a
//! batch is an error, not an overrun.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "config.hpp"
#include "detail/row_rules.hpp"
#include "signals.hpp"
#include "status.hpp"

namespace kvevict {

//! Rows of a keep plan (and entries of `compact_result::new_lens`) for a cache: one per
//! (sequence, KV head), `num_seqs() * num_kv_heads()` (0 for a view with a non-positive shape).
template <class Cache>
int plan_rows(const Cache& cache) {
  return cache.num_seqs() > 0 && cache.num_kv_heads() > 0 ? cache.num_seqs() * cache.num_kv_heads() : 0;
}

namespace detail {
//! The longest (sequence, head) of the batch, in tokens.
template <class Cache>
int max_row_len(const Cache& c) {
  int m = 0;
  for (int s = 0; s < c.num_seqs(); ++s) m = std::max(m, longest_head(c, s));
  return m;
}
}  // namespace detail

//! Plan capacity (entries per row) that always suffices for `plan(host, policy, cache, ...)`
//! without per-sequence budgets: the largest per-head budget, at most the longest row, at least 1.
//! Reads the cache's lengths: call it on a cache that `validate_cache` accepts.
template <class Policy, class Cache>
int plan_capacity(const Policy& p, const Cache& cache) {
  using budget = typename Policy::selector_type::budget_type;
  return std::max(
      1, std::min(budget::max_budget(p.selector.budget.entries, cache.num_kv_heads()), detail::max_row_len(cache)));
}

//! Plan capacity with the per-sequence budgets of `sig` (a sequence kept whole needs its length).
template <class Policy, class Cache, class T>
int plan_capacity(const Policy& p, const Cache& cache, const signals<T>& sig) {
  using budget = typename Policy::selector_type::budget_type;
  if (sig.seq_budgets == nullptr) return plan_capacity(p, cache);
  int cap = 1;
  for (int s = 0; s < cache.num_seqs(); ++s) {
    int n = 0;
    for (int h = 0; h < cache.num_kv_heads(); ++h) n = std::max(n, cache.seq_len(s, h));
    cap = std::max(cap, std::min(n, budget::max_budget(sig.seq_budgets[s], cache.num_kv_heads())));
  }
  return cap;
}

//! Caller-owned keep plan. Row `r = seq * kv_heads + head` holds `counts[r]` strictly increasing
//! positions in `positions[r * capacity ...]`. Produced by `plan`, consumed by `compact`.
//!
//! `rows` says how many rows `positions` and `counts` hold; the front doors reject a plan with
//! fewer rows than the cache has (sequence, head) pairs (`plan.rows`, `buffer_too_small`), so a
//! plan built by hand must set it: `keep_plan{positions, counts, capacity, rows}`.
template <class Index>
struct basic_keep_plan {
  Index* positions = nullptr;  // [rows, capacity]
  Index* counts = nullptr;     // [rows]
  int capacity = 0;            //!< entries per row (>= plan_capacity(policy, cache, signals))
  int rows = 0;                //!< rows the arrays hold (>= plan_rows(cache) = num_seqs x kv_heads)

  KVEVICT_HOST_DEVICE Index* row(int r) const { return positions + static_cast<std::size_t>(r) * capacity; }
};

using keep_plan = basic_keep_plan<std::int32_t>;
using const_keep_plan = basic_keep_plan<const std::int32_t>;

inline const_keep_plan as_const(keep_plan p) { return const_keep_plan{p.positions, p.counts, p.capacity, p.rows}; }

//! Owning storage for a keep plan (tests, examples, convenience). `for_cache` sizes it for a
//! policy, cache and signals; the sizes travel with `view()`.
//!
//! \code
//! auto kept = kvevict::keep_plan_buffer::for_cache(policy, cache, sig);
//! auto st = kvevict::plan(kvevict::host, policy, cache, sig, kept.view());
//! \endcode
struct keep_plan_buffer {
  std::vector<std::int32_t> positions, counts;
  int capacity = 0;

  keep_plan_buffer() = default;
  keep_plan_buffer(int rows, int capacity_)
      : positions(static_cast<std::size_t>(std::max(rows, 0)) * static_cast<std::size_t>(std::max(capacity_, 0))),
        counts(static_cast<std::size_t>(std::max(rows, 0))),
        capacity(std::max(capacity_, 0)) {}

  //! A buffer with `plan_rows(cache)` rows of `plan_capacity(policy, cache, sig)` entries. Reads
  //! the cache's lengths (and `sig.seq_budgets`): the cache must be one `validate_cache` accepts.
  template <class Policy, class Cache, class T>
  static keep_plan_buffer for_cache(const Policy& policy, const Cache& cache, const signals<T>& sig) {
    return keep_plan_buffer(plan_rows(cache), plan_capacity(policy, cache, sig));
  }
  //! As above, for signals without per-sequence budgets.
  template <class Policy, class Cache>
  static keep_plan_buffer for_cache(const Policy& policy, const Cache& cache) {
    return keep_plan_buffer(plan_rows(cache), plan_capacity(policy, cache));
  }

  int rows() const { return static_cast<int>(counts.size()); }
  keep_plan view() { return keep_plan{positions.data(), counts.data(), capacity, rows()}; }
  const_keep_plan const_view() const { return const_keep_plan{positions.data(), counts.data(), capacity, rows()}; }
  //! Kept positions of row `r` (= seq * kv_heads + head).
  std::vector<std::int32_t> kept(int r) const {
    const auto b = positions.begin() + static_cast<std::ptrdiff_t>(r) * capacity;
    return std::vector<std::int32_t>(b, b + counts[static_cast<std::size_t>(r)]);
  }
};

namespace detail {
//! The plan's arrays: set, with at least one row per (sequence, head). O(1), reads no table;
//! `plan` and `compact` check it on every backend before they write.
template <class Cache, class Index>
status check_plan_arrays(const Cache& cache, basic_keep_plan<Index> plan) {
  if (plan.positions == nullptr || plan.counts == nullptr)
    return make_error(errc::invalid_argument, "plan", "null positions or counts");
  if (plan.capacity < 0) return make_error(errc::invalid_argument, "plan.capacity", "must be >= 0");
  if (plan.rows < plan_rows(cache))
    return make_error(errc::buffer_too_small, "plan.rows",
                      "fewer rows than the cache's (sequence, KV head) pairs (size the plan with "
                      "keep_plan_buffer::for_cache or plan_rows(cache))");
  return ok_status();
}
//! `compact`'s new-length output: set, with an entry per (sequence, head). O(1).
template <class Cache>
status check_new_lens(const Cache& cache, const std::int32_t* new_lens, int capacity) {
  if (new_lens == nullptr) return make_error(errc::invalid_argument, "result.new_lens", "null output");
  if (capacity < plan_rows(cache))
    return make_error(
        errc::buffer_too_small, "result.new_lens",
        "new_lens_capacity is below the cache's (sequence, KV head) pairs (size it with plan_rows(cache))");
  return ok_status();
}
}  // namespace detail

//! Caller-owned outputs of `compact`: new lengths per (sequence, KV head) and the page ids that no
//! longer hold any token (in sequence, head, logical-page order), to hand back to the allocator.
//! Each array carries its capacity; `compact` rejects one too small (`buffer_too_small`) before
//! it writes anything.
struct compact_result {
  std::int32_t* new_lens = nullptr;     // [new_lens_capacity]
  int new_lens_capacity = 0;            //!< entries of new_lens (>= plan_rows(cache))
  std::int32_t* freed_pages = nullptr;  // [freed_capacity]
  int freed_capacity = 0;               //!< entries of freed_pages (>= the pages this compaction frees)
  int num_freed = 0;                    //!< written by compact
};

}  // namespace kvevict

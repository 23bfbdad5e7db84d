//! \file keep_plan.hpp
//! The keep plan: per (sequence, KV head), the sorted positions that survive eviction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "config.hpp"

namespace kvevict {

//! Caller-owned keep plan. Row `r = seq * kv_heads + head` holds `counts[r]` strictly increasing
//! positions in `positions[r * capacity ...]`. Produced by `plan`, consumed by `compact`.
template <class Index>
struct basic_keep_plan {
  Index* positions = nullptr;  // [num_seqs, kv_heads, capacity]
  Index* counts = nullptr;     // [num_seqs, kv_heads]
  int capacity = 0;            // entries per row (>= the largest per-head budget)

  KVEVICT_HOST_DEVICE Index* row(int r) const { return positions + static_cast<std::size_t>(r) * capacity; }
};

using keep_plan = basic_keep_plan<std::int32_t>;
using const_keep_plan = basic_keep_plan<const std::int32_t>;

inline const_keep_plan as_const(keep_plan p) { return const_keep_plan{p.positions, p.counts, p.capacity}; }

//! Owning storage for a keep plan (tests, examples, convenience).
struct keep_plan_buffer {
  std::vector<std::int32_t> positions, counts;
  int capacity = 0;

  keep_plan_buffer() = default;
  keep_plan_buffer(int rows, int capacity_)
      : positions(static_cast<std::size_t>(rows) * static_cast<std::size_t>(capacity_)),
        counts(static_cast<std::size_t>(rows)),
        capacity(capacity_) {}

  keep_plan view() { return keep_plan{positions.data(), counts.data(), capacity}; }
  const_keep_plan const_view() const { return const_keep_plan{positions.data(), counts.data(), capacity}; }
  //! Kept positions of row `r` (= seq * kv_heads + head).
  std::vector<std::int32_t> kept(int r) const {
    const auto b = positions.begin() + static_cast<std::ptrdiff_t>(r) * capacity;
    return std::vector<std::int32_t>(b, b + counts[static_cast<std::size_t>(r)]);
  }
};

//! Caller-owned outputs of `compact`: new lengths per (sequence, KV head) and the page ids that no
//! longer hold any token (in sequence, head, logical-page order), to hand back to the allocator.
struct compact_result {
  std::int32_t* new_lens = nullptr;     // [num_seqs, kv_heads]
  std::int32_t* freed_pages = nullptr;  // [freed_capacity]
  int freed_capacity = 0;
  int num_freed = 0;  //!< written by compact
};

}  // namespace kvevict

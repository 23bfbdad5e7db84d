//! \file algorithm/compact.hpp
//! Front door `compact`: move kept K and V to the front of each row, in place, and free pages.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "../backend.hpp"
#include "../cache/validate.hpp"
#include "../concepts.hpp"
#include "../detail/checks.hpp"
#include "../detail/parallel.hpp"
#include "../keep_plan.hpp"
#include "../status.hpp"

namespace kvevict {

namespace detail {

//! Bytes of K/V rows a compaction moves per thread it starts (below, it runs on the caller's).
inline constexpr std::int64_t compact_bytes_per_thread = std::int64_t{1} << 21;

template <class Cache>
int pages_for(const Cache& c, int len) {
  return (len + c.page_size() - 1) / c.page_size();
}

//! Number of (seq, head) page lists: one per sequence, or one per (sequence, head).
template <class Cache>
int page_list_heads(const Cache& c) {
  return Cache::per_head_rows ? c.num_kv_heads() : 1;
}

//! Moving rows in place must not touch another row: every page may belong to one list only
//! (checked with `workspace`, one byte per page).
template <class Cache>
status check_pages_unshared(const Cache& cache, void* workspace, std::size_t workspace_bytes) {
  if (!frees_pages<Cache>::value) return ok_status();
  if (workspace_bytes < static_cast<std::size_t>(cache.num_pages()) || workspace == nullptr)
    return make_error(errc::buffer_too_small, "workspace", "smaller than compact_workspace_bytes()");
  unsigned char* seen = static_cast<unsigned char*>(workspace);
  std::memset(seen, 0, static_cast<std::size_t>(cache.num_pages()));
  for (int s = 0; s < cache.num_seqs(); ++s)
    for (int h = 0; h < page_list_heads(cache); ++h)
      for (int lp = 0, np = cache.num_row_pages(s, h); lp < np; ++lp) {
        const int pg = cache.page(s, h, lp);
        if (seen[pg]) return status_of(ck_page_listed_twice);
        seen[pg] = 1;
      }
  return ok_status();
}

template <class Cache>
status validate_compact_inputs(const Cache& cache, const_keep_plan plan, const compact_result& out, void* workspace,
                               std::size_t workspace_bytes) {
  static_assert(is_paged_kv_cache_v<Cache>,
                "kvevict: Cache does not model the paged KV cache contract (see concepts.hpp)");
  static_assert(is_mutable_cache_v<Cache>,
                "kvevict: compact moves K and V in place: pass a view over mutable keys and values (a view over "
                "const elements serves plan and score only)");
  KVEVICT_TRY(validate_cache(cache));
  KVEVICT_TRY(check_plan_arrays(cache, plan));
  KVEVICT_TRY(check_new_lens(cache, out.new_lens, out.new_lens_capacity));
  const int kvh = cache.num_kv_heads();
  std::int64_t freed = 0;
  for (int s = 0; s < cache.num_seqs(); ++s) {
    for (int h = 0; h < kvh; ++h) {
      const int r = s * kvh + h, n = cache.seq_len(s, h), c = plan.counts[r];
      KVEVICT_TRY(status_of(check_plan_count(c, n, plan.capacity, !Cache::per_head_rows, plan.counts[s * kvh])));
      const std::int32_t* row = plan.row(r);
      for (int j = 0; j < c; ++j) KVEVICT_TRY(status_of(check_plan_position(row[j], j, j > 0 ? row[j - 1] : 0, n)));
      if ((Cache::per_head_rows || h == 0) && frees_pages<Cache>::value)
        freed += cache.num_row_pages(s, h) - pages_for(cache, c);
    }
  }
  if (freed > 0 && (out.freed_pages == nullptr || out.freed_capacity < freed)) return status_of(ck_freed_capacity);
  return check_pages_unshared(cache, workspace, workspace_bytes);
}

//! Moves row `r`'s kept K and V to its first slots, in order (hazard-free: `positions[j] >= j`).
template <class Cache>
void compact_row(const Cache& cache, const_keep_plan plan, int r) {
  const int kvh = cache.num_kv_heads(), ps = cache.page_size();
  const int s = r / kvh, h = r % kvh, c = plan.counts[r];
  const std::size_t row_bytes = sizeof(typename Cache::value_type) * static_cast<std::size_t>(cache.head_dim());
  const std::int32_t* row = plan.row(r);
  for (int j = 0; j < c; ++j) {
    const int src = row[j];
    if (src == j) continue;
    const int sp = cache.page(s, h, src / ps), dp = cache.page(s, h, j / ps);
    std::memcpy(cache.key(dp, j % ps, h), cache.key(sp, src % ps, h), row_bytes);
    std::memcpy(cache.value(dp, j % ps, h), cache.value(sp, src % ps, h), row_bytes);
    move_token_scales(cache, dp, j % ps, sp, src % ps, h);
  }
}

//! Threads for moving `rows` rows of `tokens` token rows in all: `exec`'s where the moves reach
//! compact_bytes_per_thread, else one.
template <class Cache>
int move_threads(host_t exec, const Cache& cache, std::int64_t tokens) {
  const std::int64_t bytes = tokens * static_cast<std::int64_t>(cache.head_dim()) *
                             static_cast<std::int64_t>(sizeof(typename Cache::value_type));
  return bytes >= compact_bytes_per_thread ? exec.thread_count() : 1;
}

//! Writes the new lengths and the freed pages (sequence, head, logical-page order) of a
//! compaction by `plan`.
template <class Cache>
void write_compact_result(const Cache& cache, const_keep_plan plan, compact_result& out) {
  const int kvh = cache.num_kv_heads();
  out.num_freed = 0;
  for (int s = 0; s < cache.num_seqs(); ++s)
    for (int h = 0; h < kvh; ++h) {
      const int r = s * kvh + h;
      if (frees_pages<Cache>::value && (Cache::per_head_rows || h == 0))
        for (int lp = pages_for(cache, plan.counts[r]), np = cache.num_row_pages(s, h); lp < np; ++lp)
          out.freed_pages[out.num_freed++] = cache.page(s, h, lp);
      out.new_lens[r] = plan.counts[r];
    }
}

//! The moves of a validated compaction: `before_row(r)` then row `r`'s compaction, rows in
//! parallel (their pages are disjoint, validated, or, for a shared page table, the heads of a
//! sequence write their own slots), on `exec`'s threads when the kept rows plus `extra_tokens`
//! (rows `before_row` copies) reach compact_bytes_per_thread; then the result.
template <class Cache, class BeforeRow>
void compact_validated(host_t exec, const Cache& cache, const_keep_plan plan, compact_result& out,
                       std::int64_t extra_tokens, BeforeRow before_row) {
  const int rows = plan_rows(cache);
  std::int64_t tokens = extra_tokens;
  for (int r = 0; r < rows; ++r) tokens += plan.counts[r];
  parallel_for(move_threads(exec, cache, tokens), rows, [&](int r, int) {
    before_row(r);
    compact_row(cache, plan, r);
  });
  write_compact_result(cache, plan, out);
}

}  // namespace detail

//! Upper bound of the pages one compaction of `cache` can free: the pages its page lists hold
//! (0 for a view that frees none, or one `validate_cache` rejects). Reads the page table.
template <class Cache>
int max_freed_pages(const Cache& cache) {
  if (!frees_pages<Cache>::value || !validate_cache(cache).ok()) return 0;
  std::int64_t total = 0;
  for (int s = 0; s < cache.num_seqs(); ++s)
    for (int h = 0; h < detail::page_list_heads(cache); ++h) total += cache.num_row_pages(s, h);
  return static_cast<int>(std::min<std::int64_t>(total, cache.num_pages()));
}

//! Owning storage for `compact`'s outputs, sized from the cache: `plan_rows(cache)` new lengths
//! and room for every page the cache's page lists hold. Pass `result` to `compact` / `evict`.
//! Movable, not copyable (`result` points into the vectors).
//!
//! \code
//! auto out = kvevict::compact_result_buffer::for_cache(cache);
//! auto st = kvevict::evict(kvevict::host, policy, cache, sig, kept.view(), out.result);
//! // out.new_lens[r], out.freed() (the page ids to return to the allocator)
//! \endcode
struct compact_result_buffer {
  std::vector<std::int32_t> new_lens, freed_pages;
  compact_result result;

  compact_result_buffer(int rows, int freed_capacity)
      : new_lens(static_cast<std::size_t>(std::max(rows, 0))),
        freed_pages(static_cast<std::size_t>(std::max(freed_capacity, 0))),
        result{new_lens.data(), static_cast<int>(new_lens.size()), freed_pages.data(),
               static_cast<int>(freed_pages.size()), 0} {}
  compact_result_buffer(const compact_result_buffer&) = delete;
  compact_result_buffer& operator=(const compact_result_buffer&) = delete;
  compact_result_buffer(compact_result_buffer&& o) noexcept
      : new_lens(std::move(o.new_lens)), freed_pages(std::move(o.freed_pages)), result(o.result) {
    result.new_lens = new_lens.data();
    result.freed_pages = freed_pages.data();
  }

  template <class Cache>
  static compact_result_buffer for_cache(const Cache& cache) {
    return compact_result_buffer(plan_rows(cache), max_freed_pages(cache));
  }
  //! The freed page ids of the last compaction.
  std::vector<std::int32_t> freed() const {
    return std::vector<std::int32_t>(freed_pages.begin(), freed_pages.begin() + result.num_freed);
  }
};

//! Bytes of workspace `compact(host, ...)` needs (one byte per page, for the aliasing check).
template <class Cache>
std::size_t compact_workspace_bytes(host_t, const Cache& cache) {
  return frees_pages<Cache>::value ? static_cast<std::size_t>(cache.num_pages() > 0 ? cache.num_pages() : 0) : 0;
}

//! Compacts the cache in place: for every (sequence, KV head), the K and V of the kept positions
//! move to slots `0 .. count-1`, in their original order. Writes the new lengths and the ids of
//! the pages past each new length (in sequence, head, logical-page order) to `out`; the engine
//! updates its own page table and returns those pages to its allocator.
//!
//! Hazard-free in place: kept positions are increasing and `positions[j] >= j`, so slot `j` is
//! written only after the token it held was read. No K/V-sized scratch.
//!
//! Validates everything first (plan sorted, in range; counts equal across heads for a shared
//! page table; no page listed twice; `out` large enough): on error nothing is written.
//! Cost: O(kept tokens x heads x head_dim) moves, on `exec`'s threads (rows in parallel) when they
//! move at least 2 MiB; O(pages) checks.
template <class Cache>
status compact(host_t exec, const Cache& cache, const_keep_plan plan, compact_result& out, void* workspace,
               std::size_t workspace_bytes) {
  KVEVICT_TRY(detail::validate_compact_inputs(cache, plan, out, workspace, workspace_bytes));
  detail::compact_validated(exec, cache, plan, out, 0, [](int) {});
  return ok_status();
}

//! Convenience overload that allocates its workspace.
template <class Cache>
status compact(host_t exec, const Cache& cache, const_keep_plan plan, compact_result& out) {
  std::vector<unsigned char> ws(compact_workspace_bytes(exec, cache) + 1);
  return compact(exec, cache, plan, out, ws.data(), ws.size());
}

// A call without the backend tag fails with a sentence saying so.
KVEVICT_CATCH_MISSING_BACKEND(status, compact, "cache, plan, result")
KVEVICT_CATCH_MISSING_BACKEND(std::size_t, compact_workspace_bytes, "cache")

}  // namespace kvevict

//! \file algorithm/tier.hpp
//! Evict to a slower tier and bring back: `compact` that copies the evicted K/V rows, with their
//! original positions, into caller-owned memory, and `restore`, which merges chosen positions back
//! into their rows in order (for engines that offload cold tokens and recall them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../backend.hpp"
#include "../keep_plan.hpp"
#include "../status.hpp"
#include "compact.hpp"

namespace kvevict {

//! Caller-owned store of evicted K/V rows (host memory, pinned or not; the library never
//! allocates it). Plan row `r = seq * kv_heads + h` owns tier rows `[row_offsets[r],
//! row_offsets[r + 1])`: the tokens of that (sequence, head) that `compact` evicted, in increasing
//! original position, `positions[i]` being the position of tier row `i`, whose key is `keys[i *
//! head_dim ..]` and value `values[i * head_dim ..]`, bytes as they were in the cache; with a cache
//! that holds per-(token, head) scales, `key_scales[i]` / `value_scales[i]` are that row's (needed
//! then, unused otherwise).
//!
//! `compact` writes every field but the pointers and capacities; `restore` reads it.
template <class T>
struct evicted_rows {
  T* keys = nullptr;                    // [capacity, head_dim]
  T* values = nullptr;                  // [capacity, head_dim]
  std::int32_t* positions = nullptr;    // [capacity]
  std::int64_t* row_offsets = nullptr;  // [row_offsets_capacity], plan_rows(cache) + 1 used
  std::int64_t capacity = 0;            //!< token rows keys, values and positions hold
  int row_offsets_capacity = 0;         //!< entries of row_offsets (>= plan_rows(cache) + 1)
  float* key_scales = nullptr;          // [capacity] when the cache holds key token scales
  float* value_scales = nullptr;        // [capacity] when the cache holds value token scales
};

//! Owning storage for an `evicted_rows` of `capacity` token rows (host memory): for tests,
//! examples and engines that offload to ordinary host memory.
template <class T>
struct evicted_rows_buffer {
  std::vector<T> keys, values;
  std::vector<std::int32_t> positions;
  std::vector<std::int64_t> row_offsets;
  std::vector<float> key_scales, value_scales;  // one per token row (used with a token-scaled cache)
  evicted_rows<T> tier;

  evicted_rows_buffer(int rows, std::int64_t capacity, int head_dim)
      : keys(static_cast<std::size_t>(capacity > 0 ? capacity : 0) * static_cast<std::size_t>(head_dim)),
        values(keys.size()),
        positions(static_cast<std::size_t>(capacity > 0 ? capacity : 0)),
        row_offsets(static_cast<std::size_t>(rows > 0 ? rows + 1 : 1)),
        key_scales(positions.size()),
        value_scales(positions.size()),
        tier{keys.data(),
             values.data(),
             positions.data(),
             row_offsets.data(),
             static_cast<std::int64_t>(positions.size()),
             static_cast<int>(row_offsets.size()),
             key_scales.data(),
             value_scales.data()} {}
  evicted_rows_buffer(const evicted_rows_buffer&) = delete;
  evicted_rows_buffer& operator=(const evicted_rows_buffer&) = delete;
};

//! Token rows a compaction of `cache` by `plan` evicts: the sum over (sequence, head) of
//! `seq_len - counts` (size `evicted_rows::capacity` with it). Reads only what `compact` checks;
//! -1 for a plan whose counts lie outside [0, seq_len].
template <class Cache>
std::int64_t evicted_row_count(const Cache& cache, const_keep_plan plan) {
  std::int64_t total = 0;
  for (int s = 0; s < cache.num_seqs(); ++s)
    for (int h = 0; h < cache.num_kv_heads(); ++h) {
      const int n = cache.seq_len(s, h), c = plan.counts[s * cache.num_kv_heads() + h];
      if (c < 0 || c > n) return -1;
      total += n - c;
    }
  return total;
}

namespace detail {

//! The tier's scale arrays, where `cache` holds token scales and `need` rows move through the tier.
template <class Cache, class T>
status check_tier_scales(const Cache& cache, const evicted_rows<T>& tier, std::int64_t need) {
  return status_of(check_tier_scales(need, holds_token_scales(cache, true), tier.key_scales != nullptr,
                                     holds_token_scales(cache, false), tier.value_scales != nullptr));
}
//! The tier's row offsets for `rows` plan rows (a compaction's check, both backends).
template <class T>
status check_tier_row_offsets(const evicted_rows<T>& tier, int rows) {
  if (tier.row_offsets == nullptr || tier.row_offsets_capacity < rows + 1)
    return make_error(errc::buffer_too_small, "tier.row_offsets", "needs plan_rows(cache) + 1 entries");
  return ok_status();
}
//! The tier's arrays for `rows` plan rows and `need` token rows.
template <class T>
status check_tier(const evicted_rows<T>& tier, int rows, std::int64_t need) {
  KVEVICT_TRY(check_tier_row_offsets(tier, rows));
  if (tier.capacity < need) return status_of(ck_tier_capacity);
  if (need > 0 && (tier.keys == nullptr || tier.values == nullptr || tier.positions == nullptr))
    return make_error(errc::invalid_argument, "tier", "null keys, values or positions");
  return ok_status();
}

//! Copies row `r`'s evicted tokens (those not in the plan row, in order) to the tier, from the
//! tier row `row_offsets[r]` on. Runs before the row is compacted.
template <class Cache, class T>
void offload_row(const Cache& cache, const_keep_plan plan, int r, const evicted_rows<T>& tier) {
  const int kvh = cache.num_kv_heads(), ps = cache.page_size(), d = cache.head_dim();
  const int s = r / kvh, h = r % kvh, n = cache.seq_len(s, h), c = plan.counts[r];
  const std::int32_t* kept = plan.row(r);
  std::int64_t i = tier.row_offsets[r];
  for (int t = 0, j = 0; t < n; ++t) {
    if (j < c && kept[j] == t) {
      ++j;
      continue;
    }
    const int pg = cache.page(s, h, t / ps);
    std::memcpy(tier.keys + i * d, cache.key(pg, t % ps, h), sizeof(T) * static_cast<std::size_t>(d));
    std::memcpy(tier.values + i * d, cache.value(pg, t % ps, h), sizeof(T) * static_cast<std::size_t>(d));
    if (const auto* sc = token_scale_ptr(cache, true, pg, t % ps, h)) tier.key_scales[i] = *sc;
    if (const auto* sc = token_scale_ptr(cache, false, pg, t % ps, h)) tier.value_scales[i] = *sc;
    tier.positions[i++] = t;
  }
}

//! `restore`'s scalar checks (both backends): the three plans' arrays and rows, the tier's row
//! offsets.
template <class T>
status check_restore_arrays(int rows, const_keep_plan current, const evicted_rows<T>& tier, const_keep_plan request,
                            const_keep_plan merged) {
  const const_keep_plan plans[3] = {current, request, merged};
  const char* names[3][2] = {{"current", "current.rows"}, {"request", "request.rows"}, {"merged", "merged.rows"}};
  for (int i = 0; i < 3; ++i) {
    if (plans[i].positions == nullptr || plans[i].counts == nullptr)
      return make_error(errc::invalid_argument, names[i][0], "null positions or counts");
    if (plans[i].rows < rows)
      return make_error(errc::buffer_too_small, names[i][1], "fewer rows than the cache's (sequence, KV head) pairs");
  }
  if (tier.row_offsets == nullptr || tier.row_offsets_capacity < rows + 1)
    return make_error(errc::invalid_argument, "tier.row_offsets", "needs plan_rows(cache) + 1 entries");
  return ok_status();
}

//! The device's offload (cuda/tier.cuh) visits a row's slots in chunks `[t0, t0 + chunk)`: the
//! plan entries below `t0` are `[0, kb)`, and those in the chunk lie among `[kb, ke)`.
struct chunk_kept {
  int kb, ke;
};
KVEVICT_HOST_DEVICE chunk_kept kept_around_chunk(const std::int32_t* pos, int count, int t0, int chunk) {
  const int kb = static_cast<int>(lower_bound_of(pos, 0, count, t0));
  return {kb, count - kb < chunk ? count : kb + chunk};
}
//! Whether slot `t` of the chunk is evicted (not among the plan entries `[k.kb, k.ke)`).
KVEVICT_HOST_DEVICE bool evicted_in_chunk(const std::int32_t* pos, chunk_kept k, int t) {
  const std::int64_t j = lower_bound_of(pos, k.kb, k.ke, t);
  return j == k.ke || pos[j] != t;
}
//! The tier row of evicted slot `t` of the chunk from `t0`: the row's first tier row, the evicted
//! slots before the chunk (`t0 - kb`), then `before` evicted slots of the chunk before `t`.
KVEVICT_HOST_DEVICE std::int64_t offload_index(std::int64_t first, int t0, chunk_kept k, int before) {
  return first + (t0 - k.kb) + before;
}

}  // namespace detail

//! `compact` that first copies every evicted K/V row, with its original position, to `tier`
//! (caller-owned; `evicted_row_count(cache, plan)` rows), then compacts as `compact` does. The
//! tier then holds each (sequence, head)'s evicted tokens in increasing position: with the plan,
//! which says which positions stayed, `restore` can bring any of them back.
//!
//! Validates everything first (as `compact`, and the tier's sizes): on error nothing is written,
//! neither the cache nor the tier.
//! Cost: `compact`'s, plus one copy of every evicted row (on `exec`'s threads, rows in parallel,
//! when the rows moved and copied reach 2 MiB).
template <class Cache>
status compact(host_t exec, const Cache& cache, const_keep_plan plan, compact_result& out,
               const evicted_rows<typename Cache::value_type>& tier, void* workspace, std::size_t workspace_bytes) {
  KVEVICT_TRY(detail::validate_compact_inputs(cache, plan, out, workspace, workspace_bytes));
  const int rows = plan_rows(cache);
  const std::int64_t need = evicted_row_count(cache, plan);
  KVEVICT_TRY(detail::check_tier(tier, rows, need));
  KVEVICT_TRY(detail::check_tier_scales(cache, tier, need));
  const int kvh = cache.num_kv_heads();
  tier.row_offsets[0] = 0;
  for (int r = 0; r < rows; ++r)
    tier.row_offsets[r + 1] = tier.row_offsets[r] + cache.seq_len(r / kvh, r % kvh) - plan.counts[r];
  // each row's evicted tokens are read before its moves overwrite them
  detail::compact_validated(exec, cache, plan, out, need, [&](int r) { detail::offload_row(cache, plan, r, tier); });
  return ok_status();
}

//! Convenience overload of the tier `compact` that allocates its workspace.
template <class Cache>
status compact(host_t exec, const Cache& cache, const_keep_plan plan, compact_result& out,
               const evicted_rows<typename Cache::value_type>& tier) {
  std::vector<unsigned char> ws(compact_workspace_bytes(exec, cache) + 1);
  return compact(exec, cache, plan, out, tier, ws.data(), ws.size());
}

//! Brings evicted tokens back: for every (sequence, head) row, the positions `request` lists
//! (strictly increasing, each held by `tier` for that row) are merged with the row's current
//! tokens, whose positions `current` lists (the plan the row was compacted with, or a previous
//! `restore`'s `merged`), so that the row again holds its tokens in increasing position.
//! `merged` receives the row's positions after the call.
//!
//! Before calling, grow each row to its restored length `current.counts[r] + request.counts[r]`,
//! as for any append (allocate the pages, extend the page table, set the length): `cache`
//! describes the grown rows (so, for a cache whose heads share the page table, every head of a
//! sequence holds and restores the same number of tokens). The tier is only read (the caller
//! frees or reuses it).
//!
//! Validates everything first (lengths, sorted positions, each requested position in the tier and
//! not already in the row, `merged`'s size, no page listed twice): on error nothing is written.
//! Hazard-free in place: slots are filled from the end, and a current token only moves up.
//! Cost: O(tokens of the rows x head_dim) moves, O(requested x log tier row) lookups.
//!
//! \param workspace  compact_workspace_bytes(host, cache) bytes (the page check)
template <class Cache>
status restore(host_t exec, const Cache& cache, const_keep_plan current,
               const evicted_rows<typename Cache::value_type>& tier, const_keep_plan request, keep_plan merged,
               void* workspace, std::size_t workspace_bytes) {
  static_assert(is_paged_kv_cache_v<Cache>,
                "kvevict: Cache does not model the paged KV cache contract (see concepts.hpp)");
  static_assert(is_mutable_cache_v<Cache>, "kvevict: restore writes K and V: pass a view over mutable keys and values");
  KVEVICT_TRY(validate_cache(cache));
  const int rows = plan_rows(cache), kvh = cache.num_kv_heads();
  KVEVICT_TRY(detail::check_restore_arrays(rows, current, tier, request, as_const(merged)));
  const bool tier_arrays = tier.positions != nullptr && tier.keys != nullptr && tier.values != nullptr;
  for (int r = 0; r < rows; ++r) {
    const int s = r / kvh, h = r % kvh, c = current.counts[r], m = request.counts[r];
    const std::int64_t b = tier.row_offsets[r], e = tier.row_offsets[r + 1];
    KVEVICT_TRY(detail::status_of(detail::check_restore_row(c, current.capacity, m, request.capacity, !Cache::per_head_rows,
                                                    current.counts[s * kvh], cache.seq_len(s, h), merged.capacity, b,
                                                    e, tier.capacity, tier_arrays)));
    const std::int32_t* cur = current.row(r);
    const std::int32_t* req = request.row(r);
    for (int j = 1; j < c; ++j) KVEVICT_TRY(detail::status_of(detail::check_restore_current(cur, j)));
    for (int k = 0; k < m; ++k)
      KVEVICT_TRY(detail::status_of(detail::check_restore_request(cur, c, req, k, tier.positions, b, e)));
  }
  std::int64_t requested = 0;
  for (int r = 0; r < rows; ++r) requested += request.counts[r];
  KVEVICT_TRY(detail::check_tier_scales(cache, tier, requested));
  KVEVICT_TRY(detail::check_pages_unshared(cache, workspace, workspace_bytes));

  std::int64_t moved = 0;
  for (int r = 0; r < rows; ++r) moved += current.counts[r] + request.counts[r];
  detail::parallel_for(detail::move_threads(exec, cache, moved), rows, [&](int r, int) {
    const int s = r / kvh, h = r % kvh, ps = cache.page_size(), d = cache.head_dim();
    const std::size_t row_bytes = sizeof(typename Cache::value_type) * static_cast<std::size_t>(d);
    const std::int32_t* cur = current.row(r);
    const std::int32_t* req = request.row(r);
    std::int32_t* out = merged.row(r);
    std::int64_t t_end = tier.row_offsets[r + 1];  // tier rows of this row at or past it hold larger positions
    int i = current.counts[r] - 1, k = request.counts[r] - 1;
    for (int j = i + k + 1; j >= 0 && k >= 0; --j) {
      const int dp = cache.page(s, h, j / ps);
      if (i >= 0 && cur[i] > req[k]) {  // a current token moves up from slot i to slot j > i
        const int sp = cache.page(s, h, i / ps);
        std::memcpy(cache.key(dp, j % ps, h), cache.key(sp, i % ps, h), row_bytes);
        std::memcpy(cache.value(dp, j % ps, h), cache.value(sp, i % ps, h), row_bytes);
        detail::move_token_scales(cache, dp, j % ps, sp, i % ps, h);
        out[j] = cur[i--];
      } else {  // the requested token comes back from the tier
        const std::int64_t lo = detail::lower_bound_of(tier.positions, tier.row_offsets[r], t_end, req[k]);
        t_end = lo;
        std::memcpy(cache.key(dp, j % ps, h), tier.keys + lo * d, row_bytes);
        std::memcpy(cache.value(dp, j % ps, h), tier.values + lo * d, row_bytes);
        if (auto* sc = detail::token_scale_ptr(cache, true, dp, j % ps, h)) *sc = tier.key_scales[lo];
        if (auto* sc = detail::token_scale_ptr(cache, false, dp, j % ps, h)) *sc = tier.value_scales[lo];
        out[j] = req[k--];
      }
    }
    for (int j = 0; j <= i; ++j) out[j] = cur[j];  // the tokens below every restored one stay put
    merged.counts[r] = current.counts[r] + request.counts[r];
  });
  return ok_status();
}

//! Convenience overload of `restore` that allocates its workspace.
template <class Cache>
status restore(host_t exec, const Cache& cache, const_keep_plan current,
               const evicted_rows<typename Cache::value_type>& tier, const_keep_plan request, keep_plan merged) {
  std::vector<unsigned char> ws(compact_workspace_bytes(exec, cache) + 1);
  return restore(exec, cache, current, tier, request, merged, ws.data(), ws.size());
}

}  // namespace kvevict

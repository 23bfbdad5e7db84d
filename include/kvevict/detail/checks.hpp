//! \file detail/checks.hpp
//! The check catalogue: every check that reads the caller's tables or per-sequence arrays, written
//! once as a host-device predicate returning a code, and one table mapping each code to the
//! status it reports (error code, argument, message). The host backend's validation and the CUDA
//! backend's check kernels call the same predicates and report through the same table, so their
//! messages cannot drift. Checks of scalars and pointers (validate_cache_shape, the policies'
//! parameters) run on the host for every backend and need no code. Not API.
#pragma once

#include <cstdint>

#include "../config.hpp"
#include "../select/row_rule.hpp"
#include "../status.hpp"

namespace kvevict::detail {

//! Check codes. On the device several problems may be found at once; the lowest code is
//! reported, so the report does not depend on scheduling. (An inline namespace, so that a backend
//! can bring the codes alone into its own namespace.)
inline namespace check_codes {
enum check_code : int {
  ck_ok = 0,
  ck_seq_len_negative,
  ck_table_row_too_short,
  ck_table_page_out_of_range,
  ck_indices_page_out_of_range,
  ck_indptr_start,
  ck_indptr_order,
  ck_indptr_total,
  ck_last_page_len,
  ck_dense_len,
  ck_shard_len_range,
  ck_shard_lens_differ,
  ck_stride_short,
  ck_seq_sinks,
  ck_seq_windows_range,
  ck_seq_budgets_small,
  ck_window_longer,
  ck_window_longer_override,
  ck_window_empty,
  ck_plan_capacity,
  ck_plan_capacity_kept,
  ck_precomputed_stride,
  ck_sums_stride,
  ck_sums_non_finite,
  ck_token_ids_stride,
  ck_gathered_non_finite,
  ck_score_non_finite,
  ck_plan_count,
  ck_plan_uneven,
  ck_plan_position,
  ck_plan_order,
  ck_page_listed_twice,
  ck_freed_capacity,
  ck_tier_capacity,
  ck_tier_key_scales,
  ck_tier_value_scales,
  ck_restore_current_count,
  ck_restore_request_count,
  ck_restore_uneven,
  ck_restore_len,
  ck_restore_merged,
  ck_restore_tier_row,
  ck_restore_current_order,
  ck_restore_request_order,
  ck_restore_request_held,
  ck_restore_request_missing,
  ck_count_,
};
}  // namespace check_codes

//! What a code reports.
struct check_entry {
  errc code;
  const char* argument;
  const char* detail;
};
//! One entry per code, in the enum's order.
inline constexpr check_entry check_catalogue[] = {
    {errc::ok, "", ""},  // ck_ok
    {errc::out_of_range, "cache.seq_lens", "negative sequence length"},
    {errc::shape_mismatch, "cache.seq_lens", "sequence needs more pages than the block table row holds"},
    {errc::out_of_range, "cache.block_table", "page id out of range"},
    {errc::out_of_range, "cache.indices", "page id out of range"},
    {errc::invalid_argument, "cache.indptr", "indptr[0] must be 0"},
    {errc::invalid_argument, "cache.indptr", "indptr must be non-decreasing"},
    {errc::out_of_range, "cache.indptr",
     "lists more pages than num_pages (the CUDA backend sizes its scratch by num_pages)"},
    {errc::out_of_range, "cache.last_page_len", "must lie in [1, page_size] for a sequence with pages"},
    {errc::out_of_range, "cache.seq_lens", "length outside [0, capacity]"},
    {errc::out_of_range, "shard.seq_lens", "negative sequence length"},
    {errc::shape_mismatch, "shard.seq_lens", "differs from the shard's own lengths"},
    {errc::buffer_too_small, "stride", "shorter than a sequence"},
    {errc::invalid_argument, "signals.seq_sinks", "must be >= 0"},
    {errc::out_of_range, "signals.seq_windows", "must lie in [0, selector.window]"},
    {errc::budget_too_small, "signals.seq_budgets", "below the sequence's protected tokens (sinks + window)"},
    {errc::out_of_range, "selector.window", "longer than a sequence (its window queries must lie in it)"},
    {errc::out_of_range, "signals.seq_windows", "longer than a sequence (its window queries must lie in it)"},
    {errc::invalid_argument, "signals.seq_windows", "window attention needs at least one query"},
    {errc::buffer_too_small, "plan.capacity", "smaller than plan_capacity(policy, cache, signals)"},
    {errc::buffer_too_small, "plan.capacity", "smaller than a row's kept count"},
    {errc::shape_mismatch, "scorer.stride", "shorter than a sequence"},
    {errc::shape_mismatch, "signals.sums_stride", "shorter than a sequence of the cache"},
    {errc::non_finite, "signals.attention_sums", "NaN or infinite attention sum"},
    {errc::shape_mismatch, "signals.token_ids_stride", "shorter than a sequence"},
    {errc::non_finite, "scores", "a token score is NaN or infinite"},
    {errc::non_finite, "cache.k / signals.queries", "a token score is NaN or infinite"},
    {errc::out_of_range, "plan.counts", "count outside [0, min(seq_len, capacity)]"},
    {errc::shape_mismatch, "plan.counts",
     "heads of a sequence keep different counts; a shared page table needs a uniform budget (use a "
     "(sequence, head)-row cache for per-head budgets)"},
    {errc::out_of_range, "plan.positions", "position outside the sequence"},
    {errc::invalid_argument, "plan.positions", "positions must be strictly increasing"},
    {errc::invalid_argument, "cache", "a page is listed twice (shared pages must be copied before compaction)"},
    {errc::buffer_too_small, "result.freed_pages", "too small for the pages this compaction frees"},
    {errc::buffer_too_small, "tier.capacity",
     "smaller than the rows this compaction evicts (evicted_row_count(cache, plan))"},
    {errc::invalid_argument, "tier.key_scales", "null, and the cache holds per-token key scales"},
    {errc::invalid_argument, "tier.value_scales", "null, and the cache holds per-token value scales"},
    {errc::out_of_range, "current.counts", "count outside [0, capacity]"},
    {errc::out_of_range, "request.counts", "count outside [0, capacity]"},
    {errc::shape_mismatch, "current.counts",
     "heads of a sequence hold different counts; a shared page table holds the same for each"},
    {errc::shape_mismatch, "cache.seq_lens",
     "a row's length must be its restored length, current.counts + request.counts (grow the row before "
     "restoring)"},
    {errc::buffer_too_small, "merged.capacity", "smaller than a restored row"},
    {errc::invalid_argument, "tier", "row offsets outside its capacity, or null arrays"},
    {errc::invalid_argument, "current.positions", "positions must be strictly increasing"},
    {errc::invalid_argument, "request.positions", "positions must be strictly increasing"},
    {errc::invalid_argument, "request.positions", "a position the row already holds"},
    {errc::invalid_argument, "request.positions", "a position the tier does not hold for its row"},
};
static_assert(sizeof(check_catalogue) / sizeof(check_catalogue[0]) == ck_count_, "one catalogue entry per check code");

//! The status a code in `[ck_ok, ck_count_)` reports (ok for ck_ok).
inline status status_of(int code) {
  if (code == ck_ok) return ok_status();
  const check_entry& e = check_catalogue[code];
  return make_error(e.code, e.argument, e.detail);
}

// ---- the predicates: each returns ck_ok or the code of the problem it finds ----

//! A row of a block table: its length, and whether `stride` pages hold it.
KVEVICT_HOST_DEVICE int check_row_length(std::int64_t len, int stride, int page_size) {
  if (len < 0) return ck_seq_len_negative;
  return (len + page_size - 1) / page_size > stride ? ck_table_row_too_short : ck_ok;
}
//! A page id of a block table (`csr`: of a CSR `indices` array) in `[0, num_pages)`.
KVEVICT_HOST_DEVICE int check_page_id(std::int32_t id, int num_pages, bool csr = false) {
  if (id >= 0 && id < num_pages) return ck_ok;
  return csr ? ck_indices_page_out_of_range : ck_table_page_out_of_range;
}
//! A CSR table's `indptr[0]`.
KVEVICT_HOST_DEVICE int check_indptr_start(std::int32_t first) { return first != 0 ? ck_indptr_start : ck_ok; }
//! A CSR sequence of `pages` pages (`indptr[s + 1] - indptr[s]`) ending with `last_len` tokens.
KVEVICT_HOST_DEVICE int check_csr_sequence(std::int64_t pages, std::int32_t last_len, int page_size) {
  if (pages < 0) return ck_indptr_order;
  return pages > 0 && (last_len < 1 || last_len > page_size) ? ck_last_page_len : ck_ok;
}
//! A dense view's sequence length.
KVEVICT_HOST_DEVICE int check_dense_length(std::int32_t len, int capacity) {
  return len < 0 || len > capacity ? ck_dense_len : ck_ok;
}

//! A sequence's rule after the signals' overrides: sinks, window (at most the selector's), budget.
KVEVICT_HOST_DEVICE int check_rule(const row_rule& r, int selector_window) {
  if (r.sinks < 0) return ck_seq_sinks;
  if (r.window < 0 || r.window > selector_window) return ck_seq_windows_range;
  return r.entries < r.sinks + r.window ? ck_seq_budgets_small : ck_ok;
}
//! The window of a sequence fits a row of `n` tokens (`overridden`: it came from seq_windows).
KVEVICT_HOST_DEVICE int check_window_fits(const row_rule& r, int n, bool overridden) {
  if (r.window <= n) return ck_ok;
  return overridden ? ck_window_longer_override : ck_window_longer;
}
//! A window-attention scorer has a query, unless the sequence is kept whole (not scored).
KVEVICT_HOST_DEVICE int check_window_queries(const row_rule& r, bool needs_window_queries) {
  return needs_window_queries && r.window < 1 && !r.kept_whole() ? ck_window_empty : ck_ok;
}
//! A per-sequence array of `stride` entries holds a row of `n` tokens (`code`: which array).
KVEVICT_HOST_DEVICE int check_stride(int n, std::int64_t stride, int code) { return n > stride ? code : ck_ok; }

//! A plan row's count: in `[0, min(n, capacity)]`, and (`uniform`: a view with one page table per
//! sequence) equal to the sequence's first row's.
KVEVICT_HOST_DEVICE int check_plan_count(int count, int n, int capacity, bool uniform, int first_count) {
  if (count < 0 || count > n || count > capacity) return ck_plan_count;
  return uniform && count != first_count ? ck_plan_uneven : ck_ok;
}
//! Entry `j` of a plan row of a row of `n` tokens (`prev` the entry before it, when j > 0).
KVEVICT_HOST_DEVICE int check_plan_position(std::int32_t pos, int j, std::int32_t prev, int n) {
  if (pos < 0 || pos >= n) return ck_plan_position;
  return j > 0 && pos <= prev ? ck_plan_order : ck_ok;
}

//! The first index of the sorted `a[b, e)` whose value is not below `v` (`e` if none).
KVEVICT_HOST_DEVICE std::int64_t lower_bound_of(const std::int32_t* a, std::int64_t b, std::int64_t e, std::int32_t v) {
  while (b < e) {
    const std::int64_t m = b + (e - b) / 2;
    if (a[m] < v)
      b = m + 1;
    else
      e = m;
  }
  return b;
}

//! A tier that receives or returns `need` token rows has the scale arrays the cache's per-token
//! scales need (`*_held`: the cache holds them; `*_given`: the tier's array is non-null).
KVEVICT_HOST_DEVICE int check_tier_scales(std::int64_t need, bool key_held, bool key_given, bool value_held,
                                          bool value_given) {
  if (need > 0 && key_held && !key_given) return ck_tier_key_scales;
  return need > 0 && value_held && !value_given ? ck_tier_value_scales : ck_ok;
}
//! A row of `restore`: its current count `c` (of `current_capacity`) and requested count `m` (of
//! `request_capacity`), equal to the sequence's first row's `first_count` when `uniform` (one
//! page table per sequence); its length `n`, which must be the restored length `c + m`, within
//! `merged_capacity`; its tier rows `[b, e)` within `tier_capacity` (`tier_arrays`: positions, keys
//! and values given), when it requests any.
KVEVICT_HOST_DEVICE int check_restore_row(int c, int current_capacity, int m, int request_capacity, bool uniform,
                                          int first_count, int n, int merged_capacity, std::int64_t b, std::int64_t e,
                                          std::int64_t tier_capacity, bool tier_arrays) {
  if (c < 0 || c > current_capacity) return ck_restore_current_count;
  if (m < 0 || m > request_capacity) return ck_restore_request_count;
  if (uniform && c != first_count) return ck_restore_uneven;
  if (n != c + m) return ck_restore_len;
  if (c + m > merged_capacity) return ck_restore_merged;
  return m > 0 && (b < 0 || e < b || e > tier_capacity || !tier_arrays) ? ck_restore_tier_row : ck_ok;
}
//! Entry `j` of a restore row's current positions (`cur`), after the one before it.
KVEVICT_HOST_DEVICE int check_restore_current(const std::int32_t* cur, int j) {
  return j > 0 && cur[j] <= cur[j - 1] ? ck_restore_current_order : ck_ok;
}
//! Entry `k` of a restore row's request (`req`): after the one before it, not among the row's
//! current positions `cur[0, c)`, and among the row's tier positions `tier_positions[b, e)`.
KVEVICT_HOST_DEVICE int check_restore_request(const std::int32_t* cur, int c, const std::int32_t* req, int k,
                                              const std::int32_t* tier_positions, std::int64_t b, std::int64_t e) {
  if (k > 0 && req[k] <= req[k - 1]) return ck_restore_request_order;
  const std::int64_t j = lower_bound_of(cur, 0, c, req[k]);
  if (j < c && cur[j] == req[k]) return ck_restore_request_held;
  const std::int64_t at = lower_bound_of(tier_positions, b, e, req[k]);
  return at == e || tier_positions[at] != req[k] ? ck_restore_request_missing : ck_ok;
}

}  // namespace kvevict::detail

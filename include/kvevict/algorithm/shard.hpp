//! \file algorithm/shard.hpp
//! Tensor-parallel shards: `select`, the second half of `plan` for an engine whose KV heads are
//! split across devices. Each shard scores its own heads (`score`), the engine gathers the scores
//! of every head (one all-gather per layer), and each shard selects its own heads' rows from them.
//!
//! Which policies need the gather: those whose plan for one head reads another head's scores,
//! shared-heads granularities (ChunkKV's default, any `shared_heads` choice) and cross-head budgets
//! (Ada-KV's `adaptive_budget`). Token-level policies with per-head budgets (StreamingLLM, H2O,
//! SnapKV, PyramidKV, per-head ChunkKV, SentenceKV, SABlock with independent heads) need no
//! collective: `plan` on the shard's own heads gives the single-device rows (tests/host/
//! test_shards.cpp shows both).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../backend.hpp"
#include "../config.hpp"
#include "../keep_plan.hpp"
#include "../segment/segmenters.hpp"
#include "../status.hpp"
#include "plan.hpp"

namespace kvevict {

//! Which KV heads of the layer a tensor-parallel shard holds: `[first_head, first_head +
//! cache.num_kv_heads())` of `total_kv_heads`. `seq_lens`, `[num_seqs, total_kv_heads]`, gives
//! every head's length; it may be null for caches whose heads share a page table (every head then
//! has the shard's length) and is required for (sequence, head)-row caches.
struct head_shard {
  int first_head = 0;
  int total_kv_heads = 0;
  const std::int32_t* seq_lens = nullptr;
};

namespace detail {

//! The layer as the selection sees it from one shard: every head's length, no K/V (selection
//! reads scores only).
template <class Cache>
struct gathered_heads {
  static constexpr bool per_head_rows = Cache::per_head_rows;
  const Cache* shard;
  head_shard info;

  // Host only (host memory); marked for both so that translation units nvcc compiles instantiate
  // the shared host/device helpers (detail::longest_head) over it without a warning.
  KVEVICT_HOST_DEVICE int num_seqs() const { return shard->num_seqs(); }
  KVEVICT_HOST_DEVICE int num_kv_heads() const { return info.total_kv_heads; }
  KVEVICT_HOST_DEVICE int seq_len(int s, int h) const {
    return info.seq_lens ? info.seq_lens[static_cast<std::size_t>(s) * info.total_kv_heads + h] : shard->seq_len(s, 0);
  }
};

template <class G, class = void>
struct segments_by_keys : std::false_type {};
template <class G>
struct segments_by_keys<G, std::void_t<decltype(std::declval<const G&>().segmenter)>>
    : std::is_same<std::decay_t<decltype(std::declval<const G&>().segmenter)>, key_similarity_segmenter> {};

template <class Policy, class Cache>
workspace_layout<5> select_layout(const Policy& p, const gathered_heads<Cache>& all, int capacity) {
  const int total = all.num_kv_heads(), n = max_row_len(all);
  const std::size_t rows = static_cast<std::size_t>(all.num_seqs()) * total;
  return workspace_layout<5>{{2 * sizeof(int) * total, p.granularity.scratch_bytes(all, n),
                              p.selector.budget.scratch_bytes(total, n),
                              sizeof(std::int32_t) * rows * static_cast<std::size_t>(capacity),
                              sizeof(std::int32_t) * rows}};
}

//! `select`'s checks of the shard's place among the layer's heads (both backends).
template <class Policy, class Cache>
status check_shard(const Cache& shard_cache, head_shard shard) {
  static_assert(!segments_by_keys<typename Policy::granularity_type>::value,
                "kvevict: key_similarity_segmenter averages keys over every KV head, which a shard does not "
                "hold; select on shards with a token-id segmenter (delimiter_segmenter)");
  const int kvh = shard_cache.num_kv_heads(), total = shard.total_kv_heads;
  if (total < kvh) return make_error(errc::invalid_argument, "shard.total_kv_heads", "below the shard's KV heads");
  if (shard.first_head < 0 || shard.first_head > total - kvh)
    return make_error(errc::out_of_range, "shard.first_head", "the shard's heads must lie in [0, total_kv_heads)");
  if (Cache::per_head_rows && shard.seq_lens == nullptr)
    return make_error(errc::invalid_argument, "shard.seq_lens",
                      "required for a (sequence, head)-row cache: every head of the layer may hold its own length");
  return ok_status();
}

}  // namespace detail

//! Entries per row of the plan `select` writes for a shard: the plan capacity of the whole layer
//! (an Ada-KV head may keep up to the budget of every head).
template <class Policy, class Cache, class T>
int select_capacity(const Policy& p, const Cache& shard_cache, const signals<T>& sig, head_shard shard) {
  return plan_capacity(p, detail::gathered_heads<Cache>{&shard_cache, shard}, sig);
}

//! Bytes of workspace `select(host, ...)` needs: budgets, the granularity's and budget's scratch,
//! and a plan of every head of the layer (the shard keeps its own rows of it).
template <class Policy, class Cache, class T>
std::size_t select_workspace_bytes(host_t, const Policy& p, const Cache& shard_cache, const signals<T>& sig,
                                   head_shard shard) {
  if (!validate_cache(shard_cache).ok() || shard.total_kv_heads < 1) return 0;
  const detail::gathered_heads<Cache> all{&shard_cache, shard};
  return detail::select_layout(p, all, plan_capacity(p, all, sig)).total();
}

//! Selects the shard's rows from the scores of every head of the layer, as `plan` would on one
//! device: row `seq * cache.num_kv_heads() + h` of `out` receives head `first_head + h`'s kept
//! positions. `scores[(seq * total_kv_heads + head) * stride + t]` are `score`'s outputs of every
//! shard, gathered (for one sequence, an all-gather of the shards' `[kv_heads, stride]` blocks in
//! shard order lands in this layout; for a batch, gather per sequence or permute).
//!
//! \param out  plan with `plan_rows(cache)` rows of `select_capacity(p, cache, sig, shard)` entries
//! \param workspace  select_workspace_bytes(host, p, cache, sig, shard) bytes
//! \return errc::ok, or the first invalid argument, named; nothing is written on error
template <class Policy, class Cache, class T>
status select(host_t, const Policy& p, const Cache& shard_cache, const signals<T>& sig, head_shard shard,
              const float* scores, std::size_t stride, keep_plan out, void* workspace, std::size_t workspace_bytes) {
  detail::static_check_plan_types<Policy, Cache, T>();
  KVEVICT_TRY(validate_cache(shard_cache));
  KVEVICT_TRY(detail::check_shard<Policy>(shard_cache, shard));
  const int kvh = shard_cache.num_kv_heads(), total = shard.total_kv_heads;
  const detail::gathered_heads<Cache> all{&shard_cache, shard};
  for (int s = 0; s < shard_cache.num_seqs(); ++s)
    for (int h = 0; h < kvh; ++h)
      if (all.seq_len(s, shard.first_head + h) != shard_cache.seq_len(s, h))
        return make_error(errc::shape_mismatch, "shard.seq_lens", "differs from the shard's own lengths");
  KVEVICT_TRY(detail::validate_selector_inputs(p, all, sig));
  KVEVICT_TRY(p.granularity.validate(all, sig));
  if (scores == nullptr) return make_error(errc::invalid_argument, "scores", "null scores");
  if (stride < static_cast<std::size_t>(detail::max_row_len(all)))
    return make_error(errc::buffer_too_small, "stride", "shorter than the longest sequence");
  for (int s = 0; s < all.num_seqs(); ++s)
    for (int h = 0; h < total; ++h) {
      const float* row = scores + (static_cast<std::size_t>(s) * total + h) * stride;
      for (int t = 0, n = all.seq_len(s, h); t < n; ++t)
        if (!std::isfinite(row[t])) return make_error(errc::non_finite, "scores", "a token score is NaN or infinite");
    }
  KVEVICT_TRY(detail::check_plan_arrays(shard_cache, as_const(out)));
  const int cap = plan_capacity(p, all, sig);
  if (out.capacity < cap)
    return make_error(errc::buffer_too_small, "plan.capacity", "smaller than select_capacity(policy, cache, sig, shard)");
  const auto layout = detail::select_layout(p, all, cap);
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, layout.total()));

  void* buf[5];
  layout.carve(workspace, buf);
  int* budgets = static_cast<int*>(buf[0]);
  int* lens = budgets + total;
  const keep_plan whole{static_cast<std::int32_t*>(buf[3]), static_cast<std::int32_t*>(buf[4]), cap,
                        all.num_seqs() * total};
  for (int s = 0; s < all.num_seqs(); ++s) {
    const row_rule rule = detail::rule_of(p, all, sig, s);
    if (rule.kept_whole()) {
      for (int h = 0; h < kvh; ++h) {
        const int r = s * kvh + h, n = shard_cache.seq_len(s, h);
        for (int t = 0; t < n; ++t) out.row(r)[t] = t;
        out.counts[r] = n;
      }
      continue;
    }
    const float* seq_scores = scores + static_cast<std::size_t>(s) * total * stride;
    for (int h = 0; h < total; ++h) lens[h] = all.seq_len(s, h);
    p.selector.budget.allocate(rule, seq_scores, stride, lens, total, budgets, buf[2]);
    p.granularity.select(all, sig, s, rule, seq_scores, stride, budgets, whole, buf[1]);
    for (int h = 0; h < kvh; ++h) {
      const int r = s * kvh + h, w = s * total + shard.first_head + h;
      out.counts[r] = whole.counts[w];
      std::memcpy(out.row(r), whole.row(w), sizeof(std::int32_t) * static_cast<std::size_t>(whole.counts[w]));
    }
  }
  return ok_status();
}

//! Convenience overload of `select` that allocates its workspace.
template <class Policy, class Cache, class T>
status select(host_t exec, const Policy& p, const Cache& shard_cache, const signals<T>& sig, head_shard shard,
              const float* scores, std::size_t stride, keep_plan out) {
  std::vector<unsigned char> ws(select_workspace_bytes(exec, p, shard_cache, sig, shard) + 1);
  return select(exec, p, shard_cache, sig, shard, scores, stride, out, ws.data(), ws.size());
}

}  // namespace kvevict

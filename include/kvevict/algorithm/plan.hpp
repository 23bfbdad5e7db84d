//! \file algorithm/plan.hpp
//! Front doors `score` and `plan`: which tokens each (sequence, KV head) keeps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../backend.hpp"
#include "../cache/validate.hpp"
#include "../concepts.hpp"
#include "../detail/workspace.hpp"
#include "../keep_plan.hpp"
#include "../policy/eviction_policy.hpp"
#include "../select/budget.hpp"
#include "../signals.hpp"
#include "../status.hpp"

namespace kvevict {

namespace detail {

template <class G, class = void>
struct granularity_shares_heads : std::false_type {};
template <class G>
struct granularity_shares_heads<G, std::void_t<typename G::sharing_type>>
    : std::bool_constant<G::sharing_type::shared> {};

template <class S, class = void>
struct scorer_needs_window_queries : std::false_type {};
template <class S>
struct scorer_needs_window_queries<S, std::void_t<decltype(S::needs_window_queries)>>
    : std::bool_constant<S::needs_window_queries> {};

//! The selector's parameters for one sequence, after the per-sequence overrides of `signals`.
struct seq_params {
  int entries, sinks, window;
};
template <class Policy, class T>
seq_params params_of(const Policy& p, const signals<T>& sig, int seq) {
  return {sig.seq_budgets ? sig.seq_budgets[seq] : p.selector.budget.entries,
          sig.seq_sinks ? sig.seq_sinks[seq] : p.selector.sinks,
          sig.seq_windows ? sig.seq_windows[seq] : p.selector.window};
}
//! True when no head of the sequence holds more tokens than it may keep: the sequence is kept
//! whole, without scoring. Uniform and adaptive budgets keep everything when every head holds at
//! most `entries` tokens (the adaptive pool then covers every candidate); per-layer budgets
//! compare with the layer's budget.
template <class Policy, class Cache, class T>
bool kept_whole(const Policy& p, const Cache& cache, const signals<T>& sig, int seq, const seq_params& sp) {
  int n = 0;
  for (int h = 0; h < cache.num_kv_heads(); ++h) n = std::max(n, cache.seq_len(seq, h));
  if constexpr (std::is_same_v<typename Policy::selector_type::budget_type, pyramid_budget>)
    return n <= p.selector.budget.layer_budget(sp.entries, sig.layer, sig.num_layers, sp.sinks, sp.window);
  else
    return n <= sp.entries;
}

//! Everything a plan checks before it computes: cache structure, selector, scorer signals,
//! granularity inputs. Returns the first problem found.
//! What `plan` requires of its types, on every backend.
template <class Policy, class Cache, class T>
constexpr void static_check_plan_types() {
  static_assert(is_paged_kv_cache_v<Cache>,
                "kvevict: Cache does not model the paged KV cache contract (see concepts.hpp)");
  static_assert(std::is_same_v<typename Cache::value_type, T>,
                "kvevict: signals<T> must use the cache's element type for its queries");
  static_assert(!(granularity_shares_heads<typename Policy::granularity_type>::value &&
                  Policy::selector_type::budget_type::per_head),
                "kvevict: shared_heads selects one plan for every head and cannot take per-head budgets "
                "(adaptive_budget); use independent_heads or a uniform / pyramid budget");
}

template <class Policy, class Cache, class T>
status validate_plan_inputs(const Policy& p, const Cache& cache, const signals<T>& sig) {
  static_check_plan_types<Policy, Cache, T>();
  KVEVICT_TRY(validate_cache(cache));
  KVEVICT_TRY(p.selector.validate());
  if (sig.num_layers < 1) return make_error(errc::invalid_argument, "signals.num_layers", "must be >= 1");
  if (sig.layer < 0 || sig.layer >= sig.num_layers)
    return make_error(errc::out_of_range, "signals.layer", "must lie in [0, num_layers)");
  for (int s = 0; s < cache.num_seqs(); ++s) {
    const seq_params sp = params_of(p, sig, s);
    if (sp.sinks < 0) return make_error(errc::invalid_argument, "signals.seq_sinks", "must be >= 0");
    if (sp.window < 0 || sp.window > p.selector.window)
      return make_error(errc::out_of_range, "signals.seq_windows", "must lie in [0, selector.window]");
    if (sp.entries < sp.sinks + sp.window)
      return make_error(errc::budget_too_small, "signals.seq_budgets",
                        "below the sequence's protected tokens (sinks + window)");
    for (int h = 0; h < cache.num_kv_heads(); ++h)
      if (sp.window > cache.seq_len(s, h))
        return make_error(errc::out_of_range, sig.seq_windows ? "signals.seq_windows" : "selector.window",
                          "longer than a sequence (its window queries must lie in it)");
    if (scorer_needs_window_queries<typename Policy::scorer_type>::value && sp.window < 1 &&
        !kept_whole(p, cache, sig, s, sp))
      return make_error(errc::invalid_argument, "signals.seq_windows", "window attention needs at least one query");
  }
  KVEVICT_TRY(p.scorer.validate(cache, sig, p.selector.window));
  KVEVICT_TRY(p.granularity.validate(cache, sig));
  return ok_status();
}

template <class Policy, class Cache, class T>
workspace_layout<4> plan_layout(const Policy& p, const Cache& cache, const signals<T>& sig) {
  const int kvh = cache.num_kv_heads(), n = max_row_len(cache);
  const std::size_t stride = static_cast<std::size_t>(n);
  return workspace_layout<4>{{sizeof(float) * kvh * stride + 2 * sizeof(int) * kvh,  // scores, budgets, lengths
                              p.scorer.scratch_bytes(cache, p.selector.window, sig.num_q_heads, n),
                              p.granularity.scratch_bytes(cache, n), p.selector.budget.scratch_bytes(kvh, n)}};
}

//! The keep plan `plan` writes: set, with a row per (sequence, head) and `plan_capacity` entries.
template <class Policy, class Cache, class T>
status check_plan_output(const Policy& p, const Cache& cache, const signals<T>& sig, const_keep_plan out) {
  KVEVICT_TRY(check_plan_arrays(cache, out));
  if (out.capacity < plan_capacity(p, cache, sig))
    return make_error(errc::buffer_too_small, "plan.capacity", "smaller than plan_capacity(policy, cache, signals)");
  return ok_status();
}

//! The caller's workspace: at least `need` bytes (the front door's `*_workspace_bytes()`), and set
//! when any is needed.
inline status check_workspace(const void* ws, std::size_t bytes, std::size_t need) {
  if (bytes < need)
    return make_error(errc::buffer_too_small, "workspace", "smaller than the front door's *_workspace_bytes()");
  if (ws == nullptr && need > 0) return make_error(errc::invalid_argument, "workspace", "null workspace");
  return ok_status();
}

//! Scores one sequence (with its window) into `scores` and rejects non-finite results.
template <class Policy, class Cache, class T>
status score_sequence(const Policy& p, const Cache& cache, const signals<T>& sig, int seq, int window, float* scores,
                      std::size_t stride, void* scratch) {
  p.scorer.score(cache, sig, seq, window, scores, stride, scratch);
  for (int h = 0; h < cache.num_kv_heads(); ++h) {
    const float* row = scores + static_cast<std::size_t>(h) * stride;
    for (int t = 0, n = cache.seq_len(seq, h); t < n; ++t)
      if (!std::isfinite(row[t]))
        return make_error(errc::non_finite, "cache.k / signals.queries", "a token score is NaN or infinite");
  }
  return ok_status();
}

}  // namespace detail

//! Bytes of workspace `plan(host, ...)` needs for this policy, cache and signals (0 when the cache
//! itself is invalid: `plan` then reports why).
template <class Policy, class Cache, class T>
std::size_t plan_workspace_bytes(host_t, const Policy& p, const Cache& cache, const signals<T>& sig) {
  if (!validate_cache(cache).ok()) return 0;
  return detail::plan_layout(p, cache, sig).total();
}

//! Bytes of workspace `score(host, ...)` needs: the scorer's scratch (0 when the cache itself is
//! invalid: `score` then reports why).
template <class Policy, class Cache, class T>
std::size_t score_workspace_bytes(host_t, const Policy& p, const Cache& cache, const signals<T>& sig) {
  if (!validate_cache(cache).ok()) return 0;
  return p.scorer.scratch_bytes(cache, p.selector.window, sig.num_q_heads, detail::max_row_len(cache));
}

//! Computes token scores only (the policy's scorer, with its window and pooling), for engines that
//! select on their own or inspect what a policy sees. `scores[(seq * kv_heads + h) * stride + t]`,
//! `t < seq_len(seq, h)`. Reads the cache, never writes it (a view over const K/V serves).
//!
//! \param scores [num_seqs, kv_heads, stride], stride >= the longest sequence
//! \param workspace  score_workspace_bytes(host, p, cache, sig) bytes
//! \return errc::ok, or the first invalid argument
template <class Policy, class Cache, class T>
status score(host_t, const Policy& p, const Cache& cache, const signals<T>& sig, float* scores, std::size_t stride,
             void* workspace, std::size_t workspace_bytes) {
  KVEVICT_TRY(detail::validate_plan_inputs(p, cache, sig));
  if (scores == nullptr) return make_error(errc::invalid_argument, "scores", "null output");
  if (stride < static_cast<std::size_t>(detail::max_row_len(cache)))
    return make_error(errc::buffer_too_small, "stride", "shorter than the longest sequence");
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, score_workspace_bytes(host, p, cache, sig)));
  const int kvh = cache.num_kv_heads();
  for (int s = 0; s < cache.num_seqs(); ++s) {
    const int w = detail::params_of(p, sig, s).window;
    if (detail::scorer_needs_window_queries<typename Policy::scorer_type>::value && w < 1)
      return make_error(errc::invalid_argument, "signals.seq_windows", "window attention needs at least one query");
    KVEVICT_TRY(detail::score_sequence(p, cache, sig, s, w, scores + static_cast<std::size_t>(s) * kvh * stride, stride,
                                       workspace));
  }
  return ok_status();
}

//! Convenience overload of `score` that allocates its workspace.
template <class Policy, class Cache, class T>
status score(host_t, const Policy& p, const Cache& cache, const signals<T>& sig, float* scores, std::size_t stride) {
  std::vector<unsigned char> ws(score_workspace_bytes(host, p, cache, sig) + 1);
  return score(host, p, cache, sig, scores, stride, ws.data(), ws.size());
}

namespace detail {
//! The plan loop, on inputs `plan` or `evict` has validated (cache, signals, outputs, workspace).
template <class Policy, class Cache, class T>
status plan_validated(const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan out, void* workspace) {
  void* buf[4];
  plan_layout(p, cache, sig).carve(workspace, buf);
  const int kvh = cache.num_kv_heads();
  const std::size_t stride = static_cast<std::size_t>(max_row_len(cache));
  float* scores = static_cast<float*>(buf[0]);
  int* budgets = reinterpret_cast<int*>(scores + static_cast<std::size_t>(kvh) * stride);
  int* lens = budgets + kvh;
  for (int s = 0; s < cache.num_seqs(); ++s) {
    const seq_params sp = params_of(p, sig, s);
    if (kept_whole(p, cache, sig, s, sp)) {  // nothing to evict: no scoring
      for (int h = 0; h < kvh; ++h) {
        const int r = s * kvh + h, n = cache.seq_len(s, h);
        for (int t = 0; t < n; ++t) out.row(r)[t] = t;
        out.counts[r] = n;
      }
      continue;
    }
    KVEVICT_TRY(score_sequence(p, cache, sig, s, sp.window, scores, stride, buf[1]));
    for (int h = 0; h < kvh; ++h) lens[h] = cache.seq_len(s, h);
    p.selector.budget.allocate(scores, stride, lens, kvh, sp.entries, sp.sinks, sp.window, sig.layer, sig.num_layers,
                               budgets, buf[3]);
    p.granularity.select(cache, sig, s, scores, stride, budgets, sp.sinks, sp.window, out, buf[2]);
  }
  return ok_status();
}
}  // namespace detail

//! Plans eviction for every (sequence, KV head) of the batch: row `seq * kv_heads + h` of `out`
//! receives the kept positions, sorted, exactly `min(budget_h, seq_len)` of them, protected sinks
//! and recent window included. Reads the cache, never writes it (a view over const K/V serves).
//!
//! Deterministic: ties in score go to the lower position, so reruns and backends agree.
//! Cost: the scorer's (window attention: 2 x q_heads x window x tokens x head_dim FMAs) plus
//! O(tokens) selection per head.
//!
//! \param out  plan with `plan_rows(cache)` rows of `plan_capacity(p, cache, sig)` entries
//!             (`keep_plan_buffer::for_cache(p, cache, sig)` sizes one)
//! \param workspace  plan_workspace_bytes(host, p, cache, sig) bytes
//! \return errc::ok, or the first invalid argument, named. Output sizes are checked before
//!         anything is written; a score found non-finite stops the call with the rows of earlier
//!         sequences already written.
//!
//! \code
//! kvevict::snapkv<> p;
//! p.selector.budget.entries = 128;
//! auto kept = kvevict::keep_plan_buffer::for_cache(p, cache, sig);
//! auto st = kvevict::plan(kvevict::host, p, cache, sig, kept.view());
//! \endcode
template <class Policy, class Cache, class T>
status plan(host_t, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan out, void* workspace,
            std::size_t workspace_bytes) {
  KVEVICT_TRY(detail::validate_plan_inputs(p, cache, sig));
  KVEVICT_TRY(detail::check_plan_output(p, cache, sig, as_const(out)));
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, detail::plan_layout(p, cache, sig).total()));
  return detail::plan_validated(p, cache, sig, out, workspace);
}

//! Convenience overload that allocates its workspace (use the one above in an engine's run path).
template <class Policy, class Cache, class T>
status plan(host_t, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan out) {
  std::vector<unsigned char> ws(plan_workspace_bytes(host, p, cache, sig) + 1);
  return plan(host, p, cache, sig, out, ws.data(), ws.size());
}

// A call without the backend tag fails with a sentence saying so.
KVEVICT_CATCH_MISSING_BACKEND(status, plan, "policy, cache, signals, plan")
KVEVICT_CATCH_MISSING_BACKEND(status, score, "policy, cache, signals, scores, stride")
KVEVICT_CATCH_MISSING_BACKEND(std::size_t, plan_workspace_bytes, "policy, cache, signals")
KVEVICT_CATCH_MISSING_BACKEND(std::size_t, score_workspace_bytes, "policy, cache, signals")

}  // namespace kvevict

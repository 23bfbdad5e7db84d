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
#include "../detail/checks.hpp"
#include "../detail/parallel.hpp"
#include "../detail/workspace.hpp"
#include "../keep_plan.hpp"
#include "../policy/eviction_policy.hpp"
#include "../policy/hooks.hpp"
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

//! True when the scorer scores one head at a time (`score_head`): `plan` then scores the heads of a
//! sequence on several threads.
template <class S, class Cache, class T, class = void>
struct scorer_has_score_head : std::false_type {};
template <class S, class Cache, class T>
struct scorer_has_score_head<S, Cache, T,
                             std::void_t<decltype(std::declval<const S&>().score_head(
                                 std::declval<const Cache&>(), std::declval<const signals<T>&>(), 0, 0, 0,
                                 static_cast<float*>(nullptr), static_cast<void*>(nullptr)))>> : std::true_type {};

//! Sequence `seq`'s selection rules (select/row_rule.hpp): the selector's parameters after the
//! per-sequence overrides of `signals`, the layer's budget and the longest head. A sequence whose
//! longest head fits the layer's budget is kept whole, without scoring (uniform and adaptive
//! budgets: every head holds at most `entries`, so the adaptive pool covers every candidate).
template <class Policy, class Cache, class T>
row_rule rule_of(const Policy& p, const Cache& cache, const signals<T>& sig, int seq) {
  return rule_source(p.selector, sig).of(p.selector.budget, cache, seq);
}

//! Everything a plan checks before it computes: cache structure, selector, scorer signals,
//! granularity inputs. Returns the first problem found.
//! What `plan` requires of its types, on every backend.
template <class Policy, class Cache, class T>
constexpr void static_check_plan_types() {
  static_assert(is_paged_kv_cache_v<Cache>,
                "kvevict: Cache does not model the paged KV cache contract (see concepts.hpp)");
  static_check_hooks<Policy, Cache, T>();
  static_assert(std::is_same_v<typename Cache::value_type, T> ||
                    (is_quantized<typename Cache::value_type>::value && is_element_type<T>::value &&
                     !is_quantized<T>::value),
                "kvevict: signals<T> must use the cache's element type for its queries (for a quantised cache: "
                "float, half or bfloat16 queries)");
  static_assert(!(granularity_shares_heads<typename Policy::granularity_type>::value &&
                  Policy::selector_type::budget_type::per_head),
                "kvevict: shared_heads selects one plan for every head and cannot take per-head budgets "
                "(adaptive_budget); use independent_heads or a uniform / pyramid budget");
}

//! The selector's parameters and the per-sequence overrides (what selection reads besides the
//! scores and the granularity's inputs). `cache` may be any view with `num_seqs`,
//! `num_kv_heads` and `seq_len(seq, head)`.
template <class Policy, class Cache, class T>
status validate_selector_inputs(const Policy& p, const Cache& cache, const signals<T>& sig) {
  KVEVICT_TRY(p.selector.validate());
  if (sig.num_layers < 1) return make_error(errc::invalid_argument, "signals.num_layers", "must be >= 1");
  if (sig.layer < 0 || sig.layer >= sig.num_layers)
    return make_error(errc::out_of_range, "signals.layer", "must lie in [0, num_layers)");
  for (int s = 0; s < cache.num_seqs(); ++s) {
    const row_rule rule = rule_of(p, cache, sig, s);
    KVEVICT_TRY(status_of(check_rule(rule, p.selector.window)));
    for (int h = 0; h < cache.num_kv_heads(); ++h)
      KVEVICT_TRY(status_of(check_window_fits(rule, cache.seq_len(s, h), sig.seq_windows != nullptr)));
    KVEVICT_TRY(status_of(
        check_window_queries(rule, scorer_needs_window_queries<typename Policy::scorer_type>::value)));
  }
  return ok_status();
}

template <class Policy, class Cache, class T>
status validate_plan_inputs(const Policy& p, const Cache& cache, const signals<T>& sig) {
  static_check_plan_types<Policy, Cache, T>();
  KVEVICT_TRY(validate_cache(cache));
  KVEVICT_TRY(validate_selector_inputs(p, cache, sig));
  KVEVICT_TRY(p.scorer.validate(cache, sig, p.selector.window));
  KVEVICT_TRY(p.granularity.validate(cache, sig));
  return ok_status();
}

template <class Policy, class Cache, class T>
std::size_t scorer_scratch_bytes(const Policy& p, const Cache& cache, const signals<T>& sig) {
  return p.scorer.scratch_bytes(cache, p.selector.window, sig.num_q_heads, max_row_len(cache));
}

//! Whether granularity `G` selects one (sequence, head) row at a time (`select_head`), so that the
//! plan runs the heads of a sequence on several threads.
template <class G, class Cache, class T, class = void>
struct granularity_has_select_head : std::false_type {};
template <class G, class Cache, class T>
struct granularity_has_select_head<
    G, Cache, T,
    std::void_t<decltype(std::declval<const G&>().select_head(
        std::declval<const Cache&>(), std::declval<const signals<T>&>(), 0, 0, std::declval<const row_rule&>(),
        static_cast<const float*>(nullptr), std::size_t{}, static_cast<const int*>(nullptr),
        std::declval<keep_plan>(), static_cast<void*>(nullptr)))>> : std::true_type {};

template <class Policy, class Cache, class T>
inline constexpr bool scores_per_head = scorer_has_score_head<typename Policy::scorer_type, Cache, T>::value;
template <class Policy, class Cache, class T>
inline constexpr bool selects_per_head =
    granularity_has_select_head<typename Policy::granularity_type, Cache, T>::value;

//! The plan's workspace for `threads` threads: a scorer scratch slice per thread when the scorer
//! scores one head at a time, a granularity scratch slice per thread when it selects one head at
//! a time (one slice otherwise).
template <class Policy, class Cache, class T>
workspace_layout<4> plan_layout(const Policy& p, const Cache& cache, const signals<T>& sig, int threads = 1) {
  const int kvh = cache.num_kv_heads(), n = max_row_len(cache);
  const std::size_t stride = static_cast<std::size_t>(n);
  const std::size_t scorer = align_up(scorer_scratch_bytes(p, cache, sig)) *
                             static_cast<std::size_t>(scores_per_head<Policy, Cache, T> ? threads : 1);
  const std::size_t gran = align_up(p.granularity.scratch_bytes(cache, n)) *
                           static_cast<std::size_t>(selects_per_head<Policy, Cache, T> ? threads : 1);
  return workspace_layout<4>{{sizeof(float) * kvh * stride + 2 * sizeof(int) * kvh,  // scores, budgets, lengths
                              scorer, gran, p.selector.budget.scratch_bytes(kvh, n)}};
}

//! Threads that plan one sequence's heads: the backend's count, at most one per KV head; one when
//! neither the scorer nor the granularity works a head at a time.
template <class Policy, class Cache, class T>
int scoring_threads(host_t exec, const Cache& cache) {
  if (!scores_per_head<Policy, Cache, T> && !selects_per_head<Policy, Cache, T>) return 1;
  const int t = exec.thread_count();
  return t < cache.num_kv_heads() ? t : cache.num_kv_heads();
}

//! The scoring threads a workspace of `bytes` holds (at least 1: the caller checked the 1-thread size).
template <class Policy, class Cache, class T>
int threads_that_fit(host_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, std::size_t bytes) {
  int t = scoring_threads<Policy, Cache, T>(exec, cache);
  while (t > 1 && plan_layout(p, cache, sig, t).total() > bytes) --t;
  return t;
}

//! The keep plan `plan` writes: set, with a row per (sequence, head) and `plan_capacity` entries.
template <class Policy, class Cache, class T>
status check_plan_output(const Policy& p, const Cache& cache, const signals<T>& sig, const_keep_plan out) {
  KVEVICT_TRY(check_plan_arrays(cache, out));
  return status_of(out.capacity < plan_capacity(p, cache, sig) ? ck_plan_capacity : ck_ok);
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
//! With `threads > 1` (a scorer with `score_head`) the heads are scored in parallel, thread `w`
//! using scratch slice `w` (`scratch_stride` bytes apart); the scores do not depend on it.
template <class Policy, class Cache, class T>
status score_sequence(const Policy& p, const Cache& cache, const signals<T>& sig, int seq, int window, float* scores,
                      std::size_t stride, void* scratch, int threads = 1, std::size_t scratch_stride = 0) {
  if constexpr (scores_per_head<Policy, Cache, T>) {
    if (threads > 1) {
      parallel_for(threads, cache.num_kv_heads(), [&](int h, int w) {
        p.scorer.score_head(cache, sig, seq, h, window, scores + static_cast<std::size_t>(h) * stride,
                            static_cast<unsigned char*>(scratch) + static_cast<std::size_t>(w) * scratch_stride);
      });
    } else {
      p.scorer.score(cache, sig, seq, window, scores, stride, scratch);
    }
  } else {
    p.scorer.score(cache, sig, seq, window, scores, stride, scratch);
  }
  for (int h = 0; h < cache.num_kv_heads(); ++h) {
    const float* row = scores + static_cast<std::size_t>(h) * stride;
    for (int t = 0, n = cache.seq_len(seq, h); t < n; ++t)
      if (!std::isfinite(row[t])) return status_of(ck_score_non_finite);
  }
  return ok_status();
}

}  // namespace detail

//! Bytes of workspace `plan(host, ...)` needs for this policy, cache and signals (0 when the cache
//! itself is invalid: `plan` then reports why).
//! With several threads (`kvevict::host`, `host.threads(n)`) it includes a scorer scratch per
//! scoring thread; a smaller workspace (down to the one-thread size) runs on fewer threads.
template <class Policy, class Cache, class T>
std::size_t plan_workspace_bytes(host_t exec, const Policy& p, const Cache& cache, const signals<T>& sig) {
  if (!validate_cache(cache).ok()) return 0;
  return detail::plan_layout(p, cache, sig, detail::scoring_threads<Policy, Cache, T>(exec, cache)).total();
}

//! Bytes of workspace `score(host, ...)` needs: the scorer's scratch (0 when the cache itself is
//! invalid: `score` then reports why).
template <class Policy, class Cache, class T>
std::size_t score_workspace_bytes(host_t exec, const Policy& p, const Cache& cache, const signals<T>& sig) {
  if (!validate_cache(cache).ok()) return 0;
  return detail::align_up(detail::scorer_scratch_bytes(p, cache, sig)) *
         static_cast<std::size_t>(detail::scores_per_head<Policy, Cache, T>
                                      ? detail::scoring_threads<Policy, Cache, T>(exec, cache)
                                      : 1);
}

//! Computes token scores only (the policy's scorer, with its window and pooling), for engines that
//! select on their own or inspect what a policy sees. `scores[(seq * kv_heads + h) * stride + t]`,
//! `t < seq_len(seq, h)`. Reads the cache, never writes it (a view over const K/V serves).
//!
//! \param scores [num_seqs, kv_heads, stride], stride >= the longest sequence
//! \param workspace  score_workspace_bytes(host, p, cache, sig) bytes
//! \return errc::ok, or the first invalid argument
template <class Policy, class Cache, class T>
status score(host_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, float* scores, std::size_t stride,
             void* workspace, std::size_t workspace_bytes) {
  KVEVICT_TRY(detail::validate_plan_inputs(p, cache, sig));
  if (scores == nullptr) return make_error(errc::invalid_argument, "scores", "null output");
  if (stride < static_cast<std::size_t>(detail::max_row_len(cache)))
    return make_error(errc::buffer_too_small, "stride", "shorter than the longest sequence");
  const std::size_t slice = detail::align_up(detail::scorer_scratch_bytes(p, cache, sig));
  KVEVICT_TRY(
      detail::check_workspace(workspace, workspace_bytes, score_workspace_bytes(host.threads(1), p, cache, sig)));
  int threads = detail::scoring_threads<Policy, Cache, T>(exec, cache);
  while (threads > 1 && slice * static_cast<std::size_t>(threads) > workspace_bytes) --threads;
  const int kvh = cache.num_kv_heads();
  for (int s = 0; s < cache.num_seqs(); ++s) {
    const int w = detail::rule_of(p, cache, sig, s).window;
    if (detail::scorer_needs_window_queries<typename Policy::scorer_type>::value && w < 1)
      return make_error(errc::invalid_argument, "signals.seq_windows", "window attention needs at least one query");
    KVEVICT_TRY(detail::score_sequence(p, cache, sig, s, w, scores + static_cast<std::size_t>(s) * kvh * stride, stride,
                                       workspace, threads, slice));
  }
  return ok_status();
}

//! Convenience overload of `score` that allocates its workspace.
template <class Policy, class Cache, class T>
status score(host_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, float* scores,
             std::size_t stride) {
  std::vector<unsigned char> ws(score_workspace_bytes(exec, p, cache, sig) + 1);
  return score(exec, p, cache, sig, scores, stride, ws.data(), ws.size());
}

namespace detail {
//! The plan loop, on inputs `plan` or `evict` has validated (cache, signals, outputs, workspace).
template <class Policy, class Cache, class T>
status plan_validated(const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan out, void* workspace,
                      int threads = 1) {
  void* buf[4];
  plan_layout(p, cache, sig, threads).carve(workspace, buf);
  const std::size_t slice = align_up(scorer_scratch_bytes(p, cache, sig));
  const std::size_t gslice = align_up(p.granularity.scratch_bytes(cache, max_row_len(cache)));
  const int kvh = cache.num_kv_heads();
  const std::size_t stride = static_cast<std::size_t>(max_row_len(cache));
  float* scores = static_cast<float*>(buf[0]);
  int* budgets = reinterpret_cast<int*>(scores + static_cast<std::size_t>(kvh) * stride);
  int* lens = budgets + kvh;
  for (int s = 0; s < cache.num_seqs(); ++s) {
    const row_rule rule = rule_of(p, cache, sig, s);
    if (rule.kept_whole()) {  // nothing to evict: no scoring
      for (int h = 0; h < kvh; ++h) {
        const int r = s * kvh + h, n = cache.seq_len(s, h);
        for (int t = 0; t < n; ++t) out.row(r)[t] = t;
        out.counts[r] = n;
      }
      continue;
    }
    KVEVICT_TRY(score_sequence(p, cache, sig, s, rule.window, scores, stride, buf[1], threads, slice));
    for (int h = 0; h < kvh; ++h) lens[h] = cache.seq_len(s, h);
    p.selector.budget.allocate(rule, scores, stride, lens, kvh, budgets, buf[3]);
    if constexpr (selects_per_head<Policy, Cache, T>) {
      if (threads > 1) {  // each head's row on its own thread and scratch slice; rows do not interact
        parallel_for(threads, kvh, [&](int h, int w) {
          p.granularity.select_head(cache, sig, s, h, rule, scores, stride, budgets, out,
                                    static_cast<unsigned char*>(buf[2]) + static_cast<std::size_t>(w) * gslice);
        });
        continue;
      }
    }
    p.granularity.select(cache, sig, s, rule, scores, stride, budgets, out, buf[2]);
  }
  return ok_status();
}
}  // namespace detail

//! Plans eviction for every (sequence, KV head) of the batch: row `seq * kv_heads + h` of `out`
//! receives the kept positions, sorted, exactly `min(budget_h, seq_len)` of them, protected sinks
//! and recent window included. Reads the cache, never writes it (a view over const K/V serves).
//!
//! Deterministic: ties in score go to the lower position, so reruns and backends agree.
//! Cost: the scorer's (window attention: q_heads x window x tokens x head_dim multiply-adds, the heads on `exec`'s
//! threads) plus O(tokens) selection per head.
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
status plan(host_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan out, void* workspace,
            std::size_t workspace_bytes) {
  KVEVICT_TRY(detail::validate_plan_inputs(p, cache, sig));
  KVEVICT_TRY(detail::check_plan_output(p, cache, sig, as_const(out)));
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, detail::plan_layout(p, cache, sig).total()));
  return detail::plan_validated(p, cache, sig, out, workspace,
                                detail::threads_that_fit(exec, p, cache, sig, workspace_bytes));
}

//! Convenience overload that allocates its workspace (use the one above in an engine's run path).
template <class Policy, class Cache, class T>
status plan(host_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan out) {
  std::vector<unsigned char> ws(plan_workspace_bytes(exec, p, cache, sig) + 1);
  return plan(exec, p, cache, sig, out, ws.data(), ws.size());
}

// A call without the backend tag fails with a sentence saying so.
KVEVICT_CATCH_MISSING_BACKEND(status, plan, "policy, cache, signals, plan")
KVEVICT_CATCH_MISSING_BACKEND(status, score, "policy, cache, signals, scores, stride")
KVEVICT_CATCH_MISSING_BACKEND(std::size_t, plan_workspace_bytes, "policy, cache, signals")
KVEVICT_CATCH_MISSING_BACKEND(std::size_t, score_workspace_bytes, "policy, cache, signals")

}  // namespace kvevict

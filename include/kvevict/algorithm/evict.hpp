//! \file algorithm/evict.hpp
//! Front door `evict` = plan + compact.
#pragma once

#include <algorithm>
#include <vector>

#include "compact.hpp"
#include "plan.hpp"

namespace kvevict {

//! Workspace bytes for `evict(host, ...)`: the larger of plan's and compact's (run one after the other).
template <class Policy, class Cache, class T>
std::size_t evict_workspace_bytes(host_t exec, const Policy& p, const Cache& cache, const signals<T>& sig) {
  return std::max(plan_workspace_bytes(exec, p, cache, sig), compact_workspace_bytes(host, cache));
}

//! Plans into `kept`, then compacts the cache by that plan. On any error (during planning or the
//! compaction's validation) the cache is left byte-for-byte unchanged.
//! The output sizes (plan rows, new lengths) are checked before the plan is written; only the
//! freed list's size depends on the plan, so when it is too small the plan buffer holds the plan
//! while the cache and `out` are untouched.
template <class Policy, class Cache, class T>
status evict(host_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan kept,
             compact_result& out, void* workspace, std::size_t workspace_bytes) {
  static_assert(is_mutable_cache_v<Cache>,
                "kvevict: evict compacts K and V in place: pass a view over mutable keys and values (a view over "
                "const elements serves plan and score only)");
  KVEVICT_TRY(detail::validate_plan_inputs(p, cache, sig));
  KVEVICT_TRY(detail::check_plan_output(p, cache, sig, as_const(kept)));
  KVEVICT_TRY(detail::check_new_lens(cache, out.new_lens, out.new_lens_capacity));
  KVEVICT_TRY(
      detail::check_workspace(workspace, workspace_bytes, evict_workspace_bytes(host.threads(1), p, cache, sig)));
  KVEVICT_TRY(detail::plan_validated(p, cache, sig, kept, workspace,
                                     detail::threads_that_fit(exec, p, cache, sig, workspace_bytes)));
  return compact(exec, cache, as_const(kept), out, workspace, workspace_bytes);
}

//! Convenience overload that allocates its workspace.
template <class Policy, class Cache, class T>
status evict(host_t exec, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan kept,
             compact_result& out) {
  std::vector<unsigned char> ws(evict_workspace_bytes(exec, p, cache, sig) + 1);
  return evict(exec, p, cache, sig, kept, out, ws.data(), ws.size());
}

// A call without the backend tag fails with a sentence saying so.
KVEVICT_CATCH_MISSING_BACKEND(status, evict, "policy, cache, signals, plan, result")
KVEVICT_CATCH_MISSING_BACKEND(std::size_t, evict_workspace_bytes, "policy, cache, signals")

}  // namespace kvevict

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
std::size_t evict_workspace_bytes(host_t, const Policy& p, const Cache& cache, const signals<T>& sig) {
  return std::max(plan_workspace_bytes(host, p, cache, sig), compact_workspace_bytes(host, cache));
}

//! Plans into `kept`, then compacts the cache by that plan. On any error (during planning or the
//! compaction's validation) the cache is left byte-for-byte unchanged.
template <class Policy, class Cache, class T>
status evict(host_t, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan kept, compact_result& out,
             void* workspace, std::size_t workspace_bytes) {
  KVEVICT_TRY(plan(host, p, cache, sig, kept, workspace, workspace_bytes));
  return compact(host, cache, as_const(kept), out, workspace, workspace_bytes);
}

//! Convenience overload that allocates its workspace.
template <class Policy, class Cache, class T>
status evict(host_t, const Policy& p, const Cache& cache, const signals<T>& sig, keep_plan kept, compact_result& out) {
  std::vector<unsigned char> ws(evict_workspace_bytes(host, p, cache, sig) + 1);
  return evict(host, p, cache, sig, kept, out, ws.data(), ws.size());
}

}  // namespace kvevict

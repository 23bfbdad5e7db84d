//! \file detail/parallel.hpp
//! The host backend's parallel loop. Not API.
#pragma once

#include <atomic>
#include <system_error>
#include <thread>
#include <vector>

namespace kvevict::detail {

//! Runs `f(item, worker)` for every item in `[0, count)` on up to `workers` threads (the caller's
//! among them); `worker` in `[0, workers)` names the scratch slice the call may use. Items are
//! independent, so the result does not depend on which thread ran which item. Where the system
//! refuses a thread, the threads already running take its share.
template <class F>
void parallel_for(int workers, int count, F&& f) {
  if (workers > count) workers = count;
  if (workers <= 1) {
    for (int i = 0; i < count; ++i) f(i, 0);
    return;
  }
  std::atomic<int> next{0};
  auto work = [&](int w) {
    for (int i; (i = next.fetch_add(1, std::memory_order_relaxed)) < count;) f(i, w);
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(workers - 1));
  for (int w = 1; w < workers; ++w) {
    try {
      pool.emplace_back(work, w);
    } catch (const std::system_error&) {
      break;
    }
  }
  work(0);
  for (auto& t : pool) t.join();
}

}  // namespace kvevict::detail

//! \file detail/row_rules.hpp
//! The per-row rules every layer uses, written once for the host and the device: the longest
//! head of a sequence and the compressible range of a row. Not API.
#pragma once

#include "../config.hpp"

namespace kvevict::detail {

//! The most tokens any KV head of sequence `seq` holds (heads of a (sequence, head)-row view may
//! differ).
template <class Cache>
KVEVICT_HOST_DEVICE int longest_head(const Cache& cache, int seq) {
  int n = 0;
  for (int h = 0; h < cache.num_kv_heads(); ++h) n = cache.seq_len(seq, h) > n ? cache.seq_len(seq, h) : n;
  return n;
}

//! The compressible range `[lo, hi)` of a row of `n` tokens: after the first `sinks`, before the
//! last `window`; empty (lo == hi) when they overlap.
struct token_range {
  int lo, hi;
};
KVEVICT_HOST_DEVICE token_range compressible_range(int n, int sinks, int window) {
  const int lo = sinks < n ? sinks : n;
  return {lo, n - window > lo ? n - window : lo};
}

}  // namespace kvevict::detail

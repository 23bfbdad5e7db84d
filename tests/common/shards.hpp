// Tensor-parallel shards of a test cache: a shard's heads as their own logical cache and its query
// heads' rows of a signal array (tests/host/test_shards.cpp, tests/cuda/test_cuda.cu).
#pragma once

#include <cstddef>
#include <vector>

#include "test_cache.hpp"

namespace testing {

//! Heads [h0, h0 + count) of `L`, as their own logical cache.
inline logical slice(const logical& L, int h0, int count) {
  logical S;
  S.num_seqs = L.num_seqs;
  S.kv_heads = count;
  S.head_dim = L.head_dim;
  S.max_len = L.max_len;
  for (int s = 0; s < L.num_seqs; ++s)
    for (int h = 0; h < count; ++h) S.lens.push_back(L.lens[static_cast<std::size_t>(s) * L.kv_heads + h0 + h]);
  S.kvals.resize(static_cast<std::size_t>(S.num_seqs) * count * S.max_len * S.head_dim);
  S.vvals.resize(S.kvals.size());
  for (int s = 0; s < L.num_seqs; ++s)
    for (int h = 0; h < count; ++h)
      for (int t = 0; t < L.max_len; ++t)
        for (int x = 0; x < L.head_dim; ++x) {
          S.kvals[S.idx(s, h, t, x)] = L.key(s, h0 + h, t, x);
          S.vvals[S.idx(s, h, t, x)] = L.val(s, h0 + h, t, x);
        }
  return S;
}

//! Rows [q0, q0 + count) of the head axis of a `[seqs, heads, inner]` array.
template <class V>
std::vector<V> heads_of(const std::vector<V>& a, int seqs, int heads, int inner, int q0, int count) {
  std::vector<V> out;
  for (int s = 0; s < seqs; ++s)
    for (int j = 0; j < count; ++j) {
      const auto b = a.begin() + (static_cast<std::ptrdiff_t>(s) * heads + q0 + j) * inner;
      out.insert(out.end(), b, b + inner);
    }
  return out;
}

}  // namespace testing

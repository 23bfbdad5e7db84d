//! \file scorer/pooling.hpp
//! 1-D pooling of token scores (stride 1, "same" output length, window `kernel`, centred).
#pragma once

#include <cstddef>
#include <type_traits>

#include "../config.hpp"

namespace kvevict {

//! Padding convention: out-of-range neighbours count as zeros (PyTorch `avg_pool1d` with
//! `padding = k / 2` and `count_include_pad = True`, what kvpress's SnapKV uses): the average
//! always divides by `kernel`.
struct pad_zeros {};
//! Padding convention: out-of-range neighbours are ignored (`count_include_pad = False`; for max
//! pooling, PyTorch's `-inf` padding): the average divides by the in-range count.
struct pad_valid {};

//! No pooling.
struct no_pool {
  static constexpr bool enabled = false;
};

//! Average pooling with the given padding convention.
template <class Padding = pad_zeros>
struct avg_pool {
  static constexpr bool enabled = true;
  static constexpr bool is_max = false;
  using padding = Padding;
};

//! Max pooling with the given padding convention.
template <class Padding = pad_valid>
struct max_pool {
  static constexpr bool enabled = true;
  static constexpr bool is_max = true;
  using padding = Padding;
};

namespace detail {
//! Output `i` of `pool_1d` (host and device share this formula, so both pool bit for bit alike).
template <class Pool>
KVEVICT_HOST_DEVICE float pool_at(const float* in, int n, int kernel, int i) {
  constexpr bool zeros = std::is_same_v<typename Pool::padding, pad_zeros>;
  const int lo = i - kernel / 2, hi = lo + kernel;  // [lo, hi)
  const int a = lo < 0 ? 0 : lo, b = hi > n ? n : hi;
  if constexpr (Pool::is_max) {
    float m = in[a];
    for (int t = a + 1; t < b; ++t) m = in[t] > m ? in[t] : m;
    if (zeros && (lo < 0 || hi > n)) m = m > 0.0f ? m : 0.0f;
    return m;
  } else {
    float s = 0.0f;
    for (int t = a; t < b; ++t) s += in[t];
    return s / static_cast<float>(zeros ? kernel : b - a);
  }
}
}  // namespace detail

namespace host_backend {

//! Pools `in[0, n)` into `out[0, n)` (distinct arrays) with an odd or even `kernel >= 1`: output `i`
//! covers inputs `[i - kernel/2, i - kernel/2 + kernel)`. O(n * kernel), deterministic.
template <class Pool>
void pool_1d(const float* in, float* out, int n, int kernel) {
  static_assert(Pool::enabled, "pool_1d needs avg_pool or max_pool");
  for (int i = 0; i < n; ++i) out[i] = detail::pool_at<Pool>(in, n, kernel, i);
}

//! A pooled scorer's scores from the unpooled ones: the keys before the window, `in[0, n - window)`,
//! pooled into `out` as one sequence (`pool_1d`); the window's own scores copied as they are.
//! `in` and `out` hold `n` floats each and are distinct. The pooled window-attention scorer calls
//! this, so anything that pools unpooled scores this way gets its scores bit for bit.
template <class Pool>
void pool_before_window(const float* in, float* out, int n, int window, int kernel) {
  const int m = n > window ? n - window : 0;
  if (m > 0) pool_1d<Pool>(in, out, m, kernel);
  for (int t = m; t < n; ++t) out[t] = in[t];
}

}  // namespace host_backend
}  // namespace kvevict

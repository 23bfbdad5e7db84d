//! \file concepts.hpp
//! The paged KV cache contract, as a C++20 concept and as an equivalent C++17 trait.
//!
//! A cache view is a non-owning, trivially copyable object with:
//!
//! | expression                        | meaning                                                  |
//! |-----------------------------------|----------------------------------------------------------|
//! | `C::value_type`                   | element type: float, kvevict::half, kvevict::bfloat16, or a |
//! |                                   | quantised type (float8_e4m3, float8_e5m2, int8)            |
//! |                                   | (never const: a view over const K/V keeps `value_type` plain) |
//! | `C::per_head_rows`                | true when every (seq, head) has its own page list         |
//! | `c.num_seqs()`, `c.num_pages()`   | sequences in the batch; pages in the pool                 |
//! | `c.page_size()`, `c.num_kv_heads()`, `c.head_dim()` | shape                                   |
//! | `c.seq_len(seq, head)`            | tokens held by that (seq, head) (all heads equal unless `per_head_rows`) |
//! | `c.num_row_pages(seq, head)`      | pages listed for that (seq, head)                          |
//! | `c.page(seq, head, logical_page)` | physical page id                                          |
//! | `c.key(page, slot, head)`, `c.value(page, slot, head)` | pointer to `head_dim` contiguous elements, |
//! |                                   | `value_type*`, or `const value_type*` for a read-only view (`plan`, `score`) |
//! | `c.k_scale()` (optional)          | keys are `k_scale` x the stored elements (a quantised cache's per-tensor |
//! |                                   | scale, vLLM's `k_scale`); 1 when the view has none         |
//! | `c.k_token_scale(page, slot, head)`, `c.v_token_scale(...)` (optional, both or neither) | pointer |
//! |                                   | to that row's per-(token, head) scale (`float`, const for a read-only view), |
//! |                                   | or null when the view holds none; keys are `k_scale` x it x the elements |
#pragma once

#include <type_traits>
#include <utility>

#include "config.hpp"
#include "numeric.hpp"

#if KVEVICT_HAS_CONCEPTS
#include <concepts>
#endif

namespace kvevict {

namespace detail {
//! `P` is `V*` or `const V*`.
template <class P, class V>
inline constexpr bool is_element_pointer_v =
    std::is_pointer_v<P>&& std::is_same_v<std::remove_const_t<std::remove_pointer_t<P>>, V>;

template <class C, class = void>
struct paged_kv_cache_impl : std::false_type {};

template <class C>
struct paged_kv_cache_impl<
    C, std::void_t<typename C::value_type, decltype(C::per_head_rows), decltype(std::declval<const C&>().num_seqs()),
                   decltype(std::declval<const C&>().num_pages()), decltype(std::declval<const C&>().page_size()),
                   decltype(std::declval<const C&>().num_kv_heads()), decltype(std::declval<const C&>().head_dim()),
                   decltype(std::declval<const C&>().seq_len(0, 0)),
                   decltype(std::declval<const C&>().num_row_pages(0, 0)),
                   decltype(std::declval<const C&>().page(0, 0, 0)), decltype(std::declval<const C&>().key(0, 0, 0)),
                   decltype(std::declval<const C&>().value(0, 0, 0))>>
    : std::bool_constant<
          std::is_trivially_copyable_v<C> && is_element_type<typename C::value_type>::value &&
          is_element_pointer_v<decltype(std::declval<const C&>().key(0, 0, 0)), typename C::value_type> &&
          std::is_same_v<decltype(std::declval<const C&>().key(0, 0, 0)),
                         decltype(std::declval<const C&>().value(0, 0, 0))>> {};
}  // namespace detail

//! C++17 trait: true when `C` models the paged KV cache contract above.
template <class C>
struct is_paged_kv_cache : detail::paged_kv_cache_impl<C> {};

template <class C>
inline constexpr bool is_paged_kv_cache_v = is_paged_kv_cache<C>::value;

#if KVEVICT_HAS_CONCEPTS
//! C++20 concept: the paged KV cache contract above.
template <class C>
concept paged_kv_cache = std::is_trivially_copyable_v<C> && is_element_type<typename C::value_type>::value &&
    requires(const C& c, int i) {
  { C::per_head_rows } -> std::convertible_to<bool>;
  { c.num_seqs() } -> std::convertible_to<int>;
  { c.num_pages() } -> std::convertible_to<int>;
  { c.page_size() } -> std::convertible_to<int>;
  { c.num_kv_heads() } -> std::convertible_to<int>;
  { c.head_dim() } -> std::convertible_to<int>;
  { c.seq_len(i, i) } -> std::convertible_to<int>;
  { c.num_row_pages(i, i) } -> std::convertible_to<int>;
  { c.page(i, i, i) } -> std::convertible_to<int>;
  requires detail::is_element_pointer_v<decltype(c.key(i, i, i)), typename C::value_type>;
  { c.value(i, i, i) } -> std::same_as<decltype(c.key(i, i, i))>;
};
#endif

namespace detail {
template <class C, class = void>
struct has_k_scale : std::false_type {};
template <class C>
struct has_k_scale<C, std::void_t<decltype(std::declval<const C&>().k_scale())>> : std::true_type {};

//! The view's key scale (`k_scale()`), or 1 for a view without one.
template <class C>
KVEVICT_HOST_DEVICE float key_scale_of(const C& c) {
  if constexpr (has_k_scale<C>::value)
    return c.k_scale();
  else
    return 1.0f;
}
template <class C, class = void>
struct has_token_scales : std::false_type {};
template <class C>
struct has_token_scales<C, std::void_t<decltype(std::declval<const C&>().k_token_scale(0, 0, 0)),
                                       decltype(std::declval<const C&>().v_token_scale(0, 0, 0))>> : std::true_type {};

//! The key (`key`) or value per-(token, head) scale of row (page, slot, head), null when the view
//! holds none (or has no such members).
template <class C>
KVEVICT_HOST_DEVICE auto token_scale_ptr(const C& c, bool key, int page, int slot, int head) {
  if constexpr (has_token_scales<C>::value)
    return key ? c.k_token_scale(page, slot, head) : c.v_token_scale(page, slot, head);
  else
    return static_cast<const float*>(nullptr);
}

//! The per-(token, head) scale of the keys of row (page, slot, head), beyond `k_scale`: 1 for a
//! view without token scales.
template <class C>
KVEVICT_HOST_DEVICE float key_token_scale_of(const C& c, int page, int slot, int head) {
  const auto* p = token_scale_ptr(c, true, page, slot, head);
  return p != nullptr ? *p : 1.0f;
}

//! Whether the view holds per-(token, head) key scales (`key`) or value scales now.
template <class C>
KVEVICT_HOST_DEVICE bool holds_token_scales(const C& c, bool key) {
  return token_scale_ptr(c, key, 0, 0, 0) != nullptr;
}

//! Copies the token scales of row (sp, ss, h) to row (dp, ds, h), those the view holds.
template <class C>
KVEVICT_HOST_DEVICE void move_token_scales(const C& c, int dp, int ds, int sp, int ss, int h) {
  for (int kv = 0; kv < 2; ++kv)  // keys, then values
    if (auto* d = token_scale_ptr(c, kv == 0, dp, ds, h)) *d = *token_scale_ptr(c, kv == 0, sp, ss, h);
}
}  // namespace detail

//! True when the view's K and V are writable (`key` returns `value_type*`): what `compact` needs.
//! A view over `const` elements serves `plan` and `score`, which only read.
template <class C>
inline constexpr bool is_mutable_cache_v =
    !std::is_const_v<std::remove_pointer_t<decltype(std::declval<const C&>().key(0, 0, 0))>>;

//! Whether compaction of this view can free pages: true unless the view declares
//! `static constexpr bool frees_pages = false` (dense caches do).
template <class C, class = void>
struct frees_pages : std::true_type {};
template <class C>
struct frees_pages<C, std::void_t<decltype(C::frees_pages)>> : std::bool_constant<C::frees_pages> {};

}  // namespace kvevict

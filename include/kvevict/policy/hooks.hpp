//! \file policy/hooks.hpp
//! The contracts of a policy's parts, written once: what a Scorer, a Budget, a Granularity and a
//! Segmenter provide, as C++17 traits (`is_scorer_v`, ...) and, under C++20, concepts
//! (`kvevict::scorer`, ...). `plan`, `score`, `select` and `evict` static_assert them with a
//! sentence, so a part that does not fit fails at the front door instead of deep in a template.
//!
//! Shapes (host backend; `n` a row's tokens, `stride` >= the longest row):
//!
//! **Scorer** (`window_attention`, `accumulated_attention`, `positional`, `key_norm`, `precomputed`)
//! * `status validate(const Cache&, const signals<T>&, int window) const`: names a missing or
//!   malformed signal;
//! * `std::size_t scratch_bytes(const Cache&, int window, int num_q_heads, int max_len) const`;
//! * `void score(const Cache&, const signals<T>&, int seq, int window, float* out, std::size_t
//!   stride, void* scratch) const`: `out[h * stride + t]`, higher is kept first, finite;
//! * optional `score_head(cache, sig, seq, head, window, float* out, void* scratch)`: one head
//!   (then `plan` scores heads on several threads).
//!
//! **Budget** (`uniform_budget`, `pyramid_budget`, `adaptive_budget`)
//! * `static constexpr bool per_head`; `status validate(int sinks, int window) const`;
//! * `static int max_budget(int entries, int kv_heads)`: the most one head may keep;
//! * `std::size_t scratch_bytes(int kv_heads, int max_len) const`;
//! * `void allocate(const row_rule& rule, const float* scores, std::size_t stride, const int* lens,
//!   int kv_heads, int* budgets, void* scratch) const`: one budget per KV head of a sequence;
//! * optional `KVEVICT_HOST_DEVICE int layer_budget(const row_rule& rule) const`: what every head
//!   of the layer keeps before per-head allocation (without it, `rule.entries`); `rule.budget`
//!   carries it, and a sequence whose longest head fits it is kept whole without scoring.
//!
//! A `row_rule` (select/row_rule.hpp) is one sequence's rules, computed once by `plan`: `entries`,
//! `sinks`, `window` after the signals' overrides, `layer`, `num_layers`, `budget`, `longest` and
//! `range(n)`, the compressible range of a row of `n` tokens.
//!
//! **Granularity** (`token_level`, `fixed_block`, `segment_level`, `adaptive_block`)
//! * `status validate(const Cache&, const signals<T>&) const`;
//! * `std::size_t scratch_bytes(const Cache&, int max_len) const`;
//! * `void select(const Cache&, const signals<T>&, int seq, const row_rule& rule, const float*
//!   scores, std::size_t stride, const int* budgets, keep_plan plan, void* scratch) const`:
//!   fills plan rows `seq * kv_heads + h`, exactly `min(budget_h, n)` sorted positions each,
//!   `rule.sinks` and `rule.window` included;
//! * optional `select_head(cache, sig, seq, head, ...)` (same arguments plus the head): one row,
//!   for independent heads (then `plan` selects heads on several threads).
//!
//! **Segmenter** (`delimiter_segmenter`, `fixed_length_segmenter`, `key_similarity_segmenter`)
//! * `status validate(const Cache&, const signals<T>&) const`;
//! * `std::size_t scratch_bytes(const Cache&, int max_len) const`;
//! * `int segment(const Cache&, const signals<T>&, int seq, int head, int lo, int hi,
//!   std::int32_t* offsets, void* scratch) const`: cuts `[lo, hi)` into `c` segments,
//!   `offsets[0] = lo < offsets[1] < ... < offsets[c] = hi`, returns `c` (0 when lo == hi);
//! * optional `template <class Cache> static constexpr bool cuts_heads_alike()`: true when the cuts
//!   of a sequence do not depend on the head (token ids, fixed lengths, a similarity averaged over
//!   the heads); the granularities then cut a sequence once for all of its heads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "../keep_plan.hpp"
#include "../select/row_rule.hpp"
#include "../signals.hpp"
#include "../status.hpp"

#if KVEVICT_HAS_CONCEPTS
#include <concepts>
#endif

namespace kvevict {

namespace detail {

template <class S, class Cache, class T, class = void>
struct is_scorer_impl : std::false_type {};
template <class S, class Cache, class T>
struct is_scorer_impl<
    S, Cache, T,
    std::void_t<decltype(status(std::declval<const S&>().validate(std::declval<const Cache&>(),
                                                                std::declval<const signals<T>&>(), 0))),
              decltype(std::size_t(std::declval<const S&>().scratch_bytes(std::declval<const Cache&>(), 0, 0, 0))),
              decltype(std::declval<const S&>().score(std::declval<const Cache&>(), std::declval<const signals<T>&>(),
                                                      0, 0, static_cast<float*>(nullptr), std::size_t{},
                                                      static_cast<void*>(nullptr)))>> : std::true_type {};

template <class B, class = void>
struct is_budget_impl : std::false_type {};
template <class B>
struct is_budget_impl<
    B, std::void_t<decltype(bool(B::per_head)), decltype(status(std::declval<const B&>().validate(0, 0))),
                 decltype(int(B::max_budget(0, 0))), decltype(std::size_t(std::declval<const B&>().scratch_bytes(0, 0))),
                 decltype(std::declval<const B&>().allocate(
                     std::declval<const row_rule&>(), static_cast<const float*>(nullptr), std::size_t{},
                     static_cast<const int*>(nullptr), 0, static_cast<int*>(nullptr), static_cast<void*>(nullptr)))>>
    : std::true_type {};

template <class G, class Cache, class T, class = void>
struct is_granularity_impl : std::false_type {};
template <class G, class Cache, class T>
struct is_granularity_impl<
    G, Cache, T,
    std::void_t<decltype(status(std::declval<const G&>().validate(std::declval<const Cache&>(),
                                                                std::declval<const signals<T>&>()))),
              decltype(std::size_t(std::declval<const G&>().scratch_bytes(std::declval<const Cache&>(), 0))),
              decltype(std::declval<const G&>().select(
                  std::declval<const Cache&>(), std::declval<const signals<T>&>(), 0, std::declval<const row_rule&>(),
                  static_cast<const float*>(nullptr), std::size_t{}, static_cast<const int*>(nullptr),
                  std::declval<keep_plan>(), static_cast<void*>(nullptr)))>> : std::true_type {};

template <class Seg, class Cache, class T, class = void>
struct is_segmenter_impl : std::false_type {};
template <class Seg, class Cache, class T>
struct is_segmenter_impl<
    Seg, Cache, T,
    std::void_t<decltype(status(std::declval<const Seg&>().validate(std::declval<const Cache&>(),
                                                                  std::declval<const signals<T>&>()))),
              decltype(std::size_t(std::declval<const Seg&>().scratch_bytes(std::declval<const Cache&>(), 0))),
              decltype(int(std::declval<const Seg&>().segment(std::declval<const Cache&>(),
                                                              std::declval<const signals<T>&>(), 0, 0, 0, 0,
                                                              static_cast<std::int32_t*>(nullptr),
                                                              static_cast<void*>(nullptr))))>> : std::true_type {};
}  // namespace detail

//! `S` scores the tokens of `Cache` with signals of `T` (see the file's comment for the shapes).
template <class S, class Cache, class T>
inline constexpr bool is_scorer_v = detail::is_scorer_impl<S, Cache, T>::value;
//! `B` allocates per-head budgets.
template <class B>
inline constexpr bool is_budget_v = detail::is_budget_impl<B>::value;
//! `G` selects plan rows from scores over `Cache`.
template <class G, class Cache, class T>
inline constexpr bool is_granularity_v = detail::is_granularity_impl<G, Cache, T>::value;
//! `Seg` cuts a row's range of `Cache` into segments.
template <class Seg, class Cache, class T>
inline constexpr bool is_segmenter_v = detail::is_segmenter_impl<Seg, Cache, T>::value;

#if KVEVICT_HAS_CONCEPTS
template <class S, class Cache, class T>
concept scorer = is_scorer_v<S, Cache, T>;
template <class B>
concept budget = is_budget_v<B>;
template <class G, class Cache, class T>
concept granularity = is_granularity_v<G, Cache, T>;
template <class Seg, class Cache, class T>
concept segmenter = is_segmenter_v<Seg, Cache, T>;
#endif

namespace detail {
//! The front doors' check of a policy's parts, each with its sentence.
template <class Policy, class Cache, class T>
constexpr void static_check_hooks() {
  static_assert(is_scorer_v<typename Policy::scorer_type, Cache, T>,
                "kvevict: the policy's scorer does not model Scorer: it needs validate(cache, signals, window), "
                "scratch_bytes(cache, window, num_q_heads, max_len) and score(cache, signals, seq, window, out, "
                "stride, scratch) (see policy/hooks.hpp)");
  static_assert(is_budget_v<typename Policy::selector_type::budget_type>,
                "kvevict: the selector's budget does not model Budget: it needs per_head, validate(sinks, window), "
                "max_budget(entries, kv_heads), scratch_bytes(kv_heads, max_len) and allocate(rule, scores, stride, lens, "
                "kv_heads, budgets, scratch) (see "
                "policy/hooks.hpp)");
  static_assert(is_granularity_v<typename Policy::granularity_type, Cache, T>,
                "kvevict: the policy's granularity does not model Granularity: it needs validate(cache, signals), "
                "scratch_bytes(cache, max_len) and select(cache, signals, seq, rule, scores, stride, budgets, plan, "
                "scratch) (see policy/hooks.hpp)");
}
//! The segment-based granularities' check of their segmenter.
template <class Seg, class Cache, class T>
constexpr void static_check_segmenter() {
  static_assert(is_segmenter_v<Seg, Cache, T>,
                "kvevict: the granularity's segmenter does not model Segmenter: it needs validate(cache, signals), "
                "scratch_bytes(cache, max_len) and segment(cache, signals, seq, head, lo, hi, offsets, scratch) "
                "(see policy/hooks.hpp)");
}
}  // namespace detail

}  // namespace kvevict

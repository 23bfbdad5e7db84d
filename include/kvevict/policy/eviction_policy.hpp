//! \file policy/eviction_policy.hpp
//! The policy: a scorer, a granularity and a selector, composed by template parameters.
#pragma once

#include <type_traits>

#include "../select/selector.hpp"

namespace kvevict {

//! An eviction policy: `Scorer` turns the cache and signals into per-token scores (higher = keep),
//! `Granularity` turns scores into kept units, `Selector` holds the protected tokens and the
//! budget allocator. An aggregate with no virtuals and no allocation; trivially copyable when its
//! parts are, so it passes to kernels by value.
//!
//! \code
//! kvevict::snapkv<> p;               // window_attention + token_level + selector<uniform_budget>
//! p.selector.budget.entries = 1024;  // runtime knobs are data members
//! p.selector.window = 64;
//! \endcode
template <class Scorer, class Granularity, class Selector>
struct eviction_policy {
  using scorer_type = Scorer;
  using granularity_type = Granularity;
  using selector_type = Selector;
  Scorer scorer{};
  Granularity granularity{};
  Selector selector{};
};

template <class P>
struct is_eviction_policy : std::false_type {};
template <class S, class G, class Sel>
struct is_eviction_policy<eviction_policy<S, G, Sel>> : std::true_type {};

}  // namespace kvevict

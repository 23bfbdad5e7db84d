//! \file backend.hpp
//! Backend tags: front doors overload on them.
#pragma once

#include <thread>

#include <type_traits>

namespace kvevict {

//! The host backend: the readable reference for every stage, always available.
struct host_t {
  static constexpr bool is_backend_tag = true;
  //! Threads `plan`, `score` and `evict` may use: 0 (the default) every hardware thread, 1 the
  //! caller's thread only (an engine that runs its own pool says 1). The plan does not depend on it.
  int num_threads = 0;

  //! This backend limited to `n` threads (`kvevict::host.threads(1)`); `n <= 0` means every
  //! hardware thread.
  constexpr host_t threads(int n) const { return host_t{n}; }
  //! The threads a call may use: `num_threads`, or the hardware's when it is 0 (at least 1).
  int thread_count() const {
    if (num_threads > 0) return num_threads;
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int>(hw) : 1;
  }
};
inline constexpr host_t host{};

//! True for a backend tag (`host_t`, `cuda_t`): a type with `static constexpr bool is_backend_tag`.
template <class T, class = void>
struct is_backend : std::false_type {};
template <class T>
struct is_backend<T, std::void_t<decltype(T::is_backend_tag)>> : std::bool_constant<T::is_backend_tag> {};

namespace detail {
template <class...>
inline constexpr bool dependent_false = false;
//! Enables the overloads that catch a front-door call without a backend tag.
template <class First>
using if_not_backend = std::enable_if_t<!is_backend<std::decay_t<First>>::value, int>;
}  // namespace detail

}  // namespace kvevict

//! Declares `kvevict::name(First&&, Rest&&...)` for calls whose first argument is not a backend
//! tag: its `static_assert` says to pass one, where overload resolution would otherwise report a
//! deduction failure about another argument. `args` lists the remaining arguments for the message.
#define KVEVICT_CATCH_MISSING_BACKEND(ret, name, args)                                                                 \
  template <class First, class... Rest, ::kvevict::detail::if_not_backend<First> = 0>                                  \
  ret name(First&&, Rest&&...) {                                                                                       \
    static_assert(::kvevict::detail::dependent_false<First>,                                                           \
                  "kvevict::" #name ": the first argument is the backend tag: kvevict::" #name "(kvevict::host, " args \
                  ") (kvevict::cuda.on(stream), from <kvevict/cuda.cuh>, for device memory)");                         \
    return {};                                                                                                         \
  }

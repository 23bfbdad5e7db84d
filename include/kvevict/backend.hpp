//! \file backend.hpp
//! Backend tags: front doors overload on them.
#pragma once

namespace kvevict {

//! The host backend: the readable reference for every stage, always available.
struct host_t {};
inline constexpr host_t host{};

}  // namespace kvevict

//! \file detail/workspace.hpp
//! Carving sub-buffers out of one caller-provided workspace (CUB style). Not API.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvevict::detail {

inline constexpr std::size_t workspace_alignment = 256;

inline std::size_t align_up(std::size_t n) {
  return (n + workspace_alignment - 1) / workspace_alignment * workspace_alignment;
}

//! Lays out N buffers at 256-byte boundaries. With a null base only the total size is computed.
template <std::size_t N>
struct workspace_layout {
  std::size_t sizes[N];
  std::size_t total() const {
    std::size_t t = 0;
    for (std::size_t i = 0; i < N; ++i) t += align_up(sizes[i]);
    return t + workspace_alignment;  // room to align an unaligned base
  }
  //! Pointers to the buffers inside `base` (which must hold total() bytes).
  void carve(void* base, void** out) const {
    std::uintptr_t p = reinterpret_cast<std::uintptr_t>(base);
    p = (p + workspace_alignment - 1) / workspace_alignment * workspace_alignment;
    for (std::size_t i = 0; i < N; ++i) {
      out[i] = reinterpret_cast<void*>(p);
      p += align_up(sizes[i]);
    }
  }
};

}  // namespace kvevict::detail

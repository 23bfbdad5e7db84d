//! \file cache/layout.hpp
//! Layout tags for the head and token axes inside a page.
#pragma once

#include <cstddef>

#include "../config.hpp"

namespace kvevict {

//! Token-major pages: `[page_size, kv_heads, head_dim]` (vLLM, FlashInfer "NHD").
struct nhd {
  KVEVICT_HOST_DEVICE static std::size_t offset(int slot, int head, int page_size, int kv_heads, int head_dim) {
    (void)page_size;
    return (static_cast<std::size_t>(slot) * kv_heads + head) * head_dim;
  }
};

//! Head-major pages: `[kv_heads, page_size, head_dim]` (FlashInfer "HND").
struct hnd {
  KVEVICT_HOST_DEVICE static std::size_t offset(int slot, int head, int page_size, int kv_heads, int head_dim) {
    (void)kv_heads;
    return (static_cast<std::size_t>(head) * page_size + slot) * head_dim;
  }
};

namespace detail {
//! The scale of the row that starts at element `element_offset` in an array of per-row scales laid
//! out as the rows are (head_dim 1), or null when the view holds none (`scales` null).
template <class S>
KVEVICT_HOST_DEVICE S* row_scale(S* scales, std::size_t element_offset, int head_dim) {
  return scales != nullptr ? scales + element_offset / static_cast<std::size_t>(head_dim) : nullptr;
}
}  // namespace detail

}  // namespace kvevict

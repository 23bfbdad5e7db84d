//! \file cache/dense_cache.hpp
//! Dense `[batch, kv_heads, capacity, head_dim]` cache (HuggingFace-style), seen as one page per
//! sequence.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../config.hpp"
#include "layout.hpp"

namespace kvevict {

//! Non-owning view of a dense KV cache `[batch, kv_heads, capacity, head_dim]` with per-sequence
//! lengths. Fields: the arrays by their engine names, the sizes as `<accessor>_` (read them
//! through the accessors). Modelled as a paged cache with `page_size = capacity` and page `s` belonging to
//! sequence `s`, so compaction frees no pages (the engine shrinks its own length counters).
template <class T>
struct dense_cache {
  using value_type = std::remove_const_t<T>;  //!< float, half or bfloat16
  using element_type = T;                     //!< value_type, or const value_type for a read-only view
  using token_scale_type = std::conditional_t<std::is_const_v<T>, const float, float>;
  static constexpr bool per_head_rows = false;
  static constexpr bool frees_pages = false;

  T* k = nullptr;                          // [batch, kv_heads, capacity, head_dim]
  T* v = nullptr;                          // [batch, kv_heads, capacity, head_dim]
  const std::int32_t* seq_lens = nullptr;  // [batch]
  int num_seqs_ = 0;                       // batch
  int num_kv_heads_ = 0;
  int capacity_ = 0;  // tokens each (sequence, head) row can hold
  int head_dim_ = 0;
  float k_scale_ = 1.0f;  // keys are k_scale x the stored elements (a quantised cache's scale; 1 otherwise)
  float v_scale_ = 1.0f;  // values are v_scale x the stored elements (compaction moves bytes; not read)
  // Optional scales per (token, head) stored beside the pages, one float per K or V row, laid out
  // as the rows are with head_dim 1; a row's keys are k_scale x its scale x the stored elements.
  // Null: none. Compaction and the tier move them with their rows.
  token_scale_type* k_token_scales = nullptr;
  token_scale_type* v_token_scales = nullptr;

  KVEVICT_HOST_DEVICE int num_seqs() const { return num_seqs_; }
  KVEVICT_HOST_DEVICE int num_pages() const { return num_seqs_; }
  KVEVICT_HOST_DEVICE int capacity() const { return capacity_; }
  KVEVICT_HOST_DEVICE int page_size() const { return capacity_; }
  KVEVICT_HOST_DEVICE int num_kv_heads() const { return num_kv_heads_; }
  KVEVICT_HOST_DEVICE int head_dim() const { return head_dim_; }
  KVEVICT_HOST_DEVICE float k_scale() const { return k_scale_; }
  KVEVICT_HOST_DEVICE float v_scale() const { return v_scale_; }
  KVEVICT_HOST_DEVICE int max_pages_per_row() const { return 1; }
  KVEVICT_HOST_DEVICE int seq_len(int seq) const { return seq_lens[seq]; }
  KVEVICT_HOST_DEVICE int seq_len(int seq, int /*head*/) const { return seq_lens[seq]; }
  KVEVICT_HOST_DEVICE int num_row_pages(int seq, int /*head*/) const { return seq_lens[seq] > 0 ? 1 : 0; }
  KVEVICT_HOST_DEVICE int page(int seq, int /*logical_page*/) const { return seq; }
  KVEVICT_HOST_DEVICE int page(int seq, int /*head*/, int /*logical_page*/) const { return seq; }
  KVEVICT_HOST_DEVICE T* key(int page_id, int slot, int head) const { return k + offset(page_id, slot, head); }
  KVEVICT_HOST_DEVICE T* value(int page_id, int slot, int head) const { return v + offset(page_id, slot, head); }
  //! The per-(token, head) key / value scale of a row, or null when the view has none.
  KVEVICT_HOST_DEVICE token_scale_type* k_token_scale(int page_id, int slot, int head) const {
    return detail::row_scale(k_token_scales, offset(page_id, slot, head), head_dim_);
  }
  KVEVICT_HOST_DEVICE token_scale_type* v_token_scale(int page_id, int slot, int head) const {
    return detail::row_scale(v_token_scales, offset(page_id, slot, head), head_dim_);
  }

 private:
  KVEVICT_HOST_DEVICE std::size_t offset(int seq, int slot, int head) const {
    return ((static_cast<std::size_t>(seq) * num_kv_heads_ + head) * capacity_ + slot) * head_dim_;
  }
};

}  // namespace kvevict

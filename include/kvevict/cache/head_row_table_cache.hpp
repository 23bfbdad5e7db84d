//! \file cache/head_row_table_cache.hpp
//! A paged cache whose block-table rows are (sequence, KV head) pairs (per-head budgets).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../config.hpp"
#include "layout.hpp"

namespace kvevict {

//! Non-owning view of a paged cache whose block-table rows are (sequence, KV head) pairs, as the
//! research forks of vLLM that support per-head budgets (Ada-KV) lay it out.
//!
//! Each page holds one head: K and V are `[num_pages, page_size, head_dim]`. Row
//! `r = seq * kv_heads + head` of the block table lists that head's pages, and `row_lens[r]` its
//! length, so every head of a sequence may keep a different number of tokens. Fields as
//! `block_table_cache`'s, with `row_lens` in place of `seq_lens`.
template <class T>
struct head_row_table_cache {
  using value_type = std::remove_const_t<T>;  //!< float, half or bfloat16
  using element_type = T;                     //!< value_type, or const value_type for a read-only view
  using token_scale_type = std::conditional_t<std::is_const_v<T>, const float, float>;
  using layout_type = nhd;
  static constexpr bool per_head_rows = true;

  T* k = nullptr;                             // [num_pages, page_size, head_dim]
  T* v = nullptr;                             // [num_pages, page_size, head_dim]
  const std::int32_t* block_table = nullptr;  // [num_seqs * kv_heads, block_table_stride]
  const std::int32_t* row_lens = nullptr;     // [num_seqs * kv_heads]
  int num_seqs_ = 0;
  int block_table_stride_ = 0;  // max pages per (sequence, head)
  int num_pages_ = 0;
  int page_size_ = 0;
  int num_kv_heads_ = 0;
  int head_dim_ = 0;
  float k_scale_ = 1.0f;  // keys are k_scale x the stored elements (a quantised cache's scale; 1 otherwise)
  float v_scale_ = 1.0f;  // values are v_scale x the stored elements (compaction moves bytes; not read)
  // Optional scales per (token, head) stored beside the pages, one float per K or V row, laid out
  // as the rows are with head_dim 1; a row's keys are k_scale x its scale x the stored elements.
  // Null: none. Compaction and the tier move them with their rows.
  token_scale_type* k_token_scales = nullptr;
  token_scale_type* v_token_scales = nullptr;

  KVEVICT_HOST_DEVICE int num_seqs() const { return num_seqs_; }
  KVEVICT_HOST_DEVICE int num_pages() const { return num_pages_; }
  KVEVICT_HOST_DEVICE int page_size() const { return page_size_; }
  KVEVICT_HOST_DEVICE int num_kv_heads() const { return num_kv_heads_; }
  KVEVICT_HOST_DEVICE int head_dim() const { return head_dim_; }
  KVEVICT_HOST_DEVICE float k_scale() const { return k_scale_; }
  KVEVICT_HOST_DEVICE float v_scale() const { return v_scale_; }
  KVEVICT_HOST_DEVICE int block_table_stride() const { return block_table_stride_; }
  KVEVICT_HOST_DEVICE int max_pages_per_row() const { return block_table_stride_; }
  KVEVICT_HOST_DEVICE int seq_len(int seq, int head) const { return row_lens[row(seq, head)]; }
  KVEVICT_HOST_DEVICE int num_row_pages(int seq, int head) const {
    return (seq_len(seq, head) + page_size_ - 1) / page_size_;
  }
  KVEVICT_HOST_DEVICE int page(int seq, int head, int logical_page) const {
    return block_table[static_cast<std::size_t>(row(seq, head)) * block_table_stride_ + logical_page];
  }
  KVEVICT_HOST_DEVICE T* key(int page_id, int slot, int /*head*/) const { return k + offset(page_id, slot); }
  KVEVICT_HOST_DEVICE T* value(int page_id, int slot, int /*head*/) const { return v + offset(page_id, slot); }
  //! The per-(token, head) key / value scale of a row, or null when the view has none.
  KVEVICT_HOST_DEVICE token_scale_type* k_token_scale(int page_id, int slot, int /*head*/) const {
    return detail::row_scale(k_token_scales, offset(page_id, slot), head_dim_);
  }
  KVEVICT_HOST_DEVICE token_scale_type* v_token_scale(int page_id, int slot, int /*head*/) const {
    return detail::row_scale(v_token_scales, offset(page_id, slot), head_dim_);
  }

 private:
  KVEVICT_HOST_DEVICE int row(int seq, int head) const { return seq * num_kv_heads_ + head; }
  KVEVICT_HOST_DEVICE std::size_t offset(int page_id, int slot) const {
    return (static_cast<std::size_t>(page_id) * page_size_ + slot) * head_dim_;
  }
};

}  // namespace kvevict

//! \file cache/block_table_cache.hpp
//! vLLM-style paged cache: a dense block table `[num_seqs, max_blocks_per_seq]` of page ids.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../config.hpp"
#include "layout.hpp"

namespace kvevict {

//! Non-owning view of a vLLM-style paged KV cache.
//!
//! K and V are separate arrays of `num_pages` pages, each `[page_size, kv_heads, head_dim]` (NHD,
//! the vLLM layout; `Layout = hnd` gives `[kv_heads, page_size, head_dim]`). Sequence `s` holds
//! `seq_lens[s]` tokens; its token `t` lives in page `block_table[s * block_table_stride_ + t /
//! page_size]`, slot `t % page_size`. All KV heads share the block table, so after compaction
//! every head of a sequence must keep the same number of tokens (a uniform per-head budget).
//!
//! Fields: the arrays by their engine names, the sizes as `<accessor>_` (`num_seqs_`,
//! `block_table_stride_`, `num_pages_`, `page_size_`, `num_kv_heads_`, `head_dim_`, in that order;
//! read them through the accessors). `T = const E` gives a read-only view for `plan` and `score`.
//!
//! Trivially copyable; models `paged_kv_cache`.
template <class T, class Layout = nhd>
struct block_table_cache {
  using value_type = std::remove_const_t<T>;  //!< float, half or bfloat16
  using element_type = T;                     //!< value_type, or const value_type for a read-only view
  using token_scale_type = std::conditional_t<std::is_const_v<T>, const float, float>;
  using layout_type = Layout;
  static constexpr bool per_head_rows = false;

  T* k = nullptr;                             // [num_pages, page_size, kv_heads, head_dim]
  T* v = nullptr;                             // [num_pages, page_size, kv_heads, head_dim]
  const std::int32_t* block_table = nullptr;  // [num_seqs, block_table_stride]
  const std::int32_t* seq_lens = nullptr;     // [num_seqs]
  int num_seqs_ = 0;
  int block_table_stride_ = 0;  // max pages per sequence
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
  KVEVICT_HOST_DEVICE int seq_len(int seq) const { return seq_lens[seq]; }
  KVEVICT_HOST_DEVICE int seq_len(int seq, int /*head*/) const { return seq_lens[seq]; }
  KVEVICT_HOST_DEVICE int num_row_pages(int seq, int /*head*/) const {
    return (seq_lens[seq] + page_size_ - 1) / page_size_;
  }
  KVEVICT_HOST_DEVICE int page(int seq, int logical_page) const {
    return block_table[static_cast<std::size_t>(seq) * block_table_stride_ + logical_page];
  }
  KVEVICT_HOST_DEVICE int page(int seq, int /*head*/, int logical_page) const { return page(seq, logical_page); }
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
  KVEVICT_HOST_DEVICE std::size_t offset(int page_id, int slot, int head) const {
    return static_cast<std::size_t>(page_id) * page_size_ * num_kv_heads_ * head_dim_ +
           Layout::offset(slot, head, page_size_, num_kv_heads_, head_dim_);
  }
};

}  // namespace kvevict

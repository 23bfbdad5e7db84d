//! \file cache/validate.hpp
//! Structural validation of cache views: what every front door checks before it reads or writes.
#pragma once

#include <cstdint>

#include "../concepts.hpp"
#include "../detail/checks.hpp"
#include "../status.hpp"
#include "block_table_cache.hpp"
#include "head_row_table_cache.hpp"
#include "csr_page_cache.hpp"
#include "dense_cache.hpp"

namespace kvevict {

namespace detail {

inline status validate_common_shape(int num_seqs, int page_size, int kv_heads, int head_dim, bool has_k, bool has_v,
                                    float k_scale = 1.0f, float v_scale = 1.0f) {
  if (num_seqs <= 0) return make_error(errc::empty_batch, "cache", "the batch has no sequences (num_seqs <= 0)");
  if (page_size <= 0) return make_error(errc::invalid_argument, "cache.page_size", "must be positive");
  if (kv_heads <= 0) return make_error(errc::invalid_argument, "cache.num_kv_heads", "must be positive");
  if (head_dim <= 0) return make_error(errc::invalid_argument, "cache.head_dim", "must be positive");
  if (!has_k) return make_error(errc::invalid_argument, "cache.k", "null key storage");
  if (!has_v) return make_error(errc::invalid_argument, "cache.v", "null value storage");
  if (!(k_scale > 0.0f && k_scale < 3.0e38f))
    return make_error(errc::invalid_argument, "cache.k_scale", "must be finite and positive");
  if (!(v_scale > 0.0f && v_scale < 3.0e38f))
    return make_error(errc::invalid_argument, "cache.v_scale", "must be finite and positive");
  return ok_status();
}

inline status validate_table_rows(const std::int32_t* table, const std::int32_t* lens, int rows, int stride,
                                  int page_size, int num_pages) {
  for (int r = 0; r < rows; ++r) {
    const std::int64_t len = lens[r];
    KVEVICT_TRY(status_of(check_row_length(len, stride, page_size)));
    for (std::int64_t p = 0, pages = (len + page_size - 1) / page_size; p < pages; ++p)
      KVEVICT_TRY(status_of(check_page_id(table[static_cast<std::int64_t>(r) * stride + p], num_pages)));
  }
  return ok_status();
}

//! The scalar and pointer checks of the block-table views (lengths per sequence or per row).
template <class Cache>
status validate_table_shape(const Cache& c, const std::int32_t* lens) {
  KVEVICT_TRY(validate_common_shape(c.num_seqs(), c.page_size(), c.num_kv_heads(), c.head_dim(), c.k != nullptr,
                                    c.v != nullptr, c.k_scale(), c.v_scale()));
  if (lens == nullptr) return make_error(errc::invalid_argument, "cache.seq_lens", "null sequence lengths");
  if (c.block_table == nullptr) return make_error(errc::invalid_argument, "cache.block_table", "null block table");
  if (c.block_table_stride() <= 0)
    return make_error(errc::invalid_argument, "cache.block_table_stride", "must be positive");
  return ok_status();
}

}  // namespace detail

//! The checks of a view that read no table: shapes positive, pointers set (O(1); what a backend
//! whose tables live elsewhere, such as device memory, can check on the host).
template <class T, class L>
status validate_cache_shape(const block_table_cache<T, L>& c) {
  return detail::validate_table_shape(c, c.seq_lens);
}
template <class T>
status validate_cache_shape(const head_row_table_cache<T>& c) {
  return detail::validate_table_shape(c, c.row_lens);
}
template <class T, class L>
status validate_cache_shape(const csr_page_cache<T, L>& c) {
  KVEVICT_TRY(detail::validate_common_shape(c.num_seqs(), c.page_size(), c.num_kv_heads(), c.head_dim(), c.k != nullptr,
                                            c.v != nullptr, c.k_scale(), c.v_scale()));
  if (c.indptr == nullptr) return make_error(errc::invalid_argument, "cache.indptr", "null indptr");
  if (c.last_page_len == nullptr)
    return make_error(errc::invalid_argument, "cache.last_page_len", "null last_page_len");
  return ok_status();
}
template <class T>
status validate_cache_shape(const dense_cache<T>& c) {
  KVEVICT_TRY(detail::validate_common_shape(c.num_seqs(), c.page_size(), c.num_kv_heads(), c.head_dim(), c.k != nullptr,
                                            c.v != nullptr, c.k_scale(), c.v_scale()));
  if (c.seq_lens == nullptr) return make_error(errc::invalid_argument, "cache.seq_lens", "null sequence lengths");
  return ok_status();
}

//! Checks a vLLM-style view: shapes positive, pointers set, lengths fit the table, every page id
//! in use lies in `[0, num_pages)`. O(total pages).
template <class T, class L>
status validate_cache(const block_table_cache<T, L>& c) {
  KVEVICT_TRY(validate_cache_shape(c));
  return detail::validate_table_rows(c.block_table, c.seq_lens, c.num_seqs(), c.block_table_stride(), c.page_size(),
                                     c.num_pages());
}

//! Checks a (sequence, head)-row view, as `validate_cache(block_table_cache)` row by row.
template <class T>
status validate_cache(const head_row_table_cache<T>& c) {
  KVEVICT_TRY(validate_cache_shape(c));
  return detail::validate_table_rows(c.block_table, c.row_lens, c.num_seqs() * c.num_kv_heads(), c.block_table_stride(),
                                     c.page_size(), c.num_pages());
}

//! Checks a FlashInfer-style view: `indptr` non-decreasing from 0, `last_page_len` in
//! `[1, page_size]` for sequences with pages, every listed page id in `[0, num_pages)`.
template <class T, class L>
status validate_cache(const csr_page_cache<T, L>& c) {
  KVEVICT_TRY(validate_cache_shape(c));
  KVEVICT_TRY(detail::status_of(detail::check_indptr_start(c.indptr[0])));
  for (int s = 0; s < c.num_seqs(); ++s)
    KVEVICT_TRY(detail::status_of(detail::check_csr_sequence(
        static_cast<std::int64_t>(c.indptr[s + 1]) - c.indptr[s], c.last_page_len[s], c.page_size())));
  if (c.indptr[c.num_seqs()] > 0 && c.indices == nullptr)
    return make_error(errc::invalid_argument, "cache.indices", "null page indices");
  for (int i = 0; i < c.indptr[c.num_seqs()]; ++i)
    KVEVICT_TRY(detail::status_of(detail::check_page_id(c.indices[i], c.num_pages(), true)));
  return ok_status();
}

//! Checks a dense view: lengths in `[0, capacity]`.
template <class T>
status validate_cache(const dense_cache<T>& c) {
  KVEVICT_TRY(validate_cache_shape(c));
  for (int s = 0; s < c.num_seqs(); ++s)
    KVEVICT_TRY(detail::status_of(detail::check_dense_length(c.seq_lens[s], c.capacity())));
  return ok_status();
}

}  // namespace kvevict

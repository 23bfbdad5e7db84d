//! \file cuda/geometry.cuh
//! Where each (sequence, KV head) row's per-token scratch lives, and the cache checks that need
//! the device-resident tables. Not API.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../cache/block_table_cache.hpp"
#include "../cache/head_row_table_cache.hpp"
#include "../cache/csr_page_cache.hpp"
#include "../cache/dense_cache.hpp"
#include "../cache/validate.hpp"
#include "backend.cuh"

namespace kvevict::cuda_backend {

// Per-token scratch is laid out by the table's capacity, which the host knows without reading
// device memory: a block table reserves `block_table_stride * page_size` tokens per row, a CSR
// table at most `num_pages * page_size` tokens over all sequences.

template <class T, class L>
std::size_t slab_tokens(const block_table_cache<T, L>& c) {
  return static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads() * c.block_table_stride() * c.page_size();
}
template <class T, class L>
int max_row_cap(const block_table_cache<T, L>& c) {
  return c.block_table_stride() * c.page_size();
}
//! Where row (s, h)'s per-token scratch starts (rows are disjoint and ordered by (s, h)).
template <class T, class L>
__device__ std::size_t row_base(const block_table_cache<T, L>& c, int s, int h) {
  return (static_cast<std::size_t>(s) * c.num_kv_heads() + h) * (c.block_table_stride() * c.page_size());
}

template <class T>
std::size_t slab_tokens(const head_row_table_cache<T>& c) {
  return static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads() * c.block_table_stride() * c.page_size();
}
template <class T>
int max_row_cap(const head_row_table_cache<T>& c) {
  return c.block_table_stride() * c.page_size();
}
template <class T>
__device__ std::size_t row_base(const head_row_table_cache<T>& c, int s, int h) {
  return (static_cast<std::size_t>(s) * c.num_kv_heads() + h) * (c.block_table_stride() * c.page_size());
}

template <class T, class L>
std::size_t slab_tokens(const csr_page_cache<T, L>& c) {
  return static_cast<std::size_t>(c.num_pages()) * c.page_size() * c.num_kv_heads();
}
template <class T, class L>
int max_row_cap(const csr_page_cache<T, L>& c) {
  return c.num_pages() * c.page_size();
}
template <class T, class L>
__device__ std::size_t row_base(const csr_page_cache<T, L>& c, int s, int h) {
  const int first = c.indptr[s], np = c.indptr[s + 1] - first;
  return static_cast<std::size_t>(c.page_size()) *
         (static_cast<std::size_t>(first) * c.num_kv_heads() + static_cast<std::size_t>(h) * np);
}

template <class T>
std::size_t slab_tokens(const dense_cache<T>& c) {
  return static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads() * c.capacity();
}
template <class T>
int max_row_cap(const dense_cache<T>& c) {
  return c.capacity();
}
template <class T>
__device__ std::size_t row_base(const dense_cache<T>& c, int s, int h) {
  return (static_cast<std::size_t>(s) * c.num_kv_heads() + h) * c.capacity();
}

//! Rows of chunk-level scratch (one entry per `chunk` tokens of a row), laid out like the slabs:
//! row (s, h) uses entries `[base / chunk + s * kv_heads + h, + ceil(len / chunk))`, which never
//! overlap between rows.
template <class Cache>
std::size_t chunk_entries(const Cache& c, int chunk) {
  return slab_tokens(c) / static_cast<std::size_t>(chunk) + static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads() +
         1;
}
template <class Cache>
__device__ std::size_t chunk_base(const Cache& c, int s, int h, int chunk) {
  return row_base(c, s, h) / static_cast<std::size_t>(chunk) + static_cast<std::size_t>(s) * c.num_kv_heads() + h;
}

// ---- host-side checks (scalars and pointers only): the host's, plus what the device needs ----

template <class Cache>
status check_table_device_shape(const Cache& c) {
  KVEVICT_TRY(validate_cache_shape(c));
  if (static_cast<std::int64_t>(c.block_table_stride()) * c.page_size() > INT_MAX)
    return make_error(errc::out_of_range, "cache.block_table_stride", "a row would hold more than INT_MAX tokens");
  return ok_status();
}
template <class T, class L>
status check_device_shape(const block_table_cache<T, L>& c) {
  return check_table_device_shape(c);
}
template <class T>
status check_device_shape(const head_row_table_cache<T>& c) {
  return check_table_device_shape(c);
}
template <class T, class L>
status check_device_shape(const csr_page_cache<T, L>& c) {
  KVEVICT_TRY(validate_cache_shape(c));
  if (c.indices == nullptr)
    return make_error(errc::invalid_argument, "cache.indices", "null page indices (the CUDA backend needs the array)");
  if (static_cast<std::int64_t>(c.num_pages()) * c.page_size() > INT_MAX)
    return make_error(errc::out_of_range, "cache.num_pages", "more than INT_MAX tokens of pages");
  return ok_status();
}
template <class T>
status check_device_shape(const dense_cache<T>& c) {
  return validate_cache_shape(c);
}

// ---- device-side table checks: one thread per table entry (grid-stride) ----

template <class Rows>
__device__ void check_table_entry(const std::int32_t* table, const Rows& lens, std::size_t rows, int stride,
                                  int page_size, int num_pages, std::size_t i, int* word) {
  const std::size_t r = i / static_cast<std::size_t>(stride);
  const int p = static_cast<int>(i % static_cast<std::size_t>(stride));
  if (r >= rows) return;
  const std::int64_t len = lens[r];
  const int row_code = detail::check_row_length(len, stride, page_size);
  if (p == 0) raise(word, row_code);
  if (row_code == ck_seq_len_negative) return;
  if (p < (len + page_size - 1) / page_size) raise(word, detail::check_page_id(table[i], num_pages));
}

template <class T, class L>
__host__ __device__ std::size_t table_check_items(const block_table_cache<T, L>& c) {
  return static_cast<std::size_t>(c.num_seqs()) * c.block_table_stride();
}
template <class T, class L>
__device__ void check_item(const block_table_cache<T, L>& c, std::size_t i, int* word) {
  check_table_entry(c.block_table, c.seq_lens, static_cast<std::size_t>(c.num_seqs()), c.block_table_stride(),
                    c.page_size(), c.num_pages(), i, word);
}
template <class T>
__host__ __device__ std::size_t table_check_items(const head_row_table_cache<T>& c) {
  return static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads() * c.block_table_stride();
}
template <class T>
__device__ void check_item(const head_row_table_cache<T>& c, std::size_t i, int* word) {
  check_table_entry(c.block_table, c.row_lens, static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads(),
                    c.block_table_stride(), c.page_size(), c.num_pages(), i, word);
}
template <class T, class L>
__host__ __device__ std::size_t table_check_items(const csr_page_cache<T, L>& c) {
  const std::size_t a = static_cast<std::size_t>(c.num_seqs()) + 1, b = static_cast<std::size_t>(c.num_pages());
  return a > b ? a : b;
}
template <class T, class L>
__device__ void check_item(const csr_page_cache<T, L>& c, std::size_t i, int* word) {
  const int seqs = c.num_seqs();
  if (i == 0) raise(word, detail::check_indptr_start(c.indptr[0]));
  if (i < static_cast<std::size_t>(seqs)) {
    const int s = static_cast<int>(i);
    raise(word, detail::check_csr_sequence(static_cast<std::int64_t>(c.indptr[s + 1]) - c.indptr[s],
                                           c.last_page_len[s], c.page_size()));
  }
  const int total = c.indptr[seqs];
  if (i == 0 && total > c.num_pages()) raise(word, ck_indptr_total);
  if (i < static_cast<std::size_t>(total < c.num_pages() ? total : c.num_pages())) {
    raise(word, detail::check_page_id(c.indices[i], c.num_pages(), true));
  }
}
template <class T>
__host__ __device__ std::size_t table_check_items(const dense_cache<T>& c) {
  return static_cast<std::size_t>(c.num_seqs());
}
template <class T>
__device__ void check_item(const dense_cache<T>& c, std::size_t i, int* word) {
  if (i < static_cast<std::size_t>(c.num_seqs())) raise(word, detail::check_dense_length(c.seq_lens[i], c.capacity()));
}

}  // namespace kvevict::cuda_backend

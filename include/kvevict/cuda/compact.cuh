//! \file cuda/compact.cuh
//! In-place, order-preserving compaction on the device. Not API.
//!
//! Row (s, h) keeps `count` positions p_0 < p_1 < ...; rank j moves from slot p_j to slot j <= p_j.
//! The ranks are cut into tiles of `compact_tile` tokens. A block takes the next tile by ticket
//! (tickets are handed out in start order, so every earlier tile belongs to a block that is already
//! running), copies the tile's K and V rows into shared memory, publishes "tile read", then waits
//! until every earlier tile of the row that reads a slot this tile writes (those whose last source
//! position is >= this tile's first rank) has published, and writes. So no slot is overwritten
//! before the token it holds was read, blocks never wait on a block that has not started, and the
//! only scratch is one flag per tile: no K/V-sized buffer.
#pragma once

#include <cub/device/device_scan.cuh>

#include <cstddef>
#include <cstdint>

#include "../detail/compact_schedule.hpp"
#include "../keep_plan.hpp"
#include "geometry.cuh"

namespace kvevict::cuda_backend {

inline constexpr int compact_tile = 32;  //!< ranks per tile
inline constexpr int compact_threads = 256;

//! The plan checks `compact` makes (as the host backend does): counts in range and uniform over a
//! shared table's heads, positions in range and strictly increasing. Also counts the tiles and the
//! freed pages of each row. One thread per plan entry (grid-stride), rows of `capacity` entries.
template <class Cache>
__global__ void check_plan_kernel(Cache c, const_keep_plan plan, int* tiles, int* freed, int* word) {
  if (failed(word)) return;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh;
  const std::size_t cap = plan.capacity > 0 ? static_cast<std::size_t>(plan.capacity) : 1;
  const std::size_t items = static_cast<std::size_t>(rows) * cap;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(i / cap), j = static_cast<int>(i % cap), s = r / kvh, h = r % kvh;
    const int n = c.seq_len(s, h), cnt = plan.counts[r];
    if (j == 0) {
      if (cnt < 0 || cnt > n || cnt > plan.capacity) {
        raise(word, dc_plan_count);
        continue;
      }
      if (!Cache::per_head_rows && cnt != plan.counts[s * kvh]) raise(word, dc_plan_uneven);
      tiles[r] = (cnt + compact_tile - 1) / compact_tile;
      const bool lists = Cache::per_head_rows || h == 0;
      freed[r] = lists && frees_pages<Cache>::value
                     ? c.num_row_pages(s, h) - (cnt + c.page_size() - 1) / c.page_size()
                     : 0;
    }
    if (cnt < 0 || cnt > n || cnt > plan.capacity || j >= cnt) continue;
    const std::int32_t p = plan.row(r)[j];
    if (p < 0 || p >= n) raise(word, dc_plan_position);
    if (j > 0 && p <= plan.row(r)[j - 1]) raise(word, dc_plan_order);
  }
}

//! Page-list entries the aliasing check visits: every (list, logical page) slot of a block table,
//! every index of a CSR table.
template <class Cache>
std::size_t listed_page_items(const Cache& c) {
  return static_cast<std::size_t>(c.num_seqs()) * (Cache::per_head_rows ? c.num_kv_heads() : 1) *
         static_cast<std::size_t>(c.max_pages_per_row());
}
template <class T, class L>
std::size_t listed_page_items(const csr_page_cache<T, L>& c) {
  return static_cast<std::size_t>(c.num_pages());
}
//! The page id of entry `i`, or -1 when the entry lies past its list.
template <class Cache>
__device__ int listed_page(const Cache& c, std::size_t i) {
  const int heads = Cache::per_head_rows ? c.num_kv_heads() : 1, stride = c.max_pages_per_row();
  const int li = static_cast<int>(i / stride), lp = static_cast<int>(i % stride), s = li / heads, h = li % heads;
  return lp < c.num_row_pages(s, h) ? c.page(s, h, lp) : -1;
}
template <class T, class L>
__device__ int listed_page(const csr_page_cache<T, L>& c, std::size_t i) {
  return i < static_cast<std::size_t>(c.indptr[c.num_seqs()]) ? c.indices[i] : -1;
}

//! Marks every listed page; a page seen twice fails the call. `seen` is zeroed per call.
template <class Cache>
__global__ void check_pages_kernel(Cache c, std::size_t items, int* seen, int* word) {
  if (failed(word)) return;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const int pg = listed_page(c, i);
    if (pg >= 0 && atomicAdd(&seen[pg], 1) != 0) raise(word, dc_page_listed_twice);
  }
}

//! After the scan of freed pages: the total must fit the caller's list.
template <class = void>
__global__ void check_freed_kernel(const int* freed_offsets, int rows, int freed_capacity, int* num_freed,
                                          int* word) {
  if (failed(word)) return;
  const int total = freed_offsets[rows];
  if (total > freed_capacity) {
    raise(word, dc_freed_capacity);
    return;
  }
  if (num_freed) *num_freed = total;
}

template <class Unit>
__device__ void copy_rows(Unit* dst, const Unit* src, int units) {
  for (int u = threadIdx.x % 32; u < units; u += 32) dst[u] = src[u];
}

//! The tile kernel. `tile_offsets[r]` = first global tile of row r (exclusive scan, rows + 1
//! entries). `Unit` is uint4 when every row is 16-byte aligned, else the element type.
template <class Unit, class Cache>
__global__ void __launch_bounds__(compact_threads)
    compact_kernel(Cache c, const_keep_plan plan, const int* tile_offsets, int* ticket, int* flags, int* word) {
  using T = typename Cache::value_type;
  extern __shared__ __align__(16) unsigned char compact_smem[];
  __shared__ int s_tile, s_row;
  if (block_failed(word)) return;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh, ps = c.page_size();
  const int units = static_cast<int>(c.head_dim() * sizeof(T) / sizeof(Unit));
  Unit* buf = reinterpret_cast<Unit*>(compact_smem);  // [compact_tile][2][units]
  const int total = tile_offsets[rows];
  for (;;) {
    if (threadIdx.x == 0) {
      const int g = atomicAdd(ticket, 1);
      const int row = g < total ? detail::row_of_tile(tile_offsets, rows, g) : -1;
      s_tile = g;
      s_row = row;
    }
    __syncthreads();
    const int g = s_tile, r = s_row;
    if (r < 0) return;
    const int tile = g - tile_offsets[r], s = r / kvh, h = r % kvh;
    const int cnt = plan.counts[r], j0 = tile * compact_tile, j1 = cnt < j0 + compact_tile ? cnt : j0 + compact_tile;
    const std::int32_t* pos = plan.row(r);
    // Read: warp w copies ranks j0 + w, j0 + w + 8, ... (K and V) into shared memory.
    const int warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int j = j0 + warp; j < j1; j += warps) {
      const int p = pos[j];
      if (p == j) continue;
      const int pg = c.page(s, h, p / ps);
      Unit* b = buf + static_cast<std::size_t>(j - j0) * 2 * units;
      copy_rows(b, reinterpret_cast<const Unit*>(c.key(pg, p % ps, h)), units);
      copy_rows(b + units, reinterpret_cast<const Unit*>(c.value(pg, p % ps, h)), units);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      atomicExch(&flags[g], 1);
      // Wait for the earlier tiles of this row that read slots this tile writes.
      for (int t = detail::first_blocking_tile(pos, j0, compact_tile); t < tile; ++t) {
        volatile int* f = flags + tile_offsets[r] + t;
        while (*f == 0) __nanosleep(64);
      }
      __threadfence();
    }
    __syncthreads();
    for (int j = j0 + warp; j < j1; j += warps) {
      if (pos[j] == j) continue;
      const int pg = c.page(s, h, j / ps);
      const Unit* b = buf + static_cast<std::size_t>(j - j0) * 2 * units;
      copy_rows(reinterpret_cast<Unit*>(c.key(pg, j % ps, h)), b, units);
      copy_rows(reinterpret_cast<Unit*>(c.value(pg, j % ps, h)), b + units, units);
    }
    __syncthreads();
  }
}

//! New lengths and the freed page ids, in (sequence, head, logical page) order.
template <class Cache>
__global__ void finish_compact_kernel(Cache c, const_keep_plan plan, const int* freed_offsets, std::int32_t* new_lens,
                                      std::int32_t* freed_pages, int* word) {
  if (failed(word)) return;
  const int kvh = c.num_kv_heads(), r = blockIdx.x, s = r / kvh, h = r % kvh;
  const int cnt = plan.counts[r];
  if (threadIdx.x == 0) new_lens[r] = cnt;
  const int first = (cnt + c.page_size() - 1) / c.page_size(), nfree = freed_offsets[r + 1] - freed_offsets[r];
  for (int i = threadIdx.x; i < nfree; i += blockDim.x) freed_pages[freed_offsets[r] + i] = c.page(s, h, first + i);
}

}  // namespace kvevict::cuda_backend

//! \file cuda/compact.cuh
//! In-place, order-preserving compaction on the device: the compaction agent. Not API.
//!
//! Row (s, h) keeps `count` positions p_0 < p_1 < ...; rank j moves from slot p_j to slot j <= p_j.
//! The ranks are cut into tiles of `compact_tile` tokens. A block takes the next (row, tile) by
//! ticket (tickets are handed out in start order, so every earlier tile belongs to a block that is
//! already running), loads the tile's K and V rows into shared memory with every load in flight at
//! once (cp.async, 16 bytes, a whole warp per token: K in one half, V in the other), publishes
//! "tile read", then waits until every earlier tile of the row that reads a slot this tile writes
//! has published (the first such tile found by a 32-way warp search of the positions), and writes.
//! So no slot is overwritten before the token it holds was read, blocks never wait on a block that
//! has not started, and the only scratch is one flag per tile: no K/V-sized buffer.
//!
//! Before it, one check kernel validates the plan (and the tables, for `compact` alone), marks every
//! listed page (a page listed twice fails the call), counts each row's freed pages, and its last
//! block turns the counts into offsets and checks the freed list's capacity. The compaction kernel
//! also writes the new lengths and the freed page ids. Two launches in all.
#pragma once

#include <cub/block/block_scan.cuh>

#include <cstddef>
#include <cstdint>

#include "../detail/compact_schedule.hpp"
#include "../keep_plan.hpp"
#include "device_info.cuh"
#include "geometry.cuh"
#include "ptx.cuh"

namespace kvevict::cuda_backend {

inline constexpr int compact_tile = 64;  //!< ranks per tile
inline constexpr int compact_threads = 256;

//! Outputs of `compact(cuda, ...)`, all device memory: new lengths per (sequence, KV head), the
//! freed page ids in (sequence, head, logical-page) order, and their number (one int). Each array
//! carries its capacity, checked on the host before anything is enqueued.
struct compact_outputs {
  std::int32_t* new_lens = nullptr;     // [new_lens_capacity]
  int new_lens_capacity = 0;            //!< entries of new_lens (>= plan_rows(cache))
  std::int32_t* freed_pages = nullptr;  // [freed_capacity]
  int freed_capacity = 0;               //!< entries of freed_pages (checked on the device against the pages freed)
  std::int32_t* num_freed = nullptr;    // [1]
};

template <class Cache>
struct compact_args {
  Cache cache;
  const_keep_plan plan;
  compact_outputs out;
  int tiles_per_row;  //!< ceil(plan.capacity / compact_tile): tickets map to (row, tile)
  bool check_tables;  //!< `compact` alone checks the cache tables; `evict`'s plan already did
  int* flags;         // [rows * tiles_per_row] zeroed per call
  int* ticket;        // [1] zeroed
  int* done;          // [1] zeroed: check blocks finished
  int* seen;          // [num_pages] zeroed
  int* freed;         // [rows + 1] freed pages per row, then (by the last check block) their offsets
  int* word;
};

//! The compaction agent's scratch: what the call's memset zeroes, and the rest.
//! Flags are sized for rows of the table's capacity (what the host knows without reading device
//! memory); tickets cover the plan's capacity, which is all a row's count can use.
template <class Cache>
struct compact_layout {
  std::size_t rows, max_tiles, pages, zeroed, plain;
  explicit compact_layout(const Cache& c) {
    rows = static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads();
    max_tiles = static_cast<std::size_t>(max_row_cap(c) + compact_tile - 1) / compact_tile;
    pages = static_cast<std::size_t>(c.num_pages() > 0 ? c.num_pages() : 1);
    zeroed = sizeof(int) * (rows * max_tiles + 2 + pages);
    plain = sizeof(int) * (rows + 1);
  }
  void carve(compact_args<Cache>& a, int capacity, void* zeroed_base, void* plain_base) const {
    a.flags = static_cast<int*>(zeroed_base);
    a.ticket = a.flags + rows * max_tiles;
    a.done = a.ticket + 1;
    a.seen = a.done + 1;
    a.freed = static_cast<int*>(plain_base);
    const std::size_t tiles = (static_cast<std::size_t>(capacity > 0 ? capacity : 1) + compact_tile - 1) / compact_tile;
    a.tiles_per_row = static_cast<int>(tiles < max_tiles ? tiles : max_tiles);
  }
};

//! Page-list entries the aliasing check visits: every (list, logical page) slot of a block table,
//! every index of a CSR table.
template <class Cache>
__host__ __device__ std::size_t listed_page_items(const Cache& c) {
  return static_cast<std::size_t>(c.num_seqs()) * (Cache::per_head_rows ? c.num_kv_heads() : 1) *
         static_cast<std::size_t>(c.max_pages_per_row());
}
template <class T, class L>
__host__ __device__ std::size_t listed_page_items(const csr_page_cache<T, L>& c) {
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

//! Items of the check kernel: plan entries, listed pages, table entries (grid-stride over the most).
template <class Cache>
std::size_t compact_check_items(const Cache& c, const_keep_plan plan, bool check_tables) {
  std::size_t n = static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads() *
                  static_cast<std::size_t>(plan.capacity > 0 ? plan.capacity : 1);
  if (frees_pages<Cache>::value && listed_page_items(c) > n) n = listed_page_items(c);
  if (check_tables && table_check_items(c) > n) n = table_check_items(c);
  return n;
}

//! The checks `compact` makes (as the host backend does) and the freed-page counts and offsets.
template <class Cache>
__global__ void __launch_bounds__(compact_threads) compact_check_kernel(compact_args<Cache> a, std::size_t items) {
  using scan = cub::BlockScan<int, compact_threads>;
  __shared__ typename scan::TempStorage tmp;
  __shared__ int s_last, s_carry;
  if (block_failed(a.word)) return;  // a failed plan: its rows may be unwritten
  const Cache& c = a.cache;
  const const_keep_plan& plan = a.plan;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh;
  const std::size_t cap = plan.capacity > 0 ? static_cast<std::size_t>(plan.capacity) : 1;
  const std::size_t entries = static_cast<std::size_t>(rows) * cap, pages = listed_page_items(c);
  const std::size_t tables = a.check_tables ? table_check_items(c) : 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    if (i < tables) check_item(c, i, a.word);
    if (frees_pages<Cache>::value && i < pages) {
      const int pg = listed_page(c, i);
      if (pg >= 0 && atomicAdd(&a.seen[pg], 1) != 0) raise(a.word, ck_page_listed_twice);
    }
    if (i >= entries) continue;
    const int r = static_cast<int>(i / cap), j = static_cast<int>(i % cap), s = r / kvh, h = r % kvh;
    const int n = c.seq_len(s, h), cnt = plan.counts[r];
    if (j == 0) {
      const int code = detail::check_plan_count(cnt, n, plan.capacity, !Cache::per_head_rows, plan.counts[s * kvh]);
      raise(a.word, code);
      if (code == ck_plan_count) {
        a.freed[r] = 0;
        continue;
      }
      const bool lists = Cache::per_head_rows || h == 0;
      a.freed[r] = lists && frees_pages<Cache>::value
                       ? c.num_row_pages(s, h) - (cnt + c.page_size() - 1) / c.page_size()
                       : 0;
    }
    if (cnt < 0 || cnt > n || cnt > plan.capacity || j >= cnt) continue;
    const std::int32_t p = plan.row(r)[j];
    raise(a.word, detail::check_plan_position(p, j, j > 0 ? plan.row(r)[j - 1] : 0, n));
  }
  // The last block: freed counts -> offsets (rows + 1 entries), and the capacity check.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_last = atomicAdd(a.done, 1) == static_cast<int>(gridDim.x) - 1;
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  if (threadIdx.x == 0) s_carry = 0;
  __syncthreads();
  for (int r0 = 0; r0 <= rows; r0 += compact_threads) {
    const int r = r0 + static_cast<int>(threadIdx.x);
    const int v = r < rows ? __ldcg(&a.freed[r]) : 0;
    int excl, total;
    scan(tmp).ExclusiveSum(v, excl, total);
    __syncthreads();
    if (r <= rows) a.freed[r] = s_carry + excl;
    __syncthreads();
    if (threadIdx.x == 0) s_carry += total;
    __syncthreads();
  }
  if (threadIdx.x == 0 && __ldcg(&a.freed[rows]) > a.out.freed_capacity) raise(a.word, ck_freed_capacity);
}

//! Copies one token's K and V (a row of `units` Units each) between global and shared memory, a
//! whole warp at once: lanes [0, 16) on K and [16, 32) on V for rows of up to 16 units.
template <bool Async, class Unit>
__device__ __forceinline__ void copy_kv(Unit* dk, Unit* dv, const Unit* sk, const Unit* sv, int units) {
  const int lane = threadIdx.x % 32, half = lane / 16;
  Unit* d = half ? dv : dk;
  const Unit* s = half ? sv : sk;
  for (int u = lane % 16; u < units; u += 16) {
    if constexpr (Async)
      cp_async16(d + u, s + u, 16);
    else
      d[u] = s[u];
  }
}

//! The mover. `Unit` is uint4 when every row is 16-byte aligned (then the reads are cp.async), else
//! the element type.
template <class Unit, class Cache>
__global__ void __launch_bounds__(compact_threads) compact_kernel(compact_args<Cache> a) {
  using T = typename Cache::value_type;
  constexpr bool vec = sizeof(Unit) == 16;
  extern __shared__ __align__(16) unsigned char compact_smem[];
  __shared__ int s_row, s_tile, s_wait;
  __shared__ float s_scale[compact_tile][2];  // the tile's K and V token scales, when the view holds them
  if (block_failed(a.word)) return;
  const Cache& c = a.cache;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh, ps = c.page_size();
  const int units = static_cast<int>(c.head_dim() * sizeof(T) / sizeof(Unit));
  Unit* buf = reinterpret_cast<Unit*>(compact_smem);  // [compact_tile][2][units]

  // Outputs, grid-stride over rows: new lengths and the freed page ids (offsets from the checks).
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const int s = r / kvh, h = r % kvh, cnt = a.plan.counts[r];
    if (threadIdx.x == 0) a.out.new_lens[r] = cnt;
    const int first = (cnt + ps - 1) / ps, at = a.freed[r], nfree = a.freed[r + 1] - at;
    for (int i = threadIdx.x; i < nfree; i += blockDim.x) a.out.freed_pages[at + i] = c.page(s, h, first + i);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0 && a.out.num_freed) *a.out.num_freed = a.freed[rows];

  const int warp = threadIdx.x / 32, warps = blockDim.x / 32, lane = threadIdx.x % 32;
  for (;;) {
    if (threadIdx.x == 0) {
      const int g = atomicAdd(a.ticket, 1);
      s_row = g / a.tiles_per_row;
      s_tile = g % a.tiles_per_row;
    }
    __syncthreads();
    const int r = s_row, tile = s_tile;
    if (r >= rows) return;
    const int cnt = a.plan.counts[r], j0 = tile * compact_tile;
    if (j0 >= cnt) {  // past the row's count: nothing to move, nobody waits for it
      __syncthreads();
      continue;
    }
    const int s = r / kvh, h = r % kvh, j1 = cnt < j0 + compact_tile ? cnt : j0 + compact_tile;
    const std::int32_t* pos = a.plan.row(r);
    // Read: every load of the tile in flight, then one wait.
    for (int j = j0 + warp; j < j1; j += warps) {
      const int p = pos[j];
      if (p == j) continue;
      const int pg = c.page(s, h, p / ps);
      Unit* b = buf + static_cast<std::size_t>(j - j0) * 2 * units;
      copy_kv<vec>(b, b + units, reinterpret_cast<const Unit*>(c.key(pg, p % ps, h)),
                   reinterpret_cast<const Unit*>(c.value(pg, p % ps, h)), units);
      if (lane < 2)
        if (const float* sc = detail::token_scale_ptr(c, lane == 0, pg, p % ps, h)) s_scale[j - j0][lane] = *sc;
    }
    if constexpr (vec) cp_async_commit();
    if (warp == 0) {  // while the loads fly: the first earlier tile that reads a slot this tile writes
      const int first = detail::first_blocking_tile_32way(j0, compact_tile, [&](int base, int step, int end) {
        const int idx = base + lane * step;
        return __ballot_sync(0xffffffffu, idx >= end || pos[idx] >= j0);
      });
      if (lane == 0) s_wait = first;
    }
    if constexpr (vec) cp_async_wait<0>();
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      atomicExch(&a.flags[r * a.tiles_per_row + tile], 1);
      for (int t = s_wait; t < tile; ++t) {
        volatile int* f = a.flags + r * a.tiles_per_row + t;
        while (*f == 0) __nanosleep(64);
      }
      __threadfence();
    }
    __syncthreads();
    for (int j = j0 + warp; j < j1; j += warps) {
      if (pos[j] == j) continue;
      const int pg = c.page(s, h, j / ps);
      const Unit* b = buf + static_cast<std::size_t>(j - j0) * 2 * units;
      copy_kv<false>(reinterpret_cast<Unit*>(c.key(pg, j % ps, h)), reinterpret_cast<Unit*>(c.value(pg, j % ps, h)), b,
                     b + units, units);
      if (lane < 2)
        if (auto* sc = detail::token_scale_ptr(c, lane == 0, pg, j % ps, h)) *sc = s_scale[j - j0][lane];
    }
    __syncthreads();
  }
}

//! Enqueues the checks and the compaction (two launches) on scratch the caller's memset zeroed.
template <class Cache>
status enqueue_compact_agent(cudaStream_t st, const Cache& c, const_keep_plan plan, const compact_outputs& out,
                             bool check_tables, void* zeroed, void* plain, int* word) {
  using T = typename Cache::value_type;
  compact_args<Cache> a{};
  a.cache = c;
  a.plan = plan;
  a.out = out;
  a.check_tables = check_tables;
  a.word = word;
  const compact_layout<Cache> l(c);
  l.carve(a, plan.capacity, zeroed, plain);
  const std::size_t items = compact_check_items(c, plan, check_tables);
  compact_check_kernel<<<grid_for(items, compact_threads, 1024), compact_threads, 0, st>>>(a, items);
  KVEVICT_TRY(check_launch("compaction checks: kernel launch"));
  // Every row starts 16-byte aligned when the row size and the bases are multiples of 16 bytes.
  const std::size_t row_bytes = c.head_dim() * sizeof(T);
  const bool vec = row_bytes % 16 == 0 && reinterpret_cast<std::uintptr_t>(c.k) % 16 == 0 &&
                   reinterpret_cast<std::uintptr_t>(c.v) % 16 == 0;
  device_info info;
  KVEVICT_TRY(current_device_info(info));
  const unsigned blocks = static_cast<unsigned>(info.sms) * 4u;
  const std::size_t smem = static_cast<std::size_t>(compact_tile) * 2 * row_bytes;
  if (vec) {
    KVEVICT_TRY(allow_dynamic_smem(compact_kernel<uint4, Cache>, smem));
    compact_kernel<uint4><<<blocks, compact_threads, smem, st>>>(a);
  } else {
    KVEVICT_TRY(allow_dynamic_smem(compact_kernel<T, Cache>, smem));
    compact_kernel<T><<<blocks, compact_threads, smem, st>>>(a);
  }
  return check_launch("compaction: kernel launch");
}

}  // namespace kvevict::cuda_backend

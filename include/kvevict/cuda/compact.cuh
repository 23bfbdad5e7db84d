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
//! Before it, one check kernel validates the plan (and the tables, for `compact` alone) and marks
//! every listed page (a page listed twice fails the call); `evict` skips it: its plan check kernel
//! marks the pages and the plan is the selection's own. The compaction kernel itself, in every
//! block before anything is written, checks the plan's counts and sums the pages each row frees:
//! every block reaches the same verdict from the same data, so a plan whose freed pages overflow
//! the list (or whose counts are wrong) fails with nothing written. It then writes the new lengths
//! and the freed page ids (offsets by a block scan over the rows, carried across chunks) and moves
//! the tiles. Two launches for `compact`, one for `evict`'s compaction.
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
  int* seen;          // [num_pages] zeroed: page marks (by the check kernel, or `evict`'s plan checks)
  int* word;
};

//! The compaction agent's scratch: zeroed by the call's memset, a flag per tile, the ticket, a mark
//! per page; plain, each row's first tier row (for `compact` to a tier, cuda/tier.cuh). Flags are sized for rows of the table's capacity (what the host knows without
//! reading device memory); tickets cover the plan's capacity, which is all a row's count can use.
template <class Cache>
struct compact_layout {
  std::size_t rows, max_tiles, pages, zeroed, plain;
  explicit compact_layout(const Cache& c) {
    rows = static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads();
    max_tiles = static_cast<std::size_t>(max_row_cap(c) + compact_tile - 1) / compact_tile;
    pages = static_cast<std::size_t>(c.num_pages() > 0 ? c.num_pages() : 1);
    zeroed = sizeof(int) * (rows * max_tiles + 1 + pages);
    plain = sizeof(std::int64_t) * (rows + 1);
  }
  void carve(compact_args<Cache>& a, int capacity, void* zeroed_base) const {
    a.flags = static_cast<int*>(zeroed_base);
    a.ticket = a.flags + rows * max_tiles;
    a.seen = a.ticket + 1;
    const std::size_t tiles = (static_cast<std::size_t>(capacity > 0 ? capacity : 1) + compact_tile - 1) / compact_tile;
    a.tiles_per_row = static_cast<int>(tiles < max_tiles ? tiles : max_tiles);
  }
  //! The page marks within the zeroed scratch (for `evict`'s plan check kernel).
  int* seen(void* zeroed_base) const { return static_cast<int*>(zeroed_base) + rows * max_tiles + 1; }
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

//! Marks entry `i`'s page (a page listed twice fails the call). Caches that free no pages list none.
template <class Cache>
__device__ void mark_listed_page(const Cache& c, std::size_t i, int* seen, int* word) {
  if constexpr (frees_pages<Cache>::value) {
    if (i >= listed_page_items(c)) return;
    const int pg = listed_page(c, i);
    if (pg >= 0 && atomicAdd(&seen[pg], 1) != 0) raise(word, ck_page_listed_twice);
  }
}
//! Items `mark_listed_page` visits (0 for caches that free no pages).
template <class Cache>
std::size_t page_mark_items(const Cache& c) {
  return frees_pages<Cache>::value ? listed_page_items(c) : 0;
}

//! Items of the check kernel: plan entries, listed pages, table entries (grid-stride over the most).
template <class Cache>
std::size_t compact_check_items(const Cache& c, const_keep_plan plan, bool check_tables) {
  std::size_t n = static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads() *
                  static_cast<std::size_t>(plan.capacity > 0 ? plan.capacity : 1);
  if (page_mark_items(c) > n) n = page_mark_items(c);
  if (check_tables && table_check_items(c) > n) n = table_check_items(c);
  return n;
}

//! The checks `compact` makes (as the host backend does): tables, plan rows, page marks.
template <class Cache>
__global__ void __launch_bounds__(compact_threads) compact_check_kernel(compact_args<Cache> a, std::size_t items) {
  if (failed(a.word)) return;  // a failed plan: its rows may be unwritten
  const Cache& c = a.cache;
  const const_keep_plan& plan = a.plan;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh;
  const std::size_t cap = plan.capacity > 0 ? static_cast<std::size_t>(plan.capacity) : 1;
  const std::size_t entries = static_cast<std::size_t>(rows) * cap;
  const std::size_t tables = a.check_tables ? table_check_items(c) : 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    if (i < tables) check_item(c, i, a.word);
    mark_listed_page(c, i, a.seen, a.word);
    if (i >= entries) continue;
    const int r = static_cast<int>(i / cap), j = static_cast<int>(i % cap), s = r / kvh, h = r % kvh;
    const int n = c.seq_len(s, h), cnt = plan.counts[r];
    if (j == 0)
      raise(a.word, detail::check_plan_count(cnt, n, plan.capacity, !Cache::per_head_rows, plan.counts[s * kvh]));
    if (cnt < 0 || cnt > n || cnt > plan.capacity || j >= cnt) continue;
    const std::int32_t p = plan.row(r)[j];
    raise(a.word, detail::check_plan_position(p, j, j > 0 ? plan.row(r)[j - 1] : 0, n));
  }
}

//! Pages row `r` frees when it keeps `plan.counts[r]` tokens (a shared table's pages count once,
//! on head 0); 0 for caches that free no pages.
template <class Cache>
__device__ int row_freed_pages(const Cache& c, const const_keep_plan& plan, int r) {
  if constexpr (!frees_pages<Cache>::value) {
    return 0;
  } else {
    const int kvh = c.num_kv_heads(), s = r / kvh, h = r % kvh;
    if (!Cache::per_head_rows && h != 0) return 0;
    return c.num_row_pages(s, h) - (plan.counts[r] + c.page_size() - 1) / c.page_size();
  }
}

//! The compaction's verdict, by every thread of a block alike: `ck_ok`, or the lowest code among
//! the rows' counts (against each row's length and the plan's capacity) and the freed pages' total
//! (against the list's capacity). Every block computes it from the same data, so on failure no
//! block writes.
template <class Cache>
__device__ int compact_verdict(const compact_args<Cache>& a) {
  using scan = cub::BlockScan<int, compact_threads>;
  __shared__ typename scan::TempStorage tmp;
  __shared__ int s_code;
  const Cache& c = a.cache;
  const const_keep_plan& plan = a.plan;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh;
  if (threadIdx.x == 0) s_code = ck_count_;
  __syncthreads();
  int total = 0;
  for (int r0 = 0; r0 < rows; r0 += compact_threads) {
    const int r = r0 + static_cast<int>(threadIdx.x);
    int v = 0;
    if (r < rows) {
      const int s = r / kvh, h = r % kvh;
      const int code = detail::check_plan_count(plan.counts[r], c.seq_len(s, h), plan.capacity, !Cache::per_head_rows,
                                                plan.counts[s * kvh]);
      if (code != ck_ok)
        atomicMin(&s_code, code);
      else
        v = row_freed_pages(c, plan, r);
    }
    int excl, sum;
    scan(tmp).ExclusiveSum(v, excl, sum);
    __syncthreads();
    total += sum;
  }
  // Every thread decides from the same values (the scans' aggregates reach every thread), so no
  // thread writes s_code after the loop: thread 0's write there raced with the other threads' loads
  // the compiler hoisted out of its condition (compute-sanitizer racecheck, H200, 2026-11-29).
  const int seen = s_code;
  const int code = seen != ck_count_ ? seen : total > a.out.freed_capacity ? ck_freed_capacity : ck_ok;
  __syncthreads();
  return code;
}

//! The compaction's outputs, by every block alike: first the verdict (`compact_verdict`), then the
//! new lengths and the freed page ids of the rows `r % gridDim.x == blockIdx.x`, at offsets from a
//! block scan over all rows. Returns false (for the whole block) when the call fails.
template <class Cache>
__device__ bool compact_outputs_stage(const compact_args<Cache>& a) {
  using scan = cub::BlockScan<int, compact_threads>;
  __shared__ typename scan::TempStorage tmp;
  __shared__ int s_at[compact_threads], s_nf[compact_threads];
  const int code = compact_verdict(a);
  if (code != ck_ok) {
    if (threadIdx.x == 0) raise(a.word, code);
    return false;
  }
  const Cache& c = a.cache;
  const const_keep_plan& plan = a.plan;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh, ps = c.page_size();
  int carry = 0;
  for (int r0 = 0; r0 < rows; r0 += compact_threads) {
    const int r = r0 + static_cast<int>(threadIdx.x);
    const int v = r < rows ? row_freed_pages(c, plan, r) : 0;
    int excl, sum;
    scan(tmp).ExclusiveSum(v, excl, sum);
    s_at[threadIdx.x] = carry + excl;
    s_nf[threadIdx.x] = v;
    __syncthreads();
    const int end = rows - r0 < compact_threads ? rows - r0 : compact_threads;
    const int blocks = static_cast<int>(gridDim.x);
    for (int i = detail::first_owned_in_chunk(r0, blocks, static_cast<int>(blockIdx.x)); i < end; i += blocks) {
      const int rr = r0 + i, s = rr / kvh, h = rr % kvh, cnt = plan.counts[rr], first = (cnt + ps - 1) / ps;
      if (threadIdx.x == 0) a.out.new_lens[rr] = cnt;
      for (int k = threadIdx.x; k < s_nf[i]; k += blockDim.x) a.out.freed_pages[s_at[i] + k] = c.page(s, h, first + k);
    }
    carry += sum;
    __syncthreads();
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *a.out.num_freed = carry;
  return true;
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
  // The tile's source slots and source / destination page ids (page ids -1: the token stays where
  // it is), looked up by one thread per rank at once, so no warp waits on a position and then on
  // its page id per token before it can issue the token's copy.
  __shared__ int s_src[compact_tile], s_src_page[compact_tile], s_dst_page[compact_tile];
  if (block_failed(a.word)) return;
  const Cache& c = a.cache;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh, ps = c.page_size();
  const int units = static_cast<int>(c.head_dim() * sizeof(T) / sizeof(Unit));
  Unit* buf = reinterpret_cast<Unit*>(compact_smem);  // [compact_tile][2][units]

  if (!compact_outputs_stage(a)) return;

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
    for (int k = threadIdx.x; k < j1 - j0; k += blockDim.x) {
      const int j = j0 + k, p = pos[j];
      s_src[k] = p;
      s_src_page[k] = p == j ? -1 : c.page(s, h, p / ps);
      s_dst_page[k] = p == j ? -1 : c.page(s, h, j / ps);
    }
    __syncthreads();
    // Read: every load of the tile in flight, then one wait.
    for (int j = j0 + warp; j < j1; j += warps) {
      const int p = s_src[j - j0], pg = s_src_page[j - j0];
      if (pg < 0) continue;
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
      const int pg = s_dst_page[j - j0];
      if (pg < 0) continue;
      const Unit* b = buf + static_cast<std::size_t>(j - j0) * 2 * units;
      copy_kv<false>(reinterpret_cast<Unit*>(c.key(pg, j % ps, h)), reinterpret_cast<Unit*>(c.value(pg, j % ps, h)), b,
                     b + units, units);
      if (lane < 2)
        if (auto* sc = detail::token_scale_ptr(c, lane == 0, pg, j % ps, h)) *sc = s_scale[j - j0][lane];
    }
    __syncthreads();
  }
}

//! Enqueues the compaction on scratch the caller's memset zeroed: the check kernel when
//! `run_checks` (`compact` alone; `check_tables` too), then the compaction kernel.
template <class Cache>
status enqueue_compact_agent(cudaStream_t st, const Cache& c, const_keep_plan plan, const compact_outputs& out,
                             bool run_checks, void* zeroed, int* word) {
  using T = typename Cache::value_type;
  compact_args<Cache> a{};
  a.cache = c;
  a.plan = plan;
  a.out = out;
  a.check_tables = run_checks;
  a.word = word;
  const compact_layout<Cache> l(c);
  l.carve(a, plan.capacity, zeroed);
  if (run_checks) {
    const std::size_t items = compact_check_items(c, plan, true);
    compact_check_kernel<<<grid_for(items, compact_threads, 1024), compact_threads, 0, st>>>(a, items);
    KVEVICT_TRY(check_launch("compaction checks: kernel launch"));
  }
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

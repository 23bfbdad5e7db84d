//! \file cuda/tier.cuh
//! Evict to a tier and bring back, on the device: `compact(cuda, ..., tier)` copies every evicted
//! K/V row, with its original position, into caller-owned memory before compacting, and
//! `restore(cuda, ...)` merges chosen positions back into their rows in order. The same contract as
//! the host's (algorithm/tier.hpp), the same tier layout, the same checks (detail/checks.hpp).
//!
//! The tier may be device memory or pinned host memory the device can address (`cudaMallocHost`,
//! or `cudaHostRegister` on a system with unified addressing): the kernels write and read it
//! through its pointers, over the interconnect for host memory.
//!
//! `compact` to a tier, 5 stream operations: the call's memset; the compaction's check kernel
//! (tables, plan rows, page marks); one block that takes the compaction's verdict (counts, freed
//! list), sums each row's evicted tokens into their first tier rows, and checks the tier's
//! capacity and scale arrays; the offload kernel (blocks over (row, 256-slot chunk): which slots of
//! the chunk the plan drops, by one binary search each and a block scan, then a warp per token
//! copies K and V, the scales and the position); the compaction kernel. Nothing reaches the tier
//! or the cache unless every check passed.
//!
//! `restore`, 3 stream operations: the memset, a check kernel (tables, page marks, each row's
//! counts, lengths and tier rows, each current and requested position), and one block per row that
//! first writes the requested tokens above every current one, then walks the current tokens from
//! the top in tiles of 64: a tile's moving K and V rows are all loaded to shared memory before any
//! is stored (a current token only moves up, to `i + requested positions below it`, so no slot is
//! written before the token in it was read), then stored with the requested tokens that fall
//! between the tile's tokens. `merged` may be `current`'s arrays (as on the host), not `request`'s.
#pragma once

#include <cub/block/block_scan.cuh>

#include <cstddef>
#include <cstdint>

#include "../algorithm/tier.hpp"
#include "algorithm.cuh"

namespace kvevict {
namespace cuda_backend {

inline constexpr int offload_chunk = compact_threads;  //!< slots a block visits per (row, chunk) item

template <class Cache>
struct offload_args {
  compact_args<Cache> cmp;                          //!< cache, plan, outputs, word
  evicted_rows<typename Cache::value_type> tier;    //!< the caller's tier
  std::int64_t* first;                              //!< [rows + 1] each row's first tier row (scratch)
  int chunks_per_row;
};

//! One block: the compaction's verdict, each row's first tier row (scratch) and the tier's checks.
template <class Cache>
__global__ void __launch_bounds__(compact_threads) tier_offsets_kernel(offload_args<Cache> a) {
  using scan = cub::BlockScan<long long, compact_threads>;
  __shared__ typename scan::TempStorage tmp;
  if (block_failed(a.cmp.word)) return;
  const int code = compact_verdict(a.cmp);
  if (code != ck_ok) {
    if (threadIdx.x == 0) raise(a.cmp.word, code);
    return;
  }
  const Cache& c = a.cmp.cache;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh;
  long long carry = 0;
  for (int r0 = 0; r0 < rows; r0 += compact_threads) {
    const int r = r0 + static_cast<int>(threadIdx.x);
    const long long v = r < rows ? c.seq_len(r / kvh, r % kvh) - a.cmp.plan.counts[r] : 0;
    long long excl, sum;
    scan(tmp).ExclusiveSum(v, excl, sum);
    if (r < rows) a.first[r] = carry + excl;
    carry += sum;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    a.first[rows] = carry;
    if (carry > a.tier.capacity) raise(a.cmp.word, ck_tier_capacity);
    raise(a.cmp.word, detail::check_tier_scales(carry, detail::holds_token_scales(c, true), a.tier.key_scales != nullptr,
                                                detail::holds_token_scales(c, false),
                                                a.tier.value_scales != nullptr));
  }
}

//! Copies the evicted tokens to the tier: blocks over (row, chunk of `offload_chunk` slots).
template <class Unit, class Cache>
__global__ void __launch_bounds__(compact_threads) offload_kernel(offload_args<Cache> a) {
  using scan = cub::BlockScan<int, compact_threads>;
  __shared__ typename scan::TempStorage tmp;
  __shared__ int s_slot[offload_chunk];
  __shared__ std::int64_t s_index[offload_chunk];
  if (block_failed(a.cmp.word)) return;
  const Cache& c = a.cmp.cache;
  const const_keep_plan& plan = a.cmp.plan;
  const auto& tier = a.tier;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh, ps = c.page_size();
  const int units = static_cast<int>(c.head_dim() * sizeof(typename Cache::value_type) / sizeof(Unit));
  const int d = c.head_dim();
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r <= rows; r += gridDim.x * blockDim.x)
    tier.row_offsets[r] = a.first[r];
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32, lane = threadIdx.x % 32;
  const long long items = static_cast<long long>(rows) * a.chunks_per_row;
  for (long long item = blockIdx.x; item < items; item += gridDim.x) {
    const int r = static_cast<int>(item / a.chunks_per_row), s = r / kvh, h = r % kvh;
    const int n = c.seq_len(s, h), t0 = static_cast<int>(item % a.chunks_per_row) * offload_chunk;
    if (t0 >= n) continue;  // the same for the whole block
    const int cnt = plan.counts[r];
    const std::int32_t* pos = plan.row(r);
    const detail::chunk_kept k = detail::kept_around_chunk(pos, cnt, t0, offload_chunk);
    const int t = t0 + static_cast<int>(threadIdx.x);
    const bool evicted = t < n && detail::evicted_in_chunk(pos, k, t);
    int excl;
    scan(tmp).ExclusiveSum(evicted ? 1 : 0, excl);
    s_slot[threadIdx.x] = evicted ? t : -1;
    s_index[threadIdx.x] = detail::offload_index(a.first[r], t0, k, excl);
    __syncthreads();
    for (int i = warp; i < offload_chunk; i += warps) {
      const int slot = s_slot[i];
      if (slot < 0) continue;
      const std::int64_t at = s_index[i];
      const int pg = c.page(s, h, slot / ps);
      copy_kv<false>(reinterpret_cast<Unit*>(tier.keys + at * d), reinterpret_cast<Unit*>(tier.values + at * d),
                     reinterpret_cast<const Unit*>(c.key(pg, slot % ps, h)),
                     reinterpret_cast<const Unit*>(c.value(pg, slot % ps, h)), units);
      if (lane == 0) tier.positions[at] = slot;
      if (lane < 2)
        if (const float* sc = detail::token_scale_ptr(c, lane == 0, pg, slot % ps, h))
          (lane == 0 ? tier.key_scales : tier.value_scales)[at] = *sc;
    }
    __syncthreads();
  }
}

//! Host-side checks of the tier's scalars (the device checks its sizes against the plan).
template <class T>
status check_tier_scalars(const evicted_rows<T>& tier, int rows) {
  KVEVICT_TRY(detail::check_tier_row_offsets(tier, rows));
  if (tier.capacity < 0) return make_error(errc::invalid_argument, "tier.capacity", "must be >= 0");
  if (tier.capacity > 0 && (tier.keys == nullptr || tier.values == nullptr || tier.positions == nullptr))
    return make_error(errc::invalid_argument, "tier", "null keys, values or positions with a positive capacity");
  return ok_status();
}

//! 16-byte units when every K / V row of the cache and of the tier starts 16-byte aligned.
template <class Cache>
bool rows_16_aligned(const Cache& c, const void* tier_keys, const void* tier_values) {
  const std::size_t row = c.head_dim() * sizeof(typename Cache::value_type);
  auto al = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  return row % 16 == 0 && al(c.k) && al(c.v) && al(tier_keys) && al(tier_values);
}

template <class Cache>
struct restore_args {
  Cache cache;
  const_keep_plan current, request;
  keep_plan merged;
  evicted_rows<typename Cache::value_type> tier;
  int* seen;  // [num_pages] zeroed
  int* word;
};

//! The checks `restore` makes (as the host backend does): tables, page marks, rows, positions.
template <class Cache>
__global__ void restore_check_kernel(restore_args<Cache> a, std::size_t items) {
  const Cache& c = a.cache;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh;
  const int cap = a.current.capacity > a.request.capacity ? a.current.capacity : a.request.capacity;
  const std::size_t per_row = cap > 0 ? static_cast<std::size_t>(cap) : 1;
  const std::size_t entries = static_cast<std::size_t>(rows) * per_row;
  const bool tier_arrays = a.tier.positions != nullptr && a.tier.keys != nullptr && a.tier.values != nullptr;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    if (i < table_check_items(c)) check_item(c, i, a.word);
    mark_listed_page(c, i, a.seen, a.word);
    if (i >= entries) continue;
    const int r = static_cast<int>(i / per_row), j = static_cast<int>(i % per_row), s = r / kvh, h = r % kvh;
    const int cc = a.current.counts[r], m = a.request.counts[r];
    const std::int64_t b = a.tier.row_offsets[r], e = a.tier.row_offsets[r + 1];
    const int code = detail::check_restore_row(cc, a.current.capacity, m, a.request.capacity, !Cache::per_head_rows,
                                               a.current.counts[s * kvh], c.seq_len(s, h), a.merged.capacity, b, e,
                                               a.tier.capacity, tier_arrays);
    if (j == 0) {
      raise(a.word, code);
      raise(a.word, detail::check_tier_scales(m, detail::holds_token_scales(c, true), a.tier.key_scales != nullptr,
                                              detail::holds_token_scales(c, false), a.tier.value_scales != nullptr));
    }
    if (code != ck_ok) continue;
    const std::int32_t* cur = a.current.row(r);
    if (j < cc) raise(a.word, detail::check_restore_current(cur, j));
    if (j < m) raise(a.word, detail::check_restore_request(cur, cc, a.request.row(r), j, a.tier.positions, b, e));
  }
}

//! Copies requested token `k` of row (s, h) from the tier to `slot`, with its scales and position
//! (one warp).
template <class Unit, class Cache>
__device__ void restore_one(const restore_args<Cache>& a, int s, int h, std::int64_t b, std::int64_t e,
                            const std::int32_t* req, int k, int slot, std::int32_t* out, int units) {
  const Cache& c = a.cache;
  const int ps = c.page_size(), d = c.head_dim(), lane = threadIdx.x % 32;
  const std::int64_t at = detail::lower_bound_of(a.tier.positions, b, e, req[k]);
  const int pg = c.page(s, h, slot / ps);
  copy_kv<false>(reinterpret_cast<Unit*>(c.key(pg, slot % ps, h)), reinterpret_cast<Unit*>(c.value(pg, slot % ps, h)),
                 reinterpret_cast<const Unit*>(a.tier.keys + at * d),
                 reinterpret_cast<const Unit*>(a.tier.values + at * d), units);
  if (lane < 2)
    if (auto* sc = detail::token_scale_ptr(c, lane == 0, pg, slot % ps, h))
      *sc = (lane == 0 ? a.tier.key_scales : a.tier.value_scales)[at];
  if (lane == 0) out[slot] = req[k];
}

//! One block per row (grid-stride): see the file comment.
template <class Unit, class Cache>
__global__ void __launch_bounds__(compact_threads) restore_kernel(restore_args<Cache> a) {
  constexpr bool vec = sizeof(Unit) == 16;
  extern __shared__ __align__(16) unsigned char restore_smem[];
  __shared__ int s_pos[compact_tile], s_below[compact_tile], s_below_prev[compact_tile];
  __shared__ float s_scale[compact_tile][2];
  if (block_failed(a.word)) return;
  const Cache& c = a.cache;
  const int kvh = c.num_kv_heads(), rows = c.num_seqs() * kvh, ps = c.page_size();
  const int units = static_cast<int>(c.head_dim() * sizeof(typename Cache::value_type) / sizeof(Unit));
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32, lane = threadIdx.x % 32;
  Unit* buf = reinterpret_cast<Unit*>(restore_smem);  // [compact_tile][2][units]
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const int s = r / kvh, h = r % kvh, cc = a.current.counts[r], m = a.request.counts[r];
    const std::int32_t* cur = a.current.row(r);
    const std::int32_t* req = a.request.row(r);
    std::int32_t* out = a.merged.row(r);
    const std::int64_t b = a.tier.row_offsets[r], e = a.tier.row_offsets[r + 1];
    // Requested tokens above every current one: slots k + cc, which hold no current token.
    const int top = cc > 0 ? static_cast<int>(detail::lower_bound_of(req, 0, m, cur[cc - 1])) : 0;
    for (int k = top + warp; k < m; k += warps) restore_one<Unit>(a, s, h, b, e, req, k, k + cc, out, units);
    // Current tokens from the top, a tile at a time: token i moves to i + below(i), and the
    // requested tokens k in [below(i - 1), below(i)) go to slots k + i.
    for (int hi = cc; hi > 0; hi -= compact_tile) {
      const int lo = hi - compact_tile > 0 ? hi - compact_tile : 0;
      for (int i = lo + warp; i < hi; i += warps) {
        const int p = cur[i];
        const int below = static_cast<int>(detail::lower_bound_of(req, 0, m, p));
        const int below_prev = i > 0 ? static_cast<int>(detail::lower_bound_of(req, 0, m, cur[i - 1])) : 0;
        if (lane == 0) {
          s_pos[i - lo] = p;
          s_below[i - lo] = below;
          s_below_prev[i - lo] = below_prev;
        }
        if (below == 0) continue;  // stays in its slot
        const int pg = c.page(s, h, i / ps);
        Unit* t = buf + static_cast<std::size_t>(i - lo) * 2 * units;
        copy_kv<vec>(t, t + units, reinterpret_cast<const Unit*>(c.key(pg, i % ps, h)),
                     reinterpret_cast<const Unit*>(c.value(pg, i % ps, h)), units);
        if (lane < 2)
          if (const float* sc = detail::token_scale_ptr(c, lane == 0, pg, i % ps, h)) s_scale[i - lo][lane] = *sc;
      }
      if constexpr (vec) {
        cp_async_commit();
        cp_async_wait<0>();
      }
      __syncthreads();
      for (int i = lo + warp; i < hi; i += warps) {
        const int below = s_below[i - lo], dest = i + below;
        if (below > 0) {
          const int pg = c.page(s, h, dest / ps);
          const Unit* t = buf + static_cast<std::size_t>(i - lo) * 2 * units;
          copy_kv<false>(reinterpret_cast<Unit*>(c.key(pg, dest % ps, h)),
                         reinterpret_cast<Unit*>(c.value(pg, dest % ps, h)), t, t + units, units);
          if (lane < 2)
            if (auto* sc = detail::token_scale_ptr(c, lane == 0, pg, dest % ps, h)) *sc = s_scale[i - lo][lane];
        }
        if (lane == 0) out[dest] = s_pos[i - lo];
        for (int k = s_below_prev[i - lo]; k < below; ++k) restore_one<Unit>(a, s, h, b, e, req, k, k + i, out, units);
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) a.merged.counts[r] = cc + m;
  }
}

}  // namespace cuda_backend

//! `compact(cuda, ...)` that first copies every evicted K/V row, with its original position, to
//! `tier` (device memory, or pinned host memory the device addresses; `evicted_row_count(cache,
//! plan)` rows, which only the device knows: a smaller `tier.capacity` fails the call), then
//! compacts as `compact(cuda, ...)` does. The tier's layout and meaning are the host's (see
//! `evicted_rows`): `restore` on either backend brings tokens back from it.
//!
//! Checks the tier's scalars on the host (row offsets for every row; keys, values and positions
//! non-null when `tier.capacity > 0`) and everything else on the device before anything is
//! written (`device_status`): on error neither the cache nor the tier is touched.
//! Workspace: `compact_workspace_bytes(cuda, cache)`. Five stream operations.
template <class Cache>
status compact(cuda_t exec, const Cache& cache, const_keep_plan plan, const device_compact_result& out,
               const evicted_rows<typename Cache::value_type>& tier, void* workspace, std::size_t workspace_bytes) {
  using namespace cuda_backend;
  const compact_dispatch<Cache> d{cache, plan};
  KVEVICT_TRY(d.check_scalars(out));
  KVEVICT_TRY(check_tier_scalars(tier, plan_rows(cache)));
  call_layout<1> l{};
  l.req[0] = d.request();
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, l.total()));
  const auto parts = l.carve(workspace);
  KVEVICT_TRY(reset_call(exec.stream, parts.word, parts.zero_bytes));
  offload_args<Cache> a{};
  a.cmp.cache = cache;
  a.cmp.plan = plan;
  a.cmp.out = out;
  a.cmp.check_tables = true;
  a.cmp.word = parts.word;
  const compact_layout<Cache> cl(cache);
  cl.carve(a.cmp, plan.capacity, parts.zeroed[0]);
  a.tier = tier;
  a.first = static_cast<std::int64_t*>(parts.plain[0]);
  a.chunks_per_row = (max_row_cap(cache) + offload_chunk - 1) / offload_chunk;
  const std::size_t items = compact_check_items(cache, plan, true);
  compact_check_kernel<<<grid_for(items, compact_threads, 1024), compact_threads, 0, exec.stream>>>(a.cmp, items);
  KVEVICT_TRY(check_launch("compaction checks: kernel launch"));
  tier_offsets_kernel<<<1, compact_threads, 0, exec.stream>>>(a);
  KVEVICT_TRY(check_launch("tier offsets: kernel launch"));
  device_info info;
  KVEVICT_TRY(current_device_info(info));
  const unsigned blocks = static_cast<unsigned>(info.sms) * 4u;
  if (rows_16_aligned(cache, tier.keys, tier.values))
    offload_kernel<uint4><<<blocks, compact_threads, 0, exec.stream>>>(a);
  else
    offload_kernel<typename Cache::value_type><<<blocks, compact_threads, 0, exec.stream>>>(a);
  KVEVICT_TRY(check_launch("offload to the tier: kernel launch"));
  return enqueue_compact_agent(exec.stream, cache, plan, out, false, parts.zeroed[0], parts.word);
}

//! Brings evicted tokens back on the device, as `restore(host, ...)` does (same arguments, same
//! checks, same result): for every (sequence, head) row, the positions `request` lists are merged
//! with the row's current tokens (`current`), in order; `merged` receives the row's positions.
//! Grow each row to `current.counts[r] + request.counts[r]` tokens first, as for any append. The
//! tier (device memory, or pinned host memory the device addresses) is only read. Every pointer
//! in `current`, `request`, `merged` and `tier` is device-accessible memory; `merged` may be
//! `current`'s arrays, not `request`'s.
//!
//! Host checks: the arrays and their rows, the tier's row offsets; device checks (read back with
//! `device_status`), before anything is written: tables, page marks, each row's counts, length and
//! tier rows, and every position. Workspace: `compact_workspace_bytes(cuda, cache)`. Three stream
//! operations; one block per row.
template <class Cache>
status restore(cuda_t exec, const Cache& cache, const_keep_plan current,
               const evicted_rows<typename Cache::value_type>& tier, const_keep_plan request, keep_plan merged,
               void* workspace, std::size_t workspace_bytes) {
  using namespace cuda_backend;
  static_assert(is_paged_kv_cache_v<Cache>,
                "kvevict: Cache does not model the paged KV cache contract (see concepts.hpp)");
  static_assert(is_mutable_cache_v<Cache>, "kvevict: restore writes K and V: pass a view over mutable keys and values");
  KVEVICT_TRY(check_device_shape(cache));
  const int rows = plan_rows(cache);
  KVEVICT_TRY(detail::check_restore_arrays(rows, current, tier, request, as_const(merged)));
  call_layout<1> l{};
  l.req[0] = compact_dispatch<Cache>{cache, current}.request();
  KVEVICT_TRY(detail::check_workspace(workspace, workspace_bytes, l.total()));
  const auto parts = l.carve(workspace);
  KVEVICT_TRY(reset_call(exec.stream, parts.word, parts.zero_bytes));
  restore_args<Cache> a{cache, current, request, merged, tier, compact_layout<Cache>(cache).seen(parts.zeroed[0]),
                        parts.word};
  const int cap = current.capacity > request.capacity ? current.capacity : request.capacity;
  std::size_t items = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cap > 0 ? cap : 1);
  if (table_check_items(cache) > items) items = table_check_items(cache);
  if (page_mark_items(cache) > items) items = page_mark_items(cache);
  restore_check_kernel<<<grid_for(items, threads_per_block, 1024), threads_per_block, 0, exec.stream>>>(a, items);
  KVEVICT_TRY(check_launch("restore checks: kernel launch"));
  device_info info;
  KVEVICT_TRY(current_device_info(info));
  const unsigned blocks = static_cast<unsigned>(rows < info.sms * 4 ? (rows > 0 ? rows : 1) : info.sms * 4);
  const std::size_t smem = static_cast<std::size_t>(compact_tile) * 2 * cache.head_dim() *
                           sizeof(typename Cache::value_type);
  if (rows_16_aligned(cache, tier.keys, tier.values)) {
    KVEVICT_TRY(allow_dynamic_smem(restore_kernel<uint4, Cache>, smem));
    restore_kernel<uint4><<<blocks, compact_threads, smem, exec.stream>>>(a);
  } else {
    using T = typename Cache::value_type;
    KVEVICT_TRY(allow_dynamic_smem(restore_kernel<T, Cache>, smem));
    restore_kernel<T><<<blocks, compact_threads, smem, exec.stream>>>(a);
  }
  return check_launch("restore: kernel launch");
}

}  // namespace kvevict

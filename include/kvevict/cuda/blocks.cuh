//! \file cuda/blocks.cuh
//! Block, segment and SABlock granularities on the device (ChunkKV, SentenceKV-style, SABlock).
//! One block of threads per row (a (sequence, KV head), or a sequence for shared heads), in
//! stages (`row_stages`): the row's scores, segmentation (`device_segmenter<S>`: one
//! specialisation per segmenter), SABlock's price bisection or the units kept whole (a radix
//! select weighted by the units' lengths, no sort), an exact radix-select fill, the plan row.
//! Every ordered write (delimiter cuts, merged ends, tied fill entries, plan rows) is one
//! block-wide scan over contiguous per-thread shares (`enumerate_weighted`), and the merge / split
//! rules run on the whole block (pointer doubling, detail::merge_successor), so no stage walks the
//! row on one thread (SABlock's score total is added in runs of about sqrt(count) clauses, a thread
//! per run, in the host's fixed order, detail::clauses_total). SABlock's bisection evaluates only
//! the sentences whose kept set may still change, as the host's (detail::sablock_settled), where
//! the row's scratch has room. The per-segment arithmetic is the host's own
//! (detail/sablock_core.hpp, segment/segmenters.hpp), so the plans are the host's bit for bit. Not
//! API.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cfloat>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../detail/radix_select.hpp"
#include "../detail/sablock_core.hpp"
#include "../granularity/block_granularities.hpp"
#include "../keep_plan.hpp"
#include "../segment/segmenters.hpp"
#include "adaptive.cuh"
#include "device_info.cuh"
#include "geometry.cuh"
#include "rules.cuh"
#include "select.cuh"

namespace kvevict::cuda_backend {

inline constexpr int block_threads = 512;

// ---- block-wide building blocks ----

//! Calls `visit(i, before)` for every `i` in `[0, m)` with `weight(i) > 0`, `before` being the sum of
//! the weights of the indices before `i`, and returns the sum of all weights (in every thread). Each
//! thread takes a contiguous share (detail::blocked_share) and the block makes one exclusive scan of
//! the shares' sums, so the work is `m / blockDim.x` per thread plus one scan, whatever `m` is.
//! `weight` is evaluated twice per index and must not change in between (a visit may change what it
//! reads for its own index only); the weights' total must fit an int. Ends with a barrier: `tmp`
//! is free and the visits are visible.
template <class Scan, class Weight, class Visit>
__device__ int enumerate_weighted(int m, Weight weight, Visit visit, typename Scan::TempStorage& tmp) {
  const detail::index_span sh = detail::blocked_share(m, blockDim.x, threadIdx.x);
  int mine = 0;
  for (int i = sh.begin; i < sh.end; ++i) mine += weight(i);
  int at, total;
  Scan(tmp).ExclusiveSum(mine, at, total);
  for (int i = sh.begin; i < sh.end; ++i) {
    const int wt = weight(i);
    if (wt > 0) {
      visit(i, at);
      at += wt;
    }
  }
  __syncthreads();
  return total;
}

//! `enumerate_weighted` with weight 1 for the indices with `flag(i)` and 0 for the others: `visit(i,
//! rank)` gets the number of flagged indices before `i`.
template <class Scan, class Flag, class Visit>
__device__ int enumerate_flagged(int m, Flag flag, Visit visit, typename Scan::TempStorage& tmp) {
  return enumerate_weighted<Scan>(m, [&](int i) { return flag(i) ? 1 : 0; }, visit, tmp);
}

//! `detail::merge_and_split` on the whole block. In: the raw ends `off[0..count]` (`count >= 1`).
//! Out: the merged and split ends in `off`, their count returned. The merge marks the chain of
//! kept ends by pointer doubling (`detail::merge_jump_step`: about log2(kept ends) rounds), the
//! marked ends are written in order into `merged`, and each thread writes the pieces of its share of
//! the merged segments at scanned offsets. Scratch: `ja`, `jb` (`count` ints each), `mark` (`count`
//! bytes, left zero), `merged` (`count + 1` ints).
template <class Scan>
__device__ int merge_and_split_block(std::int32_t* off, int count, int min_len, int max_len, std::int32_t* ja,
                                     std::int32_t* jb, unsigned char* mark, std::int32_t* merged,
                                     typename Scan::TempStorage& tmp) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    ja[i] = detail::merge_successor(off, count, min_len, i);
    mark[i] = i == 0;
  }
  __syncthreads();
  while (ja[0] != count) {  // the same value in every thread: read after a barrier
    for (int i = threadIdx.x; i < count; i += blockDim.x) detail::merge_jump_step(ja, jb, mark, count, i);
    __syncthreads();
    std::int32_t* t = ja;
    ja = jb;
    jb = t;
  }
  int mm = enumerate_flagged<Scan>(
      count, [&](int i) { return mark[i] != 0; }, [&](int i, int k) { merged[k] = off[i]; }, tmp);
  for (int i = threadIdx.x; i < count; i += blockDim.x) mark[i] = 0;
  if (threadIdx.x == 0) merged[mm] = off[count];
  __syncthreads();
  const bool short_last = detail::merge_last_is_short(merged, mm, min_len);
  __syncthreads();
  if (short_last) {
    if (threadIdx.x == 0) detail::merge_short_last(merged, mm, min_len);
    --mm;
    __syncthreads();
  }
  // Split: each thread its share of the merged segments, written at the scanned piece offsets.
  const detail::index_span sh = detail::blocked_share(mm, blockDim.x, threadIdx.x);
  int mine = 0;
  for (int i = sh.begin; i < sh.end; ++i)
    mine += static_cast<int>(detail::split_pieces(merged[i + 1] - merged[i], max_len));
  int at, total;
  Scan(tmp).ExclusiveSum(mine, at, total);
  for (int i = sh.begin; i < sh.end; ++i) {
    const std::int64_t start = merged[i], n = merged[i + 1] - merged[i], p = detail::split_pieces(n, max_len);
    for (std::int64_t j = 0; j < p; ++j) off[at++] = detail::split_cut(start, n, p, j);
  }
  if (threadIdx.x == 0) off[total] = merged[mm];
  __syncthreads();
  return total;
}

// ---- segmenters on the device: one specialisation each ----

//! Scratch of one row unit, laid out like the slabs (see block_layout).
struct block_scratch_ptrs {
  double* a;             // [cap] row scores over [lo, hi), refined in place (SABlock)
  double* prefix;        // [cap] SABlock's local prefix sums
  unsigned char* keep;   // [cap]
  std::int32_t* off;     // [cap + 1]
  std::uint64_t* key;    // [cap] the units' rank keys (units path)
  std::int32_t* idx;     // [2 cap]
  unsigned char* taken;  // [cap] units kept whole
};

//! Scratch a segmenter may use while it cuts one row of `m` tokens (all of it free then).
struct segment_scratch {
  std::int32_t* off;     // [m + 1] the segment ends (the result)
  std::int32_t* idx;     // [2 m]
  std::int32_t* spare;   // [2 m]
  unsigned char* bytes;  // [m], zero on entry and on return
};

//! The segmentation of one row: clause ends `off[0..count]` relative to the range's start and, with
//! two levels, sentences as clause ranges `sent[0..num_sentences]` (null with one level).
struct row_segments {
  int count;
  const std::int32_t* sent;
  int num_sentences;
};

template <class Segmenter>
struct device_segmenter {
  static_assert(always_false<Segmenter>,
                "kvevict::cuda: this segmenter has no CUDA implementation (delimiter_segmenter, "
                "fixed_length_segmenter and key_similarity_segmenter have)");
};

//! Fixed units of `len` tokens over [lo, hi): offsets relative to lo. Returns the count.
__device__ inline int fixed_units(int lo, int hi, int len, std::int32_t* off) {
  const int m = hi - lo, count = (m + len - 1) / len;
  for (int u = threadIdx.x; u <= count; u += blockDim.x) off[u] = u < count ? u * len : m;
  __syncthreads();
  return count;
}

template <>
struct device_segmenter<delimiter_segmenter> {
  template <bool Shared, bool SABlock, class Cache>
  static status enqueue_prepass(cudaStream_t, const delimiter_segmenter&, const Cache&, const seq_rules&,
                                const block_scratch_ptrs&, int, int*) {
    return ok_status();  // nothing to compute before the row kernel
  }
  template <class Cache, class T>
  static status host_check(const delimiter_segmenter& seg, const Cache&, const signals<T>& sig) {
    KVEVICT_TRY(seg.check_token_ids(sig));  // the host's checks but the length loop, which the
    KVEVICT_TRY(seg.check_rules());         // device makes (`check`)
    KVEVICT_TRY(check_device_readable(seg.delimiter_ids, seg.num_delimiters,
                                      "segmenter.delimiter_ids"));
    return check_device_readable(seg.sentence_ids, seg.num_sentence_ids, "segmenter.sentence_ids");
  }
  //! False (and the call fails) when the sequence is longer than the token-id stride.
  template <class T>
  __device__ static bool check(const delimiter_segmenter&, const signals<T>& sig, int n, int* word) {
    if (n <= sig.token_ids_stride) return true;
    raise(word, ck_token_ids_stride);
    return false;
  }
  //! The cuts of ids[lo, hi) after delimiters, in order, relative to lo, into `cuts`; their number.
  template <class Scan>
  __device__ static int cuts(const delimiter_segmenter& seg, const std::int32_t* ids, int lo, int hi,
                             std::int32_t* cuts, typename Scan::TempStorage& tmp) {
    return enumerate_flagged<Scan>(
        hi - lo - 1, [&](int t) { return seg.is_delimiter(ids[lo + t]); }, [&](int t, int k) { cuts[k] = t + 1; },
        tmp);
  }
  //! One level: the cuts, then the merge / split rules on the block. Two levels (SABlock with
  //! sentence ids), `detail::two_level_segments` on the block: the raw cuts into `idx`, the sentence
  //! ends among them after the raw cuts, merged and split on the block; each thread cuts its share
  //! of the sentences into clauses (`detail::sentence_clauses`, in a region of `spare` of the
  //! sentence's length + 1 at its start + its index), the clauses are written in order at scanned
  //! offsets, and each sentence's first clause is found in them by binary search.
  template <bool Levels, class Scan, class T>
  __device__ static row_segments segment(const delimiter_segmenter& seg, const signals<T>& sig, int s, int lo, int hi,
                                         const segment_scratch& w, typename Scan::TempStorage& tmp) {
    const int m = hi - lo;
    const std::int32_t* ids = sig.token_ids + static_cast<std::size_t>(s) * sig.token_ids_stride;
    if (Levels && seg.two_level()) {
      std::int32_t* raw = w.idx;  // m - 1 raw cuts at most, then m + 1 sentence entries
      std::int32_t* sent = w.idx + (m > 1 ? m - 1 : 0);
      const int k = cuts<Scan>(seg, ids, lo, hi, raw, tmp);
      const delimiter_segmenter::sentence_cut ends_sentence{&seg, ids, lo};
      const int e = enumerate_flagged<Scan>(
          k, [&](int i) { return ends_sentence(raw[i]); }, [&](int i, int j) { sent[1 + j] = raw[i]; }, tmp);
      if (threadIdx.x == 0) {
        sent[0] = 0;
        sent[e + 1] = m;
      }
      __syncthreads();
      // Sentence ends merged and split (scratch: spare [0, 2 m), the marks, off as the merged copy).
      const int S = merge_and_split_block<Scan>(sent, e + 1, seg.sentence_min_len, seg.sentence_max_len, w.spare,
                                                w.spare + m, w.bytes, w.off, tmp);
      const detail::index_span sh = detail::blocked_share(S, blockDim.x, threadIdx.x);
      auto region = [&](int q) { return w.spare + sent[q] + q; };  // len + 1 entries, disjoint, within 2 m
      int mine = 0;
      for (int q = sh.begin; q < sh.end; ++q)
        mine += detail::sentence_clauses(raw, k, sent[q], sent[q + 1], seg.min_len, seg.max_len, region(q));
      int at, total;
      Scan(tmp).ExclusiveSum(mine, at, total);
      for (int q = sh.begin; q < sh.end; ++q)
        for (const std::int32_t *r = region(q), end = sent[q + 1]; *r != end; ++r) w.off[at++] = *r;
      if (threadIdx.x == 0) w.off[total] = m;
      __syncthreads();
      for (int q = sh.begin; q < sh.end; ++q)  // sentence q's first clause: its start among the clauses
        sent[q] = detail::first_at_least(w.off, 0, total, sent[q]);
      if (threadIdx.x == 0) sent[S] = total;
      __syncthreads();
      return {total, sent, S};
    }
    const int k = cuts<Scan>(seg, ids, lo, hi, w.off + 1, tmp);
    if (threadIdx.x == 0) {
      w.off[0] = 0;
      w.off[k + 1] = m;
    }
    __syncthreads();
    const int count = merge_and_split_block<Scan>(w.off, k + 1, seg.min_len, seg.max_len, w.idx, w.idx + m, w.bytes,
                                                  w.spare, tmp);
    return {count, nullptr, count};
  }
};

template <>
struct device_segmenter<fixed_length_segmenter> {
  template <bool Shared, bool SABlock, class Cache>
  static status enqueue_prepass(cudaStream_t, const fixed_length_segmenter&, const Cache&, const seq_rules&,
                                const block_scratch_ptrs&, int, int*) {
    return ok_status();  // nothing to compute before the row kernel
  }
  template <class Cache, class T>
  static status host_check(const fixed_length_segmenter& seg, const Cache& c, const signals<T>& sig) {
    return seg.validate(c, sig);  // reads no table
  }
  template <class T>
  __device__ static bool check(const fixed_length_segmenter&, const signals<T>&, int, int*) {
    return true;
  }
  template <bool Levels, class Scan, class T>
  __device__ static row_segments segment(const fixed_length_segmenter& seg, const signals<T>&, int, int lo, int hi,
                                         const segment_scratch& w, typename Scan::TempStorage&) {
    const int count = fixed_units(lo, hi, seg.length, w.off);
    return {count, nullptr, count};
  }
};

// ---- radix selection on the block: the exact fill, and the units' first overflow ----

//! The block-wide radix select under `fill_best_unmarked` and `mark_units`: among the indices `i` in
//! `[0, m)` with `weight(i) > 0`, ranked by `key(i)` descending, the key of the one at which the
//! weights' running total first reaches `krem`; `krem` is lowered by the weight of the keys above it
//! (so it is then the running total still to reach among the keys equal to it, in whatever order
//! ties are ranked). 8-bit digits from the top, a histogram of the weights per digit in shared
//! memory (`hist`: 256 bins), one thread picking the digit (detail::pick_digit). `krem` must be
//! at least 1 and at most the total weight, which must fit an int. Ends with a barrier.
//! With `UnitWeights` (every weight 0 or 1) the lanes of a warp that add to the same bin add once
//! (`warp_aggregated_add`; blockDim.x a multiple of 32): a row's scores share a few top digits, so
//! the first passes would otherwise queue most of the row's atomics on two or three bins.
template <bool UnitWeights, class Key, class Weight>
__device__ std::uint64_t radix_threshold(int m, Key key, Weight weight, int& krem, unsigned* hist,
                                         std::uint64_t* s_prefix, int* s_krem) {
  if (threadIdx.x == 0) {
    *s_prefix = 0;
    *s_krem = krem;
  }
  std::uint64_t mask = 0;
  __syncthreads();
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const std::uint64_t prefix = *s_prefix;
    for (int base = 0; base < m; base += blockDim.x) {  // the same trip count in every lane of a warp
      const int t = base + static_cast<int>(threadIdx.x);
      int wt = t < m ? weight(t) : 0, digit = 0;
      if (wt > 0) {
        const std::uint64_t k = key(t);
        if ((k & mask) == prefix)
          digit = static_cast<int>((k >> shift) & 255u);
        else
          wt = 0;
      }
      if constexpr (UnitWeights)
        warp_aggregated_add(hist, digit, wt > 0);
      else if (wt > 0)
        atomicAdd(&hist[digit], static_cast<unsigned>(wt));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int r = *s_krem;
      const int digit = detail::pick_digit(hist, r);  // the histogram holds at least r: r >= 1 stays true
      *s_krem = r;
      *s_prefix = prefix | (static_cast<std::uint64_t>(digit) << shift);
    }
    mask |= 255ull << shift;
    __syncthreads();
  }
  krem = *s_krem;
  const std::uint64_t thr = *s_prefix;
  __syncthreads();  // every thread has read them: the caller may reuse the shared words
  return thr;
}

//! The k best unmarked entries of v[0, m) by value, ties to the lower index, marked in `keep`.
template <class Scan>
__device__ void fill_best_unmarked(const double* v, int m, int k, unsigned char* keep, typename Scan::TempStorage& tmp,
                                   unsigned* hist, std::uint64_t* s_prefix, int* s_krem) {
  if (k <= 0) return;
  int krem = k;  // k <= the unmarked entries (the caller's count)
  const std::uint64_t thr = radix_threshold<true>(
      m, [&](int t) { return detail::order_key64(v[t]); }, [&](int t) { return keep[t] ? 0 : 1; }, krem, hist,
      s_prefix, s_krem);
  // The first `krem` unmarked entries equal to the threshold, in order, then every one above it.
  enumerate_flagged<Scan>(
      m, [&](int t) { return !keep[t] && detail::order_key64(v[t]) == thr; },
      [&](int t, int rank) {
        if (rank < krem) keep[t] = 1;
      },
      tmp);
  for (int t = threadIdx.x; t < m; t += blockDim.x)
    if (detail::order_key64(v[t]) > thr) keep[t] = 1;
  __syncthreads();
}

// ---- the row kernel ----

template <class Granularity>
struct block_traits;
template <class Sharing>
struct block_traits<fixed_block<Sharing>> {
  static constexpr bool shared = Sharing::shared, sablock = false, fixed = true;
};
template <class Seg, class Sharing>
struct block_traits<segment_level<Seg, Sharing>> {
  static constexpr bool shared = Sharing::shared, sablock = false, fixed = false;
};
template <class Seg, class Sharing>
struct block_traits<adaptive_block<Seg, Sharing>> {
  static constexpr bool shared = Sharing::shared, sablock = true, fixed = false;
};

template <class Granularity, class Cache, class T>
struct block_args {
  Cache cache;
  Granularity gran;
  signals<T> sig;
  seq_rules rules;
  const float* scores;  // slab layout
  block_scratch_ptrs ws;
  keep_plan out;
  int* word;
};

//! Row unit (s, h)'s scratch: one unit per (sequence, KV head), laid out like the slabs; with
//! `Shared` heads one unit per sequence, laid out like the slab of a one-head cache (every
//! layout's `row_base(c, s, 0)` is `num_kv_heads` times that: sequences' regions stay disjoint and
//! as long as their rows), so shared-heads policies need 1 / num_kv_heads of the scratch.
template <bool Shared, class Cache>
__device__ block_scratch_ptrs row_scratch(const block_scratch_ptrs& ws, const Cache& c, int s, int h) {
  const int kvh = c.num_kv_heads();
  const std::size_t b = Shared ? row_base(c, s, 0) / static_cast<std::size_t>(kvh) : row_base(c, s, h);
  const std::size_t row = Shared ? static_cast<std::size_t>(s) : static_cast<std::size_t>(s) * kvh + h;
  return {ws.a + b, ws.prefix ? ws.prefix + b : nullptr, ws.keep + b, ws.off + b + row,
          ws.key ? ws.key + b : nullptr, ws.idx ? ws.idx + 2 * b : nullptr, ws.taken ? ws.taken + b : nullptr};
}

//! The key-similarity segmenter's pre-pass (one launch before the row kernel): the similarity of
//! each pair of adjacent keys (u, u + 1) of a row unit's compressible range, `sim[u]`, into the
//! unit's spare scratch (SABlock's prefix sums, or the units' rank keys: free until the row is
//! cut), a thread per pair. As the host's `key_similarity_segmenter`: per head (every KV head in
//! order, or the row's own head in a (sequence, head)-row cache) the sums |a|^2, a . b, |b|^2 in
//! element order, rounded as the host rounds them (no fused multiply-add), `detail::key_cosine`,
//! the heads' cosines added in order from 0, divided by the head count.
template <bool Shared, bool SABlock, class Cache>
__global__ void key_similarity_kernel(Cache c, seq_rules rules, block_scratch_ptrs ws, int* word) {
  if (block_failed(word)) return;
  const int kvh = c.num_kv_heads(), unit = static_cast<int>(blockIdx.x);  // grid: (units, pair chunks)
  const int s = Shared ? unit : unit / kvh, h = Shared ? 0 : unit % kvh;
  const row_rule si = rules.info(c, s);
  const int n = c.seq_len(s, h);
  if (si.kept_whole() || n <= si.budget) return;  // the row kernel cuts nothing
  const detail::token_range range = si.range(n);
  const int lo = range.lo, m = range.hi - range.lo;
  const block_scratch_ptrs w = row_scratch<Shared>(ws, c, s, h);
  double* sim = SABlock ? w.prefix : reinterpret_cast<double*>(w.key);
  const int heads = Cache::per_head_rows ? 1 : kvh, d = c.head_dim(), ps = c.page_size();
  for (int u = static_cast<int>(blockIdx.y * blockDim.x + threadIdx.x); u + 1 < m;
       u += static_cast<int>(gridDim.y * blockDim.x)) {
    const int t = lo + u;
    double acc = 0;
    for (int hh = 0; hh < heads; ++hh) {
      const int hd = Cache::per_head_rows ? h : hh;
      const auto* ka = c.key(c.page(s, hd, t / ps), t % ps, hd);
      const auto* kb = c.key(c.page(s, hd, (t + 1) / ps), (t + 1) % ps, hd);
      double aa = 0, ab = 0, bb = 0;
      for (int x = 0; x < d; ++x) {
        const double fa = to_float(ka[x]), fb = to_float(kb[x]);
        aa = detail::add_rn(aa, detail::mul_rn(fa, fa));
        ab = detail::add_rn(ab, detail::mul_rn(fa, fb));
        bb = detail::add_rn(bb, detail::mul_rn(fb, fb));
      }
      acc = detail::add_rn(acc, detail::key_cosine(aa, ab, bb));
    }
    sim[u] = acc / heads;
  }
}

//! Boundaries where the pre-pass's similarity is a strict local minimum (lower than the pair
//! before, not higher than the pair after), then the merge / split rules, as on the host. One
//! level: SABlock's sentences are its clauses.
template <>
struct device_segmenter<key_similarity_segmenter> {
  template <class Cache, class T>
  static status host_check(const key_similarity_segmenter& seg, const Cache& c, const signals<T>& sig) {
    return seg.validate(c, sig);  // reads no table
  }
  template <class T>
  __device__ static bool check(const key_similarity_segmenter&, const signals<T>&, int, int*) {
    return true;
  }
  template <bool Shared, bool SABlock, class Cache>
  static status enqueue_prepass(cudaStream_t st, const key_similarity_segmenter&, const Cache& c,
                                const seq_rules& rules, const block_scratch_ptrs& ws, int units, int* word) {
    const unsigned chunks = static_cast<unsigned>(std::min(1024, (max_row_cap(c) + block_threads - 1) / block_threads));
    key_similarity_kernel<Shared, SABlock><<<dim3(static_cast<unsigned>(units), chunks), block_threads, 0, st>>>(
        c, rules, ws, word);
    return check_launch("key similarity: kernel launch");
  }
  template <bool Levels, class Scan, class T>
  __device__ static row_segments segment(const key_similarity_segmenter& seg, const signals<T>&, int, int lo, int hi,
                                         const segment_scratch& w, typename Scan::TempStorage& tmp) {
    const int m = hi - lo;
    const double* sim = reinterpret_cast<const double*>(w.spare);  // sim[u]: pair (u, u + 1), the pre-pass's
    const int k = enumerate_flagged<Scan>(
        m - 1,
        [&](int u) { return (u == 0 || sim[u] < sim[u - 1]) && (u + 2 >= m || sim[u] <= sim[u + 1]); },
        [&](int u, int j) { w.off[1 + j] = u + 1; }, tmp);
    if (threadIdx.x == 0) {
      w.off[0] = 0;
      w.off[k + 1] = m;
    }
    __syncthreads();  // every similarity read: `spare` is the merge's scratch from here
    const int count = merge_and_split_block<Scan>(w.off, k + 1, seg.min_len, seg.max_len, w.idx, w.idx + m, w.bytes,
                                                  w.spare, tmp);
    return {count, nullptr, count};
  }
};

//! A unit's place in the units' rank order (mean descending, ties to the earlier unit): its rank
//! key and index. Finite means have keys above 0, so key 0 says "no unit".
struct unit_rank {
  unsigned long long key;
  int u;
  __device__ static bool before(const unit_rank& x, const unit_rank& y) {
    return x.key > y.key || (x.key == y.key && x.u < y.u);
  }
  __device__ static unit_rank better(const unit_rank& x, const unit_rank& y) { return before(x, y) ? x : y; }
};

//! The block's shared state: the scan / reduce storage and the broadcast scalars.
struct row_shared {
  using scan = cub::BlockScan<int, block_threads>;
  using reduce_ll = cub::BlockReduce<long long, block_threads>;
  using reduce_d = cub::BlockReduce<double, block_threads>;
  using reduce_rank = cub::BlockReduce<unit_rank, block_threads>;
  union {
    typename scan::TempStorage scan;
    typename reduce_ll::TempStorage ll;
    typename reduce_d::TempStorage d;
    typename reduce_rank::TempStorage rank;
    double vals[block_threads];  //!< a chunk of values gathered by the block for one thread's ordered sum
  } tmp;
  unsigned hist[256];
  std::uint64_t prefix;
  int flag, krem, left, first_over, num_live;
  double lo, hi, gamma;
  long long cost, left_cost;
};

//! The stages of one row's selection; `Granularity` picks the segmenter and the marking rule.
template <class Granularity, class Cache, class T>
struct row_stages {
  using traits = block_traits<Granularity>;
  using scan = row_shared::scan;
  const block_args<Granularity, Cache, T>& a;
  row_shared& sh;
  int s, h;

  __device__ int kvh() const { return a.cache.num_kv_heads(); }
  //! The heads whose scores and plan rows this row covers.
  __device__ int head_begin() const { return traits::shared ? 0 : h; }
  __device__ int head_end() const { return traits::shared ? kvh() : h + 1; }

  //! Every covered head keeps all of its own tokens, as on the host.
  __device__ void keep_whole() const {
    for (int hh = head_begin(); hh < head_end(); ++hh) {
      const int nh = a.cache.seq_len(s, hh);
      std::int32_t* o = a.out.row(s * kvh() + hh);
      for (int t = threadIdx.x; t < nh; t += blockDim.x) o[t] = t;
      if (threadIdx.x == 0) a.out.counts[s * kvh() + hh] = nh;
    }
  }
  //! False (and the call fails) when a score this row reads is not finite, as on the host.
  __device__ bool scores_finite() const {
    if (threadIdx.x == 0) sh.flag = 0;
    __syncthreads();
    for (int hh = head_begin(); hh < head_end(); ++hh) {
      const float* sc = a.scores + row_base(a.cache, s, hh);
      for (int t = threadIdx.x, nh = a.cache.seq_len(s, hh); t < nh; t += blockDim.x)
        if (!isfinite(sc[t])) atomicOr(&sh.flag, 1);
    }
    __syncthreads();
    if (sh.flag && threadIdx.x == 0) raise(a.word, ck_score_non_finite);
    return !sh.flag;
  }
  //! Row scores over [lo, lo + m): the head's, or the sum over the heads that hold the token in
  //! head order (as the host). Clears the marks.
  __device__ void load_scores(const block_scratch_ptrs& w, int lo, int m) const {
    for (int t = threadIdx.x; t < m; t += blockDim.x) {
      double v = 0;
      if (traits::shared) {
        for (int hh = 0; hh < kvh(); ++hh)
          if (lo + t < a.cache.seq_len(s, hh))
            v = detail::add_rn(v, static_cast<double>(a.scores[row_base(a.cache, s, hh) + lo + t]));
      } else {  // the score itself (a -0 stays -0)
        v = static_cast<double>(a.scores[row_base(a.cache, s, h) + lo + t]);
      }
      w.a[t] = v;
      w.keep[t] = 0;
    }
    __syncthreads();
  }
  __device__ row_segments segment(const block_scratch_ptrs& w, int lo, int hi) const {
    if constexpr (traits::fixed) {
      const int count = fixed_units(lo, hi, a.gran.chunk, w.off);
      return {count, nullptr, count};
    } else {
      using seg_t = std::decay_t<decltype(a.gran.segmenter)>;
      // Free while the row is cut: the units' rank keys, or SABlock's prefix sums.
      std::int32_t* spare = traits::sablock ? reinterpret_cast<std::int32_t*>(w.prefix)
                                            : reinterpret_cast<std::int32_t*>(w.key);
      return device_segmenter<seg_t>::template segment<traits::sablock, scan>(
          a.gran.segmenter, a.sig, s, lo, hi, segment_scratch{w.off, w.idx, spare, w.keep}, sh.tmp.scan);
    }
  }
  //! SABlock: refined scores, the price bisection, the kept blocks marked. Returns the tokens left
  //! for the fill.
  __device__ int mark_sablock(const block_scratch_ptrs& w, const row_segments& g, int m, int bc) const {
    auto first = [&](int k) { return g.sent ? g.sent[k] : k; };
    const double alpha = a.gran.alpha, beta = a.gran.beta;
    const bool blocks = a.gran.sentence_blocks;
    // Refined scores and local prefix sums, a thread per sentence.
    double my_max = -DBL_MAX;
    for (int k = threadIdx.x; k < g.num_sentences; k += blockDim.x) {
      detail::refine_sentence(w.a, w.prefix, w.off, 0, first(k), first(k + 1), alpha, beta);
      for (int t = w.off[first(k)]; t < w.off[first(k + 1)]; ++t) my_max = w.a[t] > my_max ? w.a[t] : my_max;
    }
    __syncthreads();
    const double rmax =
        row_shared::reduce_d(sh.tmp.d).Reduce(my_max, [](double x, double y) { return x > y ? x : y; });
    __syncthreads();
    // The clauses' score total in the fixed order of detail::clauses_total (so gamma is the host's
    // bit for bit): a thread per run of clauses adds the run into shared memory, all runs of a tile
    // at once, then one thread adds the tile's run sums in run order (about sqrt(count) each).
    double rsum = 0;
    const int run = detail::clause_run(g.count), runs = (g.count + run - 1) / run;
    for (int q0 = 0; q0 < runs; q0 += block_threads) {
      const int q = q0 + static_cast<int>(threadIdx.x), e = runs - q0 < block_threads ? runs - q0 : block_threads;
      if (q < runs)
        sh.tmp.vals[threadIdx.x] = detail::clause_run_sum(w.prefix, w.off, 0, g.count, run, q);
      __syncthreads();
      if (threadIdx.x == 0)
        for (int i = 0; i < e; ++i) rsum = detail::add_rn(rsum, sh.tmp.vals[i]);
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      sh.gamma = detail::mul_rn(a.gran.g, rsum / m);
      sh.lo = 0.0;
      sh.hi = detail::add_rn(rmax, sh.gamma);
    }
    __syncthreads();
    const double gamma = sh.gamma;
    const int maxc = a.gran.block_size;
    // Price bounds, as the host's sablock_select: at or above bound[k] sentence k keeps nothing, so
    // an evaluation passes over it (and, with two levels, over a clause at or above its own bound);
    // the plan is the one of evaluating them all. They live in `idx` (free once the row is cut;
    // with two levels, before the sentences, when they fit there).
    double* bound = nullptr;
    double* clause_bound = nullptr;
    if (!g.sent) {
      bound = clause_bound = reinterpret_cast<double*>(w.idx);  // count <= m doubles of 2 m ints
    } else if (2 * (g.num_sentences + g.count) <= m - 1) {
      bound = reinterpret_cast<double*>(w.idx);
      clause_bound = bound + g.num_sentences;
    }
    if (bound) {
      for (int u = threadIdx.x; u < g.count; u += blockDim.x)
        clause_bound[u] = detail::clause_price_bound(w.prefix, w.off[u], w.off[u + 1] - w.off[u], gamma, maxc);
      __syncthreads();
      if (g.sent) {
        for (int k = threadIdx.x; k < g.num_sentences; k += blockDim.x)
          bound[k] = detail::sentence_price_bound(w.prefix, w.off, 0, first(k), first(k + 1), gamma, maxc, blocks,
                                                  clause_bound);
        __syncthreads();
      }
    }
    const double* skip_clauses = g.sent ? clause_bound : nullptr;
    // The live set, as the host's sablock_select (where the scratch has room, and with bounds): a
    // step evaluates only the live sentences, each leaving once its kept set is certified the same
    // at every later price (detail::sablock_settled), its kept length then added to every step's
    // cost; the final run below marks every sentence, so the plan is the one of evaluating them all.
    // Summaries of the lower end, the upper end and the midpoint rotate (the same choice in every
    // thread); the live lists ping-pong, compacted in order by one block-wide scan per step.
    const long long room =
        bound ? detail::sablock_live_room(m, g.count, g.num_sentences, g.sent != nullptr) : -1;
    const int S = g.num_sentences;
    std::int32_t *live = nullptr, *next_live = nullptr;
    detail::sablock_summary *at_lo = nullptr, *at_hi = nullptr, *at_mid = nullptr;
    if (room >= 0) {
      live = w.idx + room;
      next_live = live + S;
      at_lo = reinterpret_cast<detail::sablock_summary*>(next_live + S);
      at_hi = at_lo + S;
      at_mid = at_hi + S;
      for (int k = threadIdx.x; k < S; k += blockDim.x) {
        live[k] = k;
        at_lo[k] = detail::sablock_summary{};  // nothing evaluated at the lower end yet
      }
      if (threadIdx.x == 0) {
        sh.num_live = S;
        sh.left_cost = 0;
      }
      __syncthreads();
    }
    auto cost_at = [&](double lam, unsigned char* keep) {
      long long mine = 0;
      if (room >= 0 && !keep) {
        for (int i = threadIdx.x; i < sh.num_live; i += blockDim.x) {
          const int k = live[i];
          if (lam >= bound[k]) continue;  // it keeps nothing; settling reads the bound, not a summary
          detail::sablock_probe pr;
          const long long c = detail::sentence_cost(w.prefix, w.off, 0, first(k), first(k + 1), lam, gamma, maxc,
                                                    blocks, nullptr, skip_clauses, &pr);
          at_mid[k] = detail::summarize(pr, c);
          mine += c;
        }
      } else {
        for (int k = threadIdx.x; k < S; k += blockDim.x)
          if (!bound || lam < bound[k])
            mine += detail::sentence_cost(w.prefix, w.off, 0, first(k), first(k + 1), lam, gamma, maxc, blocks, keep,
                                          skip_clauses);
      }
      const long long total = row_shared::reduce_ll(sh.tmp.ll).Sum(mine);
      if (threadIdx.x == 0) sh.cost = total + (room >= 0 && !keep ? sh.left_cost : 0);
      __syncthreads();
      return sh.cost;
    };
    // Takes out the live sentences whose kept set is now fixed on [sh.lo, sh.hi].
    auto settle = [&] {
      const double lam_lo = sh.lo, lam_hi = sh.hi;
      const int num_live = sh.num_live;
      auto fixed = [&](int i) {
        const int k = live[i];
        return detail::sablock_settled(lam_lo, lam_hi, bound[k], at_lo[k], at_hi[k]);
      };
      long long mine = 0;
      for (int i = threadIdx.x; i < num_live; i += blockDim.x) {
        const int f = fixed(i);
        mine += f > 0 ? f : 0;
      }
      const long long added = row_shared::reduce_ll(sh.tmp.ll).Sum(mine);
      __syncthreads();
      std::int32_t* const to = next_live;
      const int left = enumerate_flagged<scan>(
          num_live, [&](int i) { return fixed(i) < 0; }, [&](int i, int j) { to[j] = live[i]; }, sh.tmp.scan);
      if (threadIdx.x == 0) {
        sh.left_cost += added;
        sh.num_live = left;
      }
      next_live = live;
      live = to;
      __syncthreads();
    };
    for (int grow = 0; grow < detail::sablock_max_grow; ++grow) {
      const double hi_now = sh.hi;
      if (cost_at(hi_now, nullptr) <= bc) break;
      __syncthreads();
      if (threadIdx.x == 0) sh.hi = detail::sablock_grow(hi_now);
      __syncthreads();
    }
    detail::sablock_summary* t = at_hi;  // the summaries at the top price
    at_hi = at_mid;
    at_mid = t;
    __syncthreads();
    for (int it = 0; it < a.gran.steps; ++it) {
      const double mid = 0.5 * (sh.lo + sh.hi);
      const long long cm = cost_at(mid, nullptr);
      __syncthreads();
      if (threadIdx.x == 0) {
        if (cm > bc)
          sh.lo = mid;
        else
          sh.hi = mid;
      }
      detail::sablock_summary* done = at_mid;  // the midpoint's summaries become that end's
      if (cm > bc) {
        at_mid = at_lo;
        at_lo = done;
      } else {
        at_mid = at_hi;
        at_hi = done;
      }
      __syncthreads();
      if (room >= 0) settle();
    }
    const long long kept = cost_at(sh.hi, w.keep);
    __syncthreads();
    return bc - static_cast<int>(kept < bc ? kept : bc);
  }
  //! ChunkKV / SentenceKV: units kept whole by mean while they fit (descending, ties to the
  //! earlier), marked. Returns the tokens left for the fill. The host's greedy, exactly, without
  //! sorting the units: every unit ranked before the first that overflows the budget fits, and that
  //! one is where the lengths' running total in rank order first exceeds the budget, found by the
  //! radix select weighted by length (`radix_threshold`) and, among its ties, one weighted scan in
  //! unit order. After it a unit fits only if it is no longer than what is left, and what is left
  //! only shrinks, so the greedy's next unit is the best-ranked one after the previous that is no
  //! longer than what is left: one block reduction each (at most a unit's length of them).
  __device__ int mark_units(const block_scratch_ptrs& w, int count, int bc) const {
    for (int u = threadIdx.x; u < count; u += blockDim.x) {
      const double mean = detail::segment_mean(w.a, w.off[u], w.off[u + 1] - w.off[u]);
      w.key[u] = detail::order_key64(mean == 0.0 ? 0.0 : mean);  // -0 ranks as +0, as the host's compare
      w.taken[u] = 0;
    }
    __syncthreads();
    auto len = [&](int u) { return w.off[u + 1] - w.off[u]; };
    // The units cover the m > bc tokens, so the running total reaches bc + 1 at some unit.
    int krem = bc + 1;
    const std::uint64_t thr = radix_threshold<false>(
        count, [&](int u) { return w.key[u]; }, len, krem, sh.hist, &sh.prefix, &sh.krem);
    enumerate_weighted<scan>(
        count, [&](int u) { return w.key[u] == thr ? len(u) : 0; },
        [&](int u, int before) {
          if (before < krem && before + len(u) >= krem) {  // exactly one unit
            sh.first_over = u;
            sh.left = krem - 1 - before;
          }
        },
        sh.tmp.scan);
    const int over = sh.first_over;
    for (int u = threadIdx.x; u < count; u += blockDim.x)
      if (w.key[u] > thr || (w.key[u] == thr && u < over)) w.taken[u] = 1;
    unit_rank prev{thr, over};
    for (;;) {
      const int left = sh.left;  // the same in every thread: written before a barrier
      if (left <= 0) break;
      unit_rank mine{0, count};  // this thread's best unit ranked after `prev` that still fits
      for (int u = threadIdx.x; u < count; u += blockDim.x) {
        const unit_rank x{w.key[u], u};
        if (unit_rank::before(prev, x) && len(u) <= left) mine = unit_rank::better(mine, x);
      }
      const unit_rank best = row_shared::reduce_rank(sh.tmp.rank).Reduce(mine, unit_rank::better);
      __syncthreads();  // every thread has read sh.left
      if (threadIdx.x == 0) {
        sh.prefix = best.key;
        sh.first_over = best.u;
        if (best.key != 0) {
          w.taken[best.u] = 1;
          sh.left = left - len(best.u);
        }
      }
      __syncthreads();
      prev = unit_rank{sh.prefix, sh.first_over};
      __syncthreads();  // read before the next iteration's thread 0 writes them
      if (prev.key == 0) break;
    }
    for (int u = threadIdx.x; u < count; u += blockDim.x)
      if (w.taken[u])
        for (int t = w.off[u]; t < w.off[u + 1]; ++t) w.keep[t] = 1;
    const int left = sh.left;
    __syncthreads();
    return left;
  }
  //! The plan row: the protected tokens before lo and from hi on, and the marked ones, in order.
  __device__ int write_row(const block_scratch_ptrs& w, int n, int lo, int hi, std::int32_t* out) const {
    return enumerate_flagged<scan>(
        n, [&](int t) { return t < lo || t >= hi || w.keep[t - lo]; }, [&](int t, int k) { out[k] = t; },
        sh.tmp.scan);
  }
  //! Shared heads: the sequence's plan row copied to every head.
  __device__ void copy_to_heads(int r) const {
    __syncthreads();
    const std::int32_t* src = a.out.row(r);
    const int cnt = a.out.counts[r];
    for (int hh = 1; hh < kvh(); ++hh) {
      std::int32_t* dst = a.out.row(s * kvh() + hh);
      for (int t = threadIdx.x; t < cnt; t += blockDim.x) dst[t] = src[t];
      if (threadIdx.x == 0) a.out.counts[s * kvh() + hh] = cnt;
    }
  }
};

//! One block per SM at least (the second bound): with the default ptxas capped SABlock at 64
//! registers and spilled in the bisection's inner loop (368 B); the grid is one block per row, at
//! most a few per SM at large batches, so registers serve better than a second resident block.
template <class Granularity, class Cache, class T>
__global__ void __launch_bounds__(block_threads, 1) block_select_kernel(block_args<Granularity, Cache, T> a) {
  using traits = block_traits<Granularity>;
  __shared__ row_shared sh;
  const Cache& c = a.cache;
  const int kvh = c.num_kv_heads();
  const int s = traits::shared ? blockIdx.x : blockIdx.x / kvh, h = traits::shared ? 0 : blockIdx.x % kvh;
  if (block_failed(a.word)) return;
  const row_stages<Granularity, Cache, T> st{a, sh, s, h};
  const row_rule si = a.rules.info(c, s);
  const int n = c.seq_len(s, h), r = s * kvh + h, b = si.budget;
  if constexpr (!traits::fixed) {  // the same verdict in every thread: n is the block's
    using seg_t = std::decay_t<decltype(a.gran.segmenter)>;
    if (!device_segmenter<seg_t>::check(a.gran.segmenter, a.sig, n, a.word)) return;
  }
  if (si.kept_whole()) return st.keep_whole();
  if (!st.scores_finite()) return;
  std::int32_t* out = a.out.row(r);
  if (n <= b) {
    for (int t = threadIdx.x; t < n; t += blockDim.x) out[t] = t;
    if (threadIdx.x == 0) a.out.counts[r] = n;
  } else {
    const detail::token_range range = si.range(n);
    const int lo = range.lo, hi = range.hi, m = hi - lo, bc = b - lo - (n - hi);
    const block_scratch_ptrs w = row_scratch<traits::shared>(a.ws, c, s, h);
    st.load_scores(w, lo, m);
    if (bc > 0 && m > 0) {
      const row_segments g = st.segment(w, lo, hi);
      int left;
      if constexpr (traits::sablock)
        left = st.mark_sablock(w, g, m, bc);
      else
        left = st.mark_units(w, g.count, bc);
      fill_best_unmarked<row_shared::scan>(w.a, m, left, w.keep, sh.tmp.scan, sh.hist, &sh.prefix, &sh.krem);
    }
    const int kept = st.write_row(w, n, lo, hi, out);
    if (threadIdx.x == 0) a.out.counts[r] = kept;
  }
  if (traits::shared) st.copy_to_heads(r);
}

// ---- granularities on the device ----

template <class Granularity>
struct device_granularity;

template <>
struct device_granularity<token_level> {
  //! The top-k's first pass can pool the scorer's unpooled scores (one launch fewer).
  static constexpr bool fuses_pooling = true;
  template <class Cache, class T>
  static status host_check(const token_level&, const Cache&, const signals<T>&) {
    return ok_status();
  }
  //! The top-k's scratch, then with per-head budgets the allocation's (zeroed and plain alike).
  template <class Cache>
  static detail::workspace_layout<2> zeroed_layout(const Cache& c, bool per_head) {
    return {{topk_layout::of(c).request().zeroed, per_head ? ada_layout::of(c).zeroed : 0}};
  }
  template <class Cache>
  static detail::workspace_layout<2> plain_layout(const Cache& c, bool per_head) {
    return {{topk_layout::of(c).request().plain, per_head ? ada_layout::of(c).plain : 0}};
  }
  template <class Cache>
  static scratch_request request(const token_level&, const Cache& c, bool per_head = false) {
    if (!per_head) return topk_layout::of(c).request();
    return {zeroed_layout(c, true).total(), plain_layout(c, true).total()};
  }
  //! `scores`: the slab the scorer filled, or, with a pooling `source`, where the first pass pools it.
  //! With per-head budgets (`rules.adaptive`) the allocation runs first (three launches).
  template <class Cache, class T, class Pool = no_pool>
  static status enqueue(const token_level&, cudaStream_t st, const Cache& c, const signals<T>&, const seq_rules& rules,
                        const float* scores, keep_plan out, void* zeroed, void* plain, int* word,
                        topk_source<Pool> source = {}) {
    // (A fused pooling `source` never comes with per-head budgets: their allocation reads the
    // pooled scores before the top-k; plan_dispatch pools first.)
    if (Pool::enabled || !rules.adaptive) return enqueue_top_k(st, c, rules, scores, out, zeroed, plain, word, source);
    void* z[2];
    void* q[2];
    zeroed_layout(c, true).carve(zeroed, z);
    plain_layout(c, true).carve(plain, q);
    seq_rules with_budgets = rules;
    std::int32_t* budgets = nullptr;
    KVEVICT_TRY(enqueue_adaptive(st, c, rules, scores, out.capacity, z[1], q[1], word, budgets));
    with_budgets.row_budgets = budgets;
    return enqueue_top_k(st, c, with_budgets, scores, out, z[0], q[0], word, source);
  }
};

template <class Granularity>
struct device_block_granularity {
  using traits = block_traits<Granularity>;
  static constexpr bool fuses_pooling = false;
  template <class Cache>
  static detail::workspace_layout<7> layout(const Cache& c) {
    // One row unit per (sequence, KV head), or per sequence with shared heads (`row_scratch`).
    const std::size_t heads = static_cast<std::size_t>(c.num_kv_heads()), units_per_seq = traits::shared ? 1 : heads;
    const std::size_t tok = slab_tokens(c) / heads * units_per_seq,
                      rows = static_cast<std::size_t>(c.num_seqs()) * units_per_seq;
    const bool units = !traits::sablock;
    // idx: the segmenters' scratch, and SABlock's raw cuts and sentences (two levels).
    return detail::workspace_layout<7>{{sizeof(double) * tok, traits::sablock ? sizeof(double) * tok : 0, tok,
                                        sizeof(std::int32_t) * (tok + rows + 1),
                                        units ? sizeof(std::uint64_t) * tok : 0,
                                        sizeof(std::int32_t) * 2 * tok, units ? tok : 0}};
  }
  template <class Cache, class T>
  static status host_check(const Granularity& g, const Cache& c, const signals<T>& sig) {
    if constexpr (std::is_same_v<Granularity, fixed_block<typename Granularity::sharing_type>>) {
      return g.validate(c, sig);  // reads no table
    } else {
      if constexpr (traits::sablock) KVEVICT_TRY(g.check_parameters());
      return device_segmenter<std::decay_t<decltype(g.segmenter)>>::host_check(g.segmenter, c, sig);
    }
  }
  template <class Cache>
  static scratch_request request(const Granularity&, const Cache& c, bool per_head = false) {
    (void)per_head;  // per-head budgets are token-level only on the device (plan_dispatch)
    return {0, layout(c).total()};
  }
  template <class Cache, class T>
  static status enqueue(const Granularity& g, cudaStream_t st, const Cache& c, const signals<T>& sig,
                        const seq_rules& rules, const float* scores, keep_plan out, void*, void* scratch, int* word) {
    void* p[7];
    layout(c).carve(scratch, p);
    block_args<Granularity, Cache, T> a{c, g, sig, rules, scores,
                                        block_scratch_ptrs{static_cast<double*>(p[0]),
                                                           traits::sablock ? static_cast<double*>(p[1]) : nullptr,
                                                           static_cast<unsigned char*>(p[2]),
                                                           static_cast<std::int32_t*>(p[3]),
                                                           traits::sablock ? nullptr : static_cast<std::uint64_t*>(p[4]),
                                                           static_cast<std::int32_t*>(p[5]),
                                                           traits::sablock ? nullptr : static_cast<unsigned char*>(p[6])},
                                        out, word};
    const int units = traits::shared ? c.num_seqs() : c.num_seqs() * c.num_kv_heads();
    if constexpr (!traits::fixed) {
      using seg_t = std::decay_t<decltype(g.segmenter)>;
      KVEVICT_TRY((device_segmenter<seg_t>::template enqueue_prepass<traits::shared, traits::sablock>(
          st, g.segmenter, c, rules, a.ws, units, word)));
    }
    block_select_kernel<<<units, block_threads, 0, st>>>(a);
    return check_launch("block selection: kernel launch");
  }
};

template <class Sharing>
struct device_granularity<fixed_block<Sharing>> : device_block_granularity<fixed_block<Sharing>> {};
template <class Seg, class Sharing>
struct device_granularity<segment_level<Seg, Sharing>> : device_block_granularity<segment_level<Seg, Sharing>> {};
template <class Seg, class Sharing>
struct device_granularity<adaptive_block<Seg, Sharing>> : device_block_granularity<adaptive_block<Seg, Sharing>> {};

}  // namespace kvevict::cuda_backend

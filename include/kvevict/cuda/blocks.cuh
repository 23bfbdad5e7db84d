//! \file cuda/blocks.cuh
//! Block, segment and SABlock granularities on the device (ChunkKV, SentenceKV-style, SABlock).
//! One block of threads per row (a (sequence, KV head), or a sequence for shared heads):
//! segmentation (parallel delimiter search, then the host's merge / split rules), per-segment
//! means and refined scores (a thread per segment, sums in token order), SABlock's price bisection
//! (a thread per segment per step, exact integer costs, no host round trip), the units'
//! keep-while-it-fits pass, and an exact radix-select fill. The per-segment arithmetic is the
//! host's own (detail/sablock_core.hpp), so the plans are the host's bit for bit. Not API.
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
#include "geometry.cuh"
#include "rules.cuh"
#include "select.cuh"

namespace kvevict::cuda_backend {

inline constexpr int block_threads = 512;

// ---- segmenters on the device ----

template <class Segmenter>
struct device_segmenter {
  static_assert(always_false<Segmenter>,
                "kvevict::cuda: this segmenter has no CUDA implementation (delimiter_segmenter and "
                "fixed_length_segmenter have)");
};

template <>
struct device_segmenter<delimiter_segmenter> {
  template <class Cache, class T>
  static status host_check(const delimiter_segmenter& seg, const Cache&, const signals<T>& sig) {
    KVEVICT_TRY(seg.check_token_ids(sig));  // the host's checks but the length loop, which the
    return seg.check_rules();               // device makes (`check`)
  }
  //! False (and the call fails) when the sequence is longer than the token-id stride.
  template <class T>
  __device__ static bool check(const delimiter_segmenter&, const signals<T>& sig, int n, int* word) {
    if (n <= sig.token_ids_stride) return true;
    raise(word, ck_token_ids_stride);
    return false;
  }
};
template <>
struct device_segmenter<fixed_length_segmenter> {
  template <class Cache, class T>
  static status host_check(const fixed_length_segmenter& seg, const Cache& c, const signals<T>& sig) {
    return seg.validate(c, sig);  // reads no table
  }
  template <class T>
  __device__ static bool check(const fixed_length_segmenter&, const signals<T>&, int, int*) {
    return true;
  }
};

//! Fixed units of `len` tokens over [lo, hi): offsets relative to lo. Returns the count.
__device__ inline int fixed_units(int lo, int hi, int len, std::int32_t* off) {
  const int m = hi - lo, count = (m + len - 1) / len;
  for (int u = threadIdx.x; u <= count; u += blockDim.x) off[u] = u < count ? u * len : m;
  return count;
}

//! The cuts of ids[lo, hi) after delimiters (parallel, in order), relative to lo, into
//! `cuts[0..k)`; returns k (also left in `*s_count`).
template <class Scan>
__device__ int delimiter_cuts(const delimiter_segmenter& seg, const std::int32_t* ids, int lo, int hi,
                              std::int32_t* cuts, typename Scan::TempStorage& tmp, int* s_count) {
  const int m = hi - lo;
  if (threadIdx.x == 0) *s_count = 0;
  __syncthreads();
  for (int t0 = 0; t0 < m - 1; t0 += blockDim.x) {
    const int t = t0 + threadIdx.x;
    const int cut = t < m - 1 && seg.is_delimiter(ids[lo + t]) ? 1 : 0;
    int at, total;
    Scan(tmp).ExclusiveSum(cut, at, total);
    if (cut) cuts[*s_count + at] = t + 1;
    __syncthreads();
    if (threadIdx.x == 0) *s_count += total;
    __syncthreads();
  }
  return *s_count;
}

//! Delimiter segmentation of ids[lo, hi): the cuts, then the host's merge / split rules on one
//! thread. Offsets relative to lo. Returns the count.
template <class Scan>
__device__ int delimiter_units(const delimiter_segmenter& seg, const std::int32_t* ids, int lo, int hi,
                               std::int32_t* off, typename Scan::TempStorage& tmp, int* s_count) {
  const int k = delimiter_cuts<Scan>(seg, ids, lo, hi, off + 1, tmp, s_count);
  if (threadIdx.x == 0) {
    off[0] = 0;
    off[k + 1] = hi - lo;
    *s_count = detail::merge_and_split(off, k + 1, seg.min_len, seg.max_len);
  }
  __syncthreads();
  return *s_count;
}

//! Two-level delimiter segmentation of ids[lo, hi) (SABlock with sentence ids): the cuts into
//! `raw`, then `detail::two_level_segments` (shared with the host) on one thread. Clause offsets relative to lo in
//! `off`, sentences as clause ranges in `sent`. Returns the clause count; the sentence count in
//! `*s_sent`.
template <class Scan>
__device__ int delimiter_levels(const delimiter_segmenter& seg, const std::int32_t* ids, int lo, int hi,
                                std::int32_t* off, std::int32_t* raw, std::int32_t* sent,
                                typename Scan::TempStorage& tmp, int* s_count, int* s_sent) {
  const int k = delimiter_cuts<Scan>(seg, ids, lo, hi, raw, tmp, s_count);
  if (threadIdx.x == 0) {
    int ns = 0;
    *s_count = detail::two_level_segments(raw, k, 0, hi - lo, delimiter_segmenter::sentence_cut{&seg, ids, lo},
                                                seg.min_len, seg.max_len, seg.sentence_min_len, seg.sentence_max_len,
                                                off, sent, &ns);
    *s_sent = ns;
  }
  __syncthreads();
  return *s_count;
}

// ---- exact fill: the k best unmarked entries of v[0, m) by value, ties to the lower index ----

template <class Scan>
__device__ void fill_best_unmarked(const double* v, int m, int k, unsigned char* keep, typename Scan::TempStorage& tmp,
                                   unsigned* hist, std::uint64_t* s_prefix, int* s_krem, int* s_eq_base) {
  if (k <= 0) return;
  if (threadIdx.x == 0) {
    *s_prefix = 0;
    *s_krem = k;
  }
  std::uint64_t mask = 0;
  __syncthreads();
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const std::uint64_t prefix = *s_prefix;
    for (int t = threadIdx.x; t < m; t += blockDim.x) {
      if (keep[t]) continue;
      const std::uint64_t key = detail::order_key64(v[t]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int krem = *s_krem;
      const int digit = detail::pick_digit(hist, krem);  // k <= unmarked entries, so krem >= 1 stays true
      *s_krem = krem;
      *s_prefix = prefix | (static_cast<std::uint64_t>(digit) << shift);
    }
    mask |= 255ull << shift;
    __syncthreads();
  }
  const std::uint64_t thr = *s_prefix;
  const int krem = *s_krem;
  if (threadIdx.x == 0) *s_eq_base = 0;
  __syncthreads();
  for (int t0 = 0; t0 < m; t0 += blockDim.x) {
    const int t = t0 + threadIdx.x;
    int take = 0, eq = 0;
    if (t < m && !keep[t]) {
      const std::uint64_t key = detail::order_key64(v[t]);
      take = key > thr;
      eq = key == thr;
    }
    int rank, total;
    Scan(tmp).ExclusiveSum(eq, rank, total);
    if (take || (eq && *s_eq_base + rank < krem)) keep[t] = 1;
    __syncthreads();
    if (threadIdx.x == 0) *s_eq_base += total;
    __syncthreads();
  }
}

//! Orders units by mean (descending, ties to the earlier unit) with a bitonic sort of `pow2`
//! entries in global scratch (padding entries sort last).
__device__ inline void sort_units(std::uint64_t* key, std::int32_t* idx, int count, int pow2) {
  for (int i = threadIdx.x; i < pow2; i += blockDim.x)
    if (i >= count) {
      key[i] = 0;
      idx[i] = 0x7fffffff;
    }
  __syncthreads();
  auto before = [&](int a, int b) { return key[a] > key[b] || (key[a] == key[b] && idx[a] < idx[b]); };
  for (int k = 2; k <= pow2; k <<= 1)
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < pow2; i += blockDim.x) {
        const int l = i ^ j;
        if (l > i) {
          const bool up = (i & k) == 0;
          if (up ? before(l, i) : before(i, l)) {
            const std::uint64_t tk = key[i];
            key[i] = key[l];
            key[l] = tk;
            const std::int32_t ti = idx[i];
            idx[i] = idx[l];
            idx[l] = ti;
          }
        }
      }
      __syncthreads();
    }
}

// ---- the row kernel ----

//! Scratch of one row unit, laid out like the slabs (see block_layout).
struct block_scratch_ptrs {
  double* a;             // [cap] row scores over [lo, hi), refined in place (SABlock)
  double* prefix;        // [cap] SABlock's local prefix sums
  unsigned char* keep;   // [cap]
  std::int32_t* off;     // [cap + 1]
  std::uint64_t* key;    // [2 cap] unit sort keys (units path)
  std::int32_t* idx;     // [2 cap]
  unsigned char* taken;  // [cap] units kept whole
};

template <class Granularity>
struct block_traits;
template <class Sharing>
struct block_traits<fixed_block<Sharing>> {
  static constexpr bool shared = Sharing::shared, sablock = false, delimiters = false;
};
template <class Seg, class Sharing>
struct block_traits<segment_level<Seg, Sharing>> {
  static constexpr bool shared = Sharing::shared, sablock = false,
                        delimiters = std::is_same_v<Seg, delimiter_segmenter>;
};
template <class Seg, class Sharing>
struct block_traits<adaptive_block<Seg, Sharing>> {
  static constexpr bool shared = Sharing::shared, sablock = true,
                        delimiters = std::is_same_v<Seg, delimiter_segmenter>;
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

template <class Cache>
__device__ block_scratch_ptrs row_scratch(const block_scratch_ptrs& ws, const Cache& c, int s, int h) {
  const std::size_t b = row_base(c, s, h), row = static_cast<std::size_t>(s) * c.num_kv_heads() + h;
  return {ws.a + b, ws.prefix ? ws.prefix + b : nullptr, ws.keep + b, ws.off + b + row,
          ws.key ? ws.key + 2 * b : nullptr, ws.idx ? ws.idx + 2 * b : nullptr, ws.taken ? ws.taken + b : nullptr};
}

template <class Granularity, class Cache, class T>
__global__ void __launch_bounds__(block_threads) block_select_kernel(block_args<Granularity, Cache, T> a) {
  using traits = block_traits<Granularity>;
  using scan = cub::BlockScan<int, block_threads>;
  using reduce_ll = cub::BlockReduce<long long, block_threads>;
  using reduce_d = cub::BlockReduce<double, block_threads>;
  __shared__ union {
    typename scan::TempStorage scan;
    typename reduce_ll::TempStorage ll;
    typename reduce_d::TempStorage d;
  } tmp;
  __shared__ unsigned hist[256];
  __shared__ std::uint64_t s_prefix;
  __shared__ int s_count, s_krem, s_eq_base, s_left, s_base, s_sent;
  __shared__ double s_lo, s_hi, s_gamma;
  __shared__ long long s_cost;

  const Cache& c = a.cache;
  const int kvh = c.num_kv_heads();
  const int s = traits::shared ? blockIdx.x : blockIdx.x / kvh, h = traits::shared ? 0 : blockIdx.x % kvh;
  if (block_failed(a.word)) return;
  const row_rule si = a.rules.info(c, s);
  const int n = c.seq_len(s, h), r = s * kvh + h, b = si.budget;
  std::int32_t* out = a.out.row(r);
  if constexpr (traits::delimiters) {  // the same verdict in every thread: n is the block's
    if (!device_segmenter<std::decay_t<decltype(a.gran.segmenter)>>::check(a.gran.segmenter, a.sig, n, a.word)) return;
  }
  if (si.kept_whole()) {  // every head keeps all of its own tokens, as on the host
    for (int hh = traits::shared ? 0 : h; hh < (traits::shared ? kvh : h + 1); ++hh) {
      const int nh = c.seq_len(s, hh);
      std::int32_t* o = a.out.row(s * kvh + hh);
      for (int t = threadIdx.x; t < nh; t += blockDim.x) o[t] = t;
      if (threadIdx.x == 0) a.out.counts[s * kvh + hh] = nh;
    }
    return;
  }
  {  // non-finite scores fail the call, as on the host (every head this row reads)
    if (threadIdx.x == 0) s_count = 0;
    __syncthreads();
    for (int hh = traits::shared ? 0 : h; hh < (traits::shared ? kvh : h + 1); ++hh) {
      const float* sc = a.scores + row_base(c, s, hh);
      for (int t = threadIdx.x, nh = c.seq_len(s, hh); t < nh; t += blockDim.x)
        if (!isfinite(sc[t])) atomicOr(&s_count, 1);
    }
    __syncthreads();
    if (s_count) {
      if (threadIdx.x == 0) raise(a.word, ck_score_non_finite);
      return;
    }
  }
  if (n <= b) {
    for (int t = threadIdx.x; t < n; t += blockDim.x) out[t] = t;
    if (threadIdx.x == 0) a.out.counts[r] = n;
  } else {
    const detail::token_range range = si.range(n);
    const int lo = range.lo, hi = range.hi;
    const int m = hi - lo, bc = b - lo - (n - hi);
    const block_scratch_ptrs w = row_scratch(a.ws, c, s, h);
    // Row scores over [lo, hi): the head's, or the sum over heads in head order (as the host).
    for (int t = threadIdx.x; t < m; t += blockDim.x) {
      double v = 0;
      if (traits::shared) {  // over the heads that hold the token, as the host
        for (int hh = 0; hh < kvh; ++hh)
          if (lo + t < c.seq_len(s, hh))
            v = detail::add_rn(v, static_cast<double>(a.scores[row_base(c, s, hh) + lo + t]));
      } else {
        v = static_cast<double>(a.scores[row_base(c, s, h) + lo + t]);
      }
      w.a[t] = v;
      w.keep[t] = 0;
    }
    __syncthreads();
    if (bc > 0 && m > 0) {
      int count;
      const std::int32_t* sent = nullptr;  // SABlock's sentences as clause ranges (null: one level)
      int num_units = 0;                   // sentences (SABlock), else segments
      if constexpr (std::is_same_v<Granularity, fixed_block<typename Granularity::sharing_type>>) {
        count = fixed_units(lo, hi, a.gran.chunk, w.off);
      } else if constexpr (std::is_same_v<std::decay_t<decltype(a.gran.segmenter)>, fixed_length_segmenter>) {
        count = fixed_units(lo, hi, a.gran.segmenter.length, w.off);
      } else {
        const std::int32_t* ids = a.sig.token_ids + static_cast<std::size_t>(s) * a.sig.token_ids_stride;
        if (traits::sablock && a.gran.segmenter.two_level()) {
          std::int32_t* raw = w.idx;  // m - 1 raw cuts at most, then m + 1 sentence entries
          std::int32_t* sv = w.idx + (m > 1 ? m - 1 : 0);
          count = delimiter_levels<scan>(a.gran.segmenter, ids, lo, hi, w.off, raw, sv, tmp.scan, &s_count, &s_sent);
          sent = sv;
          num_units = s_sent;
        } else {
          count = delimiter_units<scan>(a.gran.segmenter, ids, lo, hi, w.off, tmp.scan, &s_count);
        }
      }
      if (!sent) num_units = count;
      __syncthreads();
      if constexpr (traits::sablock) {
        auto first = [&](int k) { return sent ? sent[k] : k; };
        const double alpha = a.gran.alpha, beta = a.gran.beta;
        const bool blocks = a.gran.sentence_blocks;
        // Refined scores and local prefix sums, a thread per sentence.
        double my_max = -DBL_MAX;
        for (int k = threadIdx.x; k < num_units; k += blockDim.x) {
          detail::refine_sentence(w.a, w.prefix, w.off, 0, first(k), first(k + 1), alpha, beta);
          for (int t = w.off[first(k)]; t < w.off[first(k + 1)]; ++t) my_max = w.a[t] > my_max ? w.a[t] : my_max;
        }
        __syncthreads();
        const double rmax = reduce_d(tmp.d).Reduce(my_max, [](double x, double y) { return x > y ? x : y; });
        __syncthreads();
        if (threadIdx.x == 0) {
          double rsum = 0;
          for (int u = 0; u < count; ++u) rsum = detail::add_rn(rsum, w.prefix[w.off[u + 1] - 1]);
          s_gamma = detail::mul_rn(a.gran.g, rsum / m);
          s_lo = 0.0;
          s_hi = detail::add_rn(rmax, s_gamma);
        }
        __syncthreads();
        const double gamma = s_gamma;
        const int maxc = a.gran.block_size;
        auto cost_at = [&](double lam) {
          long long mine = 0;
          for (int k = threadIdx.x; k < num_units; k += blockDim.x)
            mine += detail::sentence_cost(w.prefix, w.off, 0, first(k), first(k + 1), lam, gamma, maxc, blocks, nullptr);
          const long long total = reduce_ll(tmp.ll).Sum(mine);
          if (threadIdx.x == 0) s_cost = total;
          __syncthreads();
          return s_cost;
        };
        for (int grow = 0; grow < detail::sablock_max_grow; ++grow) {
          const double hi_now = s_hi;
          if (cost_at(hi_now) <= bc) break;
          __syncthreads();
          if (threadIdx.x == 0) s_hi = detail::sablock_grow(hi_now);
          __syncthreads();
        }
        __syncthreads();
        for (int it = 0; it < a.gran.steps; ++it) {
          const double mid = 0.5 * (s_lo + s_hi);
          const long long cm = cost_at(mid);
          __syncthreads();
          if (threadIdx.x == 0) {
            if (cm > bc)
              s_lo = mid;
            else
              s_hi = mid;
          }
          __syncthreads();
        }
        long long mine = 0;
        for (int k = threadIdx.x; k < num_units; k += blockDim.x)
          mine += detail::sentence_cost(w.prefix, w.off, 0, first(k), first(k + 1), s_hi, gamma, maxc, blocks, w.keep);
        const long long kept = reduce_ll(tmp.ll).Sum(mine);
        if (threadIdx.x == 0) s_left = bc - static_cast<int>(kept < bc ? kept : bc);
        __syncthreads();
      } else {
        // Units kept whole by mean while they fit (descending, ties to the earlier), then the fill.
        int pow2 = 1;
        while (pow2 < count) pow2 <<= 1;
        for (int u = threadIdx.x; u < count; u += blockDim.x) {
          w.key[u] = detail::order_key64(detail::segment_mean(w.a, w.off[u], w.off[u + 1] - w.off[u]));
          w.idx[u] = u;
          w.taken[u] = 0;
        }
        __syncthreads();
        sort_units(w.key, w.idx, count, pow2);
        if (threadIdx.x == 0) {
          int left = bc;
          for (int i = 0; i < count && left > 0; ++i) {
            const int u = w.idx[i], len = w.off[u + 1] - w.off[u];
            if (len > left) continue;
            w.taken[u] = 1;
            left -= len;
          }
          s_left = left;
        }
        __syncthreads();
        for (int u = threadIdx.x; u < count; u += blockDim.x)
          if (w.taken[u])
            for (int t = w.off[u]; t < w.off[u + 1]; ++t) w.keep[t] = 1;
        __syncthreads();
      }
      fill_best_unmarked<scan>(w.a, m, s_left, w.keep, tmp.scan, hist, &s_prefix, &s_krem, &s_eq_base);
      __syncthreads();
    }
    // Plan row: protected, marked, protected, in order.
    if (threadIdx.x == 0) s_base = 0;
    __syncthreads();
    for (int t0 = 0; t0 < n; t0 += blockDim.x) {
      const int t = t0 + threadIdx.x;
      const int k = t < n && (t < lo || t >= hi || w.keep[t - lo]) ? 1 : 0;
      int at, total;
      scan(tmp.scan).ExclusiveSum(k, at, total);
      if (k) out[s_base + at] = t;
      __syncthreads();
      if (threadIdx.x == 0) s_base += total;
      __syncthreads();
    }
    if (threadIdx.x == 0) a.out.counts[r] = s_base;
  }
  if (traits::shared) {  // one plan for every head of the sequence
    __syncthreads();
    const int cnt = a.out.counts[r];
    for (int hh = 1; hh < kvh; ++hh) {
      std::int32_t* dst = a.out.row(s * kvh + hh);
      for (int t = threadIdx.x; t < cnt; t += blockDim.x) dst[t] = out[t];
      if (threadIdx.x == 0) a.out.counts[s * kvh + hh] = cnt;
    }
  }
}

// ---- granularities on the device ----

template <class Granularity>
struct device_granularity;

template <>
struct device_granularity<token_level> {
  template <class Cache, class T>
  static status host_check(const token_level&, const Cache&, const signals<T>&) {
    return ok_status();
  }
  template <class Cache>
  static scratch_request request(const token_level&, const Cache& c) {
    return topk_layout::of(c).request();
  }
  template <class Cache, class T>
  static status enqueue(const token_level&, cudaStream_t st, const Cache& c, const signals<T>&, const seq_rules& rules,
                        const float* scores, keep_plan out, void* zeroed, void* plain, int* word) {
    return enqueue_top_k(st, c, rules, scores, out, zeroed, plain, word);
  }
};

template <class Granularity>
struct device_block_granularity {
  using traits = block_traits<Granularity>;
  template <class Cache>
  static detail::workspace_layout<7> layout(const Cache& c) {
    const std::size_t tok = slab_tokens(c), rows = static_cast<std::size_t>(c.num_seqs()) * c.num_kv_heads();
    const bool units = !traits::sablock;
    // idx: the units' sort indices, or SABlock's raw cuts and sentences (two levels).
    return detail::workspace_layout<7>{{sizeof(double) * tok, traits::sablock ? sizeof(double) * tok : 0, tok,
                                        sizeof(std::int32_t) * (tok + rows + 1),
                                        units ? sizeof(std::uint64_t) * 2 * tok : 0,
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
  static scratch_request request(const Granularity&, const Cache& c) {
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

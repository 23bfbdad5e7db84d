//! \file segment/segmenters.hpp
//! Segmenters: cut a sequence's compressible range into semantic segments (CSR offsets).
//!
//! Segmenter interface (write your own as a small struct with these members):
//! \code
//! template <class Cache, class T> status validate(const Cache&, const signals<T>&) const;
//! template <class Cache> std::size_t scratch_bytes(const Cache&, int max_len) const;
//! // Writes offsets[0] = lo < offsets[1] < ... < offsets[count] = hi and returns count (0 when lo == hi).
//! template <class Cache, class T>
//! int segment(const Cache&, const signals<T>&, int seq, int head, int lo, int hi, std::int32_t* offsets, void*
//! scratch) const; \endcode
#pragma once

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../detail/checks.hpp"
#include "../detail/math.hpp"
#include "../numeric.hpp"
#include "../signals.hpp"
#include "../status.hpp"

namespace kvevict {

//! `max_len` value meaning "no maximum segment length": segments are never split.
inline constexpr int no_max_len = INT_MAX;

// The segment arithmetic the host segmenters and the CUDA kernels share (not API).
namespace detail {

//! Pieces a segment of `n` tokens splits into under `max_len`: `ceil(n / max_len)`, 1 when it fits.
KVEVICT_HOST_DEVICE std::int64_t split_pieces(std::int64_t n, int max_len) {
  return n > max_len ? (n + max_len - 1) / max_len : 1;
}
//! Where piece `j` of `p` of the segment `[start, start + n)` starts.
KVEVICT_HOST_DEVICE std::int32_t split_cut(std::int64_t start, std::int64_t n, std::int64_t p, std::int64_t j) {
  return static_cast<std::int32_t>(start + n * j / p);
}
//! Whether the last of the merged segments `offsets[0..m]` is short and joins the one before it.
KVEVICT_HOST_DEVICE bool merge_last_is_short(const std::int32_t* offsets, int m, int min_len) {
  return m > 1 && offsets[m] - offsets[m - 1] < min_len;
}
//! The merge's last rule on merged ends `offsets[0..m]`: a short last segment joins the one before
//! it. Returns the new count.
KVEVICT_HOST_DEVICE int merge_short_last(std::int32_t* offsets, int m, int min_len) {
  if (merge_last_is_short(offsets, m, min_len)) {
    offsets[m - 1] = offsets[m];
    --m;
  }
  return m;
}

//! Applies `min_len` merging then `max_len` splitting to the raw segment ends in `offsets[0..count]`
//! (in place; `offsets` must hold `2 * (hi - lo) + 1` entries) and returns the new count.
//! Merging: a segment shorter than `min_len` merges into the following one (repeatedly, so the
//! merged segment is checked again); a short last segment merges into the one before it.
//! Splitting: a segment of `n > max_len` tokens becomes `p = ceil(n / max_len)` pieces cut at
//! `start + floor(n * j / p)`. (The CUDA kernels compute the same ends on a whole block of threads:
//! `merge_successor` and `merge_jump_step` below.)
KVEVICT_HOST_DEVICE int merge_and_split(std::int32_t* offsets, int count, int min_len, int max_len) {
  if (count == 0) return 0;
  // Merge (in place, forward).
  int m = 0;  // merged segments written: offsets[0..m]
  for (int i = 1; i <= count; ++i) {
    if (offsets[i] - offsets[m] >= min_len || i == count) offsets[++m] = offsets[i];
  }
  m = merge_short_last(offsets, m, min_len);
  // Split (backwards into the tail so it is in place: count can only grow).
  int total = 0;
  for (int i = 0; i < m; ++i) total += static_cast<int>(split_pieces(offsets[i + 1] - offsets[i], max_len));
  int w = total;
  for (int i = m - 1; i >= 0; --i) {
    const std::int64_t start = offsets[i], n = offsets[i + 1] - offsets[i], p = split_pieces(n, max_len);
    const std::int32_t end = offsets[i + 1];
    offsets[w--] = end;
    for (std::int64_t j = p - 1; j >= 1; --j) offsets[w--] = split_cut(start, n, p, j);
  }
  return total;
}

// The merge on many threads. The ends the forward merge keeps form a chain: from a kept end `j`,
// the next kept end is the first `i > j` at least `min_len` tokens on (`merge_successor`), or the
// last end. A block marks the chain from end 0 by pointer doubling: `ja` holds each end's 2^r-th
// successor; every marked end marks its entry, and `jb` gets the 2^(r+1)-th successors. After r
// rounds the first 2^r ends of the chain are marked, and an end is only ever marked when it is on
// the chain, in whatever order the threads run. The rounds stop when `ja[0]` is the last end.

//! The merge's successor of end `j < count` of `offsets[0..count]` (strictly increasing): the first
//! `i > j` with `offsets[i] - offsets[j] >= min_len`, or `count`. Binary search.
KVEVICT_HOST_DEVICE int merge_successor(const std::int32_t* offsets, int count, int min_len, int j) {
  return first_at_least(offsets, j + 1, count, static_cast<std::int64_t>(offsets[j]) + min_len);
}

//! One round of the doubling for end `i < count` (`count` itself, the last end, is its own
//! successor and is not stored): marks `ja[i]` when `i` is marked, and writes `jb[i] = ja[ja[i]]`.
KVEVICT_HOST_DEVICE void merge_jump_step(const std::int32_t* ja, std::int32_t* jb, unsigned char* mark, int count,
                                         int i) {
  const int j = ja[i];
  if (mark[i] && j < count) mark[j] = 1;
  jb[i] = j < count ? ja[j] : count;
}

//! Thread `t`'s share of `[0, m)` among `threads` (blocked arrangement): contiguous, in thread
//! order, covering `[0, m)`, lengths differing by at most one.
struct index_span {
  int begin, end;
};
KVEVICT_HOST_DEVICE index_span blocked_share(int m, int threads, int t) {
  const int q = m / threads, r = m % threads, begin = t * q + (t < r ? t : r);
  return {begin, begin + q + (t < r ? 1 : 0)};
}

//! The clauses of the sentence `[start, end)`: the raw cuts strictly inside it (`raw[0..nraw)`
//! ascending), merged and split with (`min_len`, `max_len`), written to `region[0..c]` (which holds
//! `end - start + 1` entries; `region[c] == end`). Returns c.
KVEVICT_HOST_DEVICE int sentence_clauses(const std::int32_t* raw, int nraw, std::int32_t start, std::int32_t end,
                                         int min_len, int max_len, std::int32_t* region) {
  int j = first_at_least(raw, 0, nraw, static_cast<std::int64_t>(start) + 1);  // the first raw cut after start
  int c = 0;
  region[0] = start;
  while (j < nraw && raw[j] < end) region[++c] = raw[j++];
  region[++c] = end;
  return merge_and_split(region, c, min_len, max_len);
}

//! Two-level segmentation (sentences made of clauses) from raw cuts. `raw[0..nraw)`: ascending cut
//! positions in (lo, hi), a cut at p ending a segment before token p (after a delimiter);
//! `sentence_cut(p)`: whether the cut at p ends a sentence. Sentences are cut at the sentence cuts
//! and get `merge_and_split` with (`smin`, `smax`); inside each sentence, clauses are cut at every
//! raw cut and get `merge_and_split` with (`min_len`, `max_len`), so clauses nest in sentences.
//! Writes clause offsets `off[0..c]` (lo .. hi) and `sent[0..s]`, sentence k being clauses
//! `[sent[k], sent[k+1])`; returns c and sets `*num_sentences = s`. `off` and `sent` each hold
//! `hi - lo + 1` entries (at least 1); `raw` is not written.
template <class SentenceCut>
KVEVICT_HOST_DEVICE int two_level_segments(const std::int32_t* raw, int nraw, int lo, int hi, SentenceCut sentence_cut,
                                           int min_len, int max_len, int smin, int smax, std::int32_t* off,
                                           std::int32_t* sent, int* num_sentences) {
  *num_sentences = 0;
  if (hi <= lo) return 0;
  int ns = 0;
  sent[0] = lo;
  for (int i = 0; i < nraw; ++i)
    if (sentence_cut(raw[i])) sent[++ns] = raw[i];
  sent[++ns] = hi;
  const int S = merge_and_split(sent, ns, smin, smax);
  int cur = 0;
  std::int32_t start = sent[0];
  for (int k = 0; k < S; ++k) {
    const std::int32_t end = sent[k + 1];
    sent[k] = cur;  // token offset k (== start) is read; it becomes sentence k's first clause
    cur += sentence_clauses(raw, nraw, start, end, min_len, max_len, off + cur);  // off + cur holds end - start + 1
    start = end;
  }
  sent[S] = cur;
  *num_sentences = S;
  return cur;
}

}  // namespace detail

//! Cuts after every delimiter token (the delimiter closes its segment), then merges segments
//! shorter than `min_len` and splits those longer than `max_len`. Needs `signals.token_ids`; the
//! delimiter ids are the engine tokenizer's (period, comma, semicolon, colon, question and
//! exclamation marks, newline), and at least one must be configured: with none every sequence
//! would be one segment cut only by `max_len`, so `validate` rejects it (`segmenter.delimiter_ids`;
//! use `fixed_length_segmenter` for length-only segments). With no token ids the call is rejected
//! naming `signals.token_ids`: use `key_similarity_segmenter` then.
//!
//! Two levels (SABlock reads both; SentenceKV the clauses): with `sentence_ids` set (the ids that
//! end a sentence: period, question and exclamation marks, newline), clauses nest in sentences.
//! Every sentence id also ends a clause. Sentences get their own `sentence_min_len` /
//! `sentence_max_len`; clauses are cut inside each sentence. Without sentence ids, every clause
//! is its own sentence (one level).
struct delimiter_segmenter {
  //! The cuts read the sequence's token ids only: every KV head gets the same.
  template <class Cache>
  static constexpr bool cuts_heads_alike() {
    return true;
  }
  const std::int32_t* delimiter_ids = nullptr;  // [num_delimiters]
  int num_delimiters = 0;
  int min_len = 3;   //!< shorter segments merge into the next (>= 1)
  int max_len = 64;  //!< longer segments split evenly (>= 1); `kvevict::no_max_len` never splits
  const std::int32_t* sentence_ids = nullptr;  //!< [num_sentence_ids] ids ending a sentence (optional)
  int num_sentence_ids = 0;
  int sentence_min_len = 3;    //!< shorter sentences merge into the next (>= 1)
  int sentence_max_len = 256;  //!< longer sentences split evenly (>= 1)

  template <class Cache, class T>
  status validate(const Cache& cache, const signals<T>& sig) const {
    KVEVICT_TRY(check_token_ids(sig));
    for (int s = 0; s < cache.num_seqs(); ++s)
      for (int h = 0; h < cache.num_kv_heads(); ++h)
        KVEVICT_TRY(detail::status_of(
            detail::check_stride(cache.seq_len(s, h), sig.token_ids_stride, detail::ck_token_ids_stride)));
    return check_rules();
  }
  //! The checks that read no sequence length (validate's first and last parts).
  template <class T>
  status check_token_ids(const signals<T>& sig) const {
    if (sig.token_ids == nullptr)
      return make_error(errc::invalid_argument, "signals.token_ids",
                        "the delimiter segmenter needs token ids (use key_similarity_segmenter without them)");
    return ok_status();
  }
  status check_rules() const {
    if (num_delimiters < 0 || (num_delimiters > 0 && delimiter_ids == nullptr))
      return make_error(errc::invalid_argument, "segmenter.delimiter_ids", "null or negative count");
    if (num_delimiters == 0)
      return make_error(errc::invalid_argument, "segmenter.delimiter_ids",
                        "no delimiter ids configured: pass the tokenizer's ids for . , ; : ? ! and newline "
                        "(or use fixed_length_segmenter)");
    if (min_len < 1 || max_len < 1)
      return make_error(errc::invalid_argument, "segmenter.min_len / max_len", "must be >= 1");
    if (num_sentence_ids < 0 || (num_sentence_ids > 0 && sentence_ids == nullptr))
      return make_error(errc::invalid_argument, "segmenter.sentence_ids", "null or negative count");
    if (sentence_min_len < 1 || sentence_max_len < 1)
      return make_error(errc::invalid_argument, "segmenter.sentence_min_len / sentence_max_len", "must be >= 1");
    return ok_status();
  }
  //! Whether sentences are configured (two levels).
  KVEVICT_HOST_DEVICE bool two_level() const { return num_sentence_ids > 0; }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int max_len_tokens) const {
    return two_level() ? sizeof(std::int32_t) * (static_cast<std::size_t>(max_len_tokens) + 1) : 0;  // raw cuts
  }
  KVEVICT_HOST_DEVICE bool is_sentence_end(std::int32_t id) const {
    for (int i = 0; i < num_sentence_ids; ++i)
      if (sentence_ids[i] == id) return true;
    return false;
  }
  KVEVICT_HOST_DEVICE bool is_delimiter(std::int32_t id) const {
    for (int i = 0; i < num_delimiters; ++i)
      if (delimiter_ids[i] == id) return true;
    return is_sentence_end(id);
  }
  //! Segments token ids `ids[lo, hi)`.
  int segment_ids(const std::int32_t* ids, int lo, int hi, std::int32_t* offsets) const {
    if (hi <= lo) return 0;
    int c = 0;
    offsets[0] = lo;
    for (int t = lo; t < hi - 1; ++t)
      if (is_delimiter(ids[t])) offsets[++c] = t + 1;
    offsets[++c] = hi;
    return detail::merge_and_split(offsets, c, min_len, max_len);
  }
  template <class Cache, class T>
  int segment(const Cache&, const signals<T>& sig, int seq, int, int lo, int hi, std::int32_t* offsets, void*) const {
    return segment_ids(sig.token_ids + static_cast<std::size_t>(seq) * sig.token_ids_stride, lo, hi, offsets);
  }
  //! Whether the cut at p (relative to `base`: token ids[base + p - 1] precedes it) ends a sentence.
  struct sentence_cut {
    const delimiter_segmenter* seg;
    const std::int32_t* ids;
    int base;
    KVEVICT_HOST_DEVICE bool operator()(std::int32_t p) const { return seg->is_sentence_end(ids[base + p - 1]); }
  };
  //! Both levels of ids[lo, hi) (see `detail::two_level_segments`); `raw` holds hi - lo entries.
  int segment_levels_ids(const std::int32_t* ids, int lo, int hi, std::int32_t* offsets, std::int32_t* sent,
                         int* num_sentences, std::int32_t* raw) const {
    int nraw = 0;
    for (int t = lo; t < hi - 1; ++t)
      if (is_delimiter(ids[t])) raw[nraw++] = t + 1;
    return detail::two_level_segments(raw, nraw, lo, hi, sentence_cut{this, ids, 0}, min_len, max_len,
                                            sentence_min_len, sentence_max_len, offsets, sent, num_sentences);
  }
  //! Two-level interface (optional for segmenters): clause offsets, and sentences as clause ranges
  //! `[sent[k], sent[k+1])`; `*num_sentences = -1` when this segmenter has one level here.
  template <class Cache, class T>
  int segment_levels(const Cache& cache, const signals<T>& sig, int seq, int head, int lo, int hi,
                     std::int32_t* offsets, std::int32_t* sent, int* num_sentences, void* scratch) const {
    if (!two_level()) {
      *num_sentences = -1;
      return segment(cache, sig, seq, head, lo, hi, offsets, scratch);
    }
    return segment_levels_ids(sig.token_ids + static_cast<std::size_t>(seq) * sig.token_ids_stride, lo, hi, offsets,
                              sent, num_sentences, static_cast<std::int32_t*>(scratch));
  }
};

//! Fixed-length segments of `length` tokens (the last may be shorter). Reads no signal.
struct fixed_length_segmenter {
  template <class Cache>
  static constexpr bool cuts_heads_alike() {
    return true;
  }
  int length = 16;
  template <class Cache, class T>
  status validate(const Cache&, const signals<T>&) const {
    return length >= 1 ? ok_status() : make_error(errc::invalid_argument, "segmenter.length", "must be >= 1");
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int) const {
    return 0;
  }
  template <class Cache, class T>
  int segment(const Cache&, const signals<T>&, int, int, int lo, int hi, std::int32_t* offsets, void*) const {
    int c = 0;
    offsets[0] = lo;
    for (int t = lo; t < hi;) {
      t = t + length < hi ? t + length : hi;
      offsets[++c] = t;
    }
    return c;
  }
};

namespace detail {
//! The cosine of two keys from their sums `aa` = |a|^2, `ab` = a . b, `bb` = |b|^2 (each added in
//! element order; 0 when a key is zero): the key-similarity segmenter's term, on the host and in
//! the CUDA backend's pre-pass.
KVEVICT_HOST_DEVICE double key_cosine(double aa, double ab, double bb) {
  return (aa > 0 && bb > 0) ? ab / std::sqrt(aa * bb) : 0.0;
}
}  // namespace detail

//! For engines without token ids: a boundary after token `t` where the cosine similarity of the
//! adjacent keys `t` and `t + 1`, averaged over KV heads, is a strict local minimum (lower than at
//! `t - 1` and not higher than at `t + 1`); then `min_len` / `max_len` as the delimiter segmenter.
//! Cost O(tokens x kv_heads x head_dim).
struct key_similarity_segmenter {
  //! The similarity is averaged over every KV head, except in a (sequence, head)-row cache.
  template <class Cache>
  static constexpr bool cuts_heads_alike() {
    return !Cache::per_head_rows;
  }
  int min_len = 3;   //!< shorter segments merge into the next (>= 1)
  int max_len = 64;  //!< longer segments split evenly (>= 1); `kvevict::no_max_len` never splits
  template <class Cache, class T>
  status validate(const Cache&, const signals<T>&) const {
    return min_len >= 1 && max_len >= 1
               ? ok_status()
               : make_error(errc::invalid_argument, "segmenter.min_len / max_len", "must be >= 1");
  }
  template <class Cache>
  std::size_t scratch_bytes(const Cache&, int max_len_tokens) const {
    return sizeof(double) * static_cast<std::size_t>(max_len_tokens + 1);
  }
  template <class Cache, class T>
  int segment(const Cache& cache, const signals<T>&, int seq, int head, int lo, int hi, std::int32_t* offsets,
              void* scratch) const {
    if (hi <= lo) return 0;
    double* sim = static_cast<double*>(scratch);  // sim[t - lo]: similarity of keys t and t + 1
    const int kvh = Cache::per_head_rows ? 1 : cache.num_kv_heads(), d = cache.head_dim(), ps = cache.page_size();
    // sim[t] = (0 + cos_0(t) + cos_1(t) + ...) / kvh, the heads added in order; each key's squared
    // norm is summed once and carried to the next pair (the same sum, in the same order).
    for (int t = lo; t + 1 < hi; ++t) sim[t - lo] = 0;
    for (int hh = 0; hh < kvh; ++hh) {
      const int h = Cache::per_head_rows ? head : hh;
      double aa = 0;
      {
        const auto* a = cache.key(cache.page(seq, h, lo / ps), lo % ps, h);
        for (int x = 0; x < d; ++x) {
          const double fa = to_float(a[x]);
          aa += fa * fa;
        }
      }
      // `M` pairs from t on: M independent chains of sums (each in x order, as one pair alone);
      // four at a time, then one at a time.
      auto pairs = [&](int t, auto count) {
        constexpr int M = decltype(count)::value;
        decltype(cache.key(0, 0, 0)) k[M + 1];
        for (int j = 0; j <= M; ++j) k[j] = cache.key(cache.page(seq, h, (t + j) / ps), (t + j) % ps, h);
        double ab[M] = {}, bb[M] = {};
        for (int x = 0; x < d; ++x) {
          double f[M + 1];
          for (int j = 0; j <= M; ++j) f[j] = to_float(k[j][x]);
          for (int j = 0; j < M; ++j) {
            ab[j] += f[j] * f[j + 1];
            bb[j] += f[j + 1] * f[j + 1];
          }
        }
        for (int j = 0; j < M; ++j) {
          sim[t + j - lo] += detail::key_cosine(aa, ab[j], bb[j]);
          aa = bb[j];
        }
      };
      int t = lo;
      for (; t + 4 < hi; t += 4) pairs(t, std::integral_constant<int, 4>{});
      for (; t + 1 < hi; ++t) pairs(t, std::integral_constant<int, 1>{});
    }
    for (int t = lo; t + 1 < hi; ++t) sim[t - lo] /= kvh;
    int c = 0;
    offsets[0] = lo;
    for (int t = lo; t + 1 < hi; ++t) {
      const double s = sim[t - lo];
      const bool lower_than_prev = t == lo || s < sim[t - lo - 1];
      const bool not_higher_than_next = t + 2 >= hi || s <= sim[t - lo + 1];
      if (lower_than_prev && not_higher_than_next) offsets[++c] = t + 1;
    }
    offsets[++c] = hi;
    return detail::merge_and_split(offsets, c, min_len, max_len);
  }
};

}  // namespace kvevict

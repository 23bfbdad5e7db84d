//! \file decode/decode.hpp
//! Decode-time eviction in an append-only paged cache: what an engine calls each step.
//!
//! The loop: append the step's K and V; add the step's attention to the H2O sums
//! (`accumulate_attention` or `accumulate_step_attention`); push the step's query into a
//! `query_ring` (window-attention scorers). When a sequence crosses `budget + slack`,
//! `decode_budgets` marks it for eviction (the others are kept whole and not scored), `evict`
//! plans and compacts every marked sequence back to `budget`, `compact_attention_sums` moves the
//! sums with the tokens, and the engine returns `compact_result.freed_pages` to its allocator
//! (`apply_compaction` rewrites a CSR page table).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../keep_plan.hpp"
#include "../numeric.hpp"
#include "../scorer/accumulated_attention.hpp"
#include "../status.hpp"

namespace kvevict {

//! Per-sequence budgets and windows for one decode step: a sequence holding more than
//! `budget + slack` tokens gets `budget` (it will be evicted back to it); any other gets a budget
//! of at least its length (kept whole, not scored). Windows are `min(window, length, rows)` where
//! `rows` is how many queries the ring holds for it (pass `nullptr` to ignore). Returns how many
//! sequences will be evicted.
//!
//! \param seq_lens [num_seqs]; \param ring_rows [num_seqs] or null; outputs [num_seqs]
inline int decode_budgets(const std::int32_t* seq_lens, int num_seqs, int budget, int slack, int sinks, int window,
                          const std::int32_t* ring_rows, std::int32_t* seq_budgets, std::int32_t* seq_windows) {
  int evicting = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const int n = seq_lens[s];
    int w = std::min(window, n);
    if (ring_rows) w = std::min(w, static_cast<int>(ring_rows[s]));
    seq_windows[s] = w;
    if (n > budget + slack) {
      seq_budgets[s] = budget;
      ++evicting;
    } else {
      seq_budgets[s] = std::max(n, sinks + w);
    }
  }
  return evicting;
}

//! Adds one step's attention probabilities to the running H2O sums.
//! \param sums  [num_q_heads, sums_stride]  \param probs [num_q_heads, probs_stride], entries [0, len)
inline void accumulate_attention(float* sums, std::size_t sums_stride, const float* probs, std::size_t probs_stride,
                                 int num_q_heads, int len) {
  for (int q = 0; q < num_q_heads; ++q)
    for (int t = 0; t < len; ++t) sums[q * sums_stride + t] += probs[q * probs_stride + t];
}

//! Computes the step's attention from its query (the newest token's, which sees every key of
//! sequence `seq`) over the cache, and adds it to the H2O sums. No matrix.
//! \param query [num_q_heads, head_dim]  \param sums [num_q_heads, sums_stride]
//! \param scratch  host_backend::window_attention_scratch_floats(head_dim, 1, group, seq_len(seq)) floats
template <class Cache, class Q>
void accumulate_step_attention(const Cache& cache, int seq, const Q* query, int num_q_heads,
                               float* sums, std::size_t sums_stride, float* scratch) {
  const int group = num_q_heads / cache.num_kv_heads();
  for (int h = 0; h < cache.num_kv_heads(); ++h) {
    const int n = cache.seq_len(seq, h);
    host_backend::window_attention_group(detail::keys_of(cache, seq, h), n, cache.head_dim(),
                                         query + static_cast<std::size_t>(h) * group * cache.head_dim(),
                                         static_cast<std::size_t>(cache.head_dim()), group, 1, scratch,
                                         [&](int t, const float* col) {
                                           for (int j = 0; j < group; ++j)
                                             sums[static_cast<std::size_t>(h * group + j) * sums_stride + t] += col[j];
                                         }, detail::key_scale_of(cache));
  }
}

//! Moves H2O sums with their tokens after `compact`: row `q` of sequence `s` takes the plan row
//! of its KV head (`q / group`); entries past the new length are zeroed for the tokens to come.
//! \param sums [num_seqs, num_q_heads, sums_stride]
inline void compact_attention_sums(const_keep_plan plan, int num_seqs, int kv_heads, int num_q_heads, float* sums,
                                   std::size_t sums_stride, const std::int32_t* old_lens_per_row) {
  const int group = num_q_heads / kv_heads;
  for (int s = 0; s < num_seqs; ++s)
    for (int q = 0; q < num_q_heads; ++q) {
      const int r = s * kv_heads + q / group;
      float* row = sums + (static_cast<std::size_t>(s) * num_q_heads + q) * sums_stride;
      const std::int32_t* keep = plan.row(r);
      for (int j = 0; j < plan.counts[r]; ++j) row[j] = row[keep[j]];  // keep[j] >= j: in place
      for (int t = plan.counts[r]; t < old_lens_per_row[r]; ++t) row[t] = 0.0f;
    }
}

//! The last `rows` queries of every sequence, per query head, in a ring; `gather` lays them out
//! as `signals.queries` expects ([num_seqs, num_q_heads, rows, head_dim], oldest first; rows a
//! sequence has not filled yet are zero and `filled(seq)` tells how many are real). Owns its
//! memory (allocated once, at construction).
template <class T>
class query_ring {
 public:
  query_ring(int num_seqs, int num_q_heads, int rows, int head_dim)
      : seqs_(num_seqs),
        heads_(num_q_heads),
        rows_(rows),
        dim_(head_dim),
        data_(static_cast<std::size_t>(num_seqs) * num_q_heads * rows * head_dim, from_float<T>(0.0f)),
        next_(static_cast<std::size_t>(num_seqs), 0),
        filled_(static_cast<std::size_t>(num_seqs), 0) {}

  //! Adds the step's query of sequence `seq`. \param q [num_q_heads, head_dim]
  void push(int seq, const T* q) {
    const int slot = next_[seq];
    for (int h = 0; h < heads_; ++h)
      std::memcpy(&data_[((static_cast<std::size_t>(seq) * heads_ + h) * rows_ + slot) * dim_],
                  q + static_cast<std::size_t>(h) * dim_, sizeof(T) * dim_);
    next_[seq] = (slot + 1) % rows_;
    filled_[seq] = std::min(rows_, filled_[seq] + 1);
  }
  void clear(int seq) { next_[seq] = filled_[seq] = 0; }
  int rows() const { return rows_; }
  int filled(int seq) const { return filled_[seq]; }
  const std::int32_t* filled_counts() const { return filled_.data(); }

  //! \param out [num_seqs, num_q_heads, rows, head_dim], oldest query first, newest last
  void gather(T* out) const {
    for (int s = 0; s < seqs_; ++s)
      for (int h = 0; h < heads_; ++h)
        for (int i = 0; i < rows_; ++i) {
          // The newest sits at next - 1; row i of the output is the (rows - 1 - i)-th newest.
          const int age = rows_ - 1 - i;
          T* dst = out + ((static_cast<std::size_t>(s) * heads_ + h) * rows_ + i) * dim_;
          if (age >= filled_[s]) {
            for (int x = 0; x < dim_; ++x) dst[x] = from_float<T>(0.0f);
            continue;
          }
          const int slot = ((next_[s] - 1 - age) % rows_ + rows_) % rows_;
          std::memcpy(dst, &data_[((static_cast<std::size_t>(s) * heads_ + h) * rows_ + slot) * dim_],
                      sizeof(T) * dim_);
        }
  }

 private:
  int seqs_, heads_, rows_, dim_;
  std::vector<T> data_;
  std::vector<std::int32_t> next_, filled_;
};

//! Rewrites a FlashInfer-style CSR page table after `compact` (uniform budgets): sequence `s`
//! keeps its first `ceil(new_lens[s * kv_heads] / page_size)` pages, `indices` is packed in place,
//! `indptr` and `last_page_len` updated. The dropped pages are exactly `compact`'s freed pages.
inline void apply_compaction(std::int32_t* indptr, std::int32_t* indices, std::int32_t* last_page_len, int num_seqs,
                             int page_size, const std::int32_t* new_lens, int kv_heads) {
  int w = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const int n = new_lens[s * kv_heads], pages = (n + page_size - 1) / page_size;
    const int begin = indptr[s];
    for (int p = 0; p < pages; ++p) indices[w + p] = indices[begin + p];
    indptr[s] = w;
    w += pages;
    last_page_len[s] = n == 0 ? 0 : n - (pages - 1) * page_size;
  }
  indptr[num_seqs] = w;
}

}  // namespace kvevict

//! \file signals.hpp
//! What the engine passes besides the cache: queries, attention sums, token ids, layer index.
#pragma once

#include <cstdint>

namespace kvevict {

//! The inputs a policy may read besides the cache. Every pointer is caller-owned and may be null
//! when the chosen policy does not read it (each scorer / segmenter documents what it needs and
//! its validation names a missing one). `T` is the element type of the queries.
template <class T>
struct signals {
  //! The last queries of every sequence, rotary already applied: `query_rows` per (sequence,
  //! query head), the newest last. A sequence with window `w` reads its last `w` rows.
  //! [num_seqs, num_q_heads, query_rows, head_dim]
  const T* queries = nullptr;
  int num_q_heads = 0;  //!< query heads; a multiple of the cache's KV heads (GQA)
  int query_rows = 0;   //!< rows per (sequence, query head); 0 = the selector's window

  //! Accumulated attention received by each key (H2O), per query head.
  //! [num_seqs, num_q_heads, sums_stride], entries [0, seq_len) used
  const float* attention_sums = nullptr;
  int sums_stride = 0;

  //! Token ids of every sequence, for segmenters. [num_seqs, token_ids_stride]
  const std::int32_t* token_ids = nullptr;
  int token_ids_stride = 0;

  int layer = 0;       //!< this layer's index, for per-layer budgets
  int num_layers = 1;  //!< layers in the model, for per-layer budgets

  //! Optional per-sequence overrides of the selector (batches whose sequences differ): kept
  //! entries, sinks and recent window of each sequence. Null: the selector's value for all.
  //! A sequence whose every head holds at most its budget is kept whole and not scored.
  const std::int32_t* seq_budgets = nullptr;  // [num_seqs]
  const std::int32_t* seq_sinks = nullptr;    // [num_seqs]
  const std::int32_t* seq_windows = nullptr;  // [num_seqs], each <= the selector's window
};

}  // namespace kvevict

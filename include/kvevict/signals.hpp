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
  //! The last `window` queries of every sequence, rotary already applied (window = the selector's
  //! window). [num_seqs, num_q_heads, window, head_dim]
  const T* queries = nullptr;
  int num_q_heads = 0;  //!< query heads; a multiple of the cache's KV heads (GQA)

  //! Accumulated attention received by each key (H2O), per query head.
  //! [num_seqs, num_q_heads, sums_stride], entries [0, seq_len) used
  const float* attention_sums = nullptr;
  int sums_stride = 0;

  //! Token ids of every sequence, for segmenters. [num_seqs, token_ids_stride]
  const std::int32_t* token_ids = nullptr;
  int token_ids_stride = 0;

  int layer = 0;       //!< this layer's index, for per-layer budgets
  int num_layers = 1;  //!< layers in the model, for per-layer budgets
};

}  // namespace kvevict

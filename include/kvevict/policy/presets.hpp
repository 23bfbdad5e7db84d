//! \file policy/presets.hpp
//! The published policies as one-level aliases over eviction_policy.
#pragma once

#include "../granularity/block_granularities.hpp"
#include "../granularity/token_level.hpp"
#include "../scorer/accumulated_attention.hpp"
#include "../scorer/positional.hpp"
#include "../scorer/window_attention.hpp"
#include "../select/selector.hpp"
#include "eviction_policy.hpp"

namespace kvevict {

//! StreamingLLM (Xiao et al., arXiv 2309.17453): attention sinks + the most recent tokens.
//! Checked against the naive "first s + last B - s" set in tests/host.
using streaming_llm = eviction_policy<positional, token_level, selector<uniform_budget>>;

//! H2O (Zhang et al., arXiv 2306.14048): heavy hitters by accumulated attention + recent window.
//! Checked against a naive double-precision column-sum reference in tests/host.
template <class Reduce = gqa_mean>
using h2o = eviction_policy<accumulated_attention<Reduce>, token_level, selector<uniform_budget>>;

//! SnapKV (Li et al., arXiv 2404.14469), kvpress formula: window attention, avg-pool 5 (zero
//! padding), GQA mean, top-k. Checked against the PyTorch formula of torch_path_baseline.py
//! (computed in double precision) in tests/host.
template <class Reduce = gqa_mean, class Pool = avg_pool<pad_zeros>>
using snapkv = eviction_policy<window_attention<Reduce, Pool>, token_level, selector<uniform_budget>>;

//! PyramidKV (Cai et al., arXiv 2406.02069): SnapKV scores with per-layer budgets shrinking with
//! depth. Checked against the budget formula in tests/host.
template <class Reduce = gqa_mean, class Pool = avg_pool<pad_zeros>>
using pyramidkv = eviction_policy<window_attention<Reduce, Pool>, token_level, selector<pyramid_budget>>;

//! Ada-SnapKV (Feng et al., arXiv 2407.11550): SnapKV scores with per-head adaptive budgets and a
//! floor. Needs a (sequence, head)-row cache to compact. Checked against a naive allocator.
template <class Reduce = gqa_mean, class Pool = avg_pool<pad_zeros>>
using ada_snapkv = eviction_policy<window_attention<Reduce, Pool>, token_level, selector<adaptive_budget>>;

//! ChunkKV (Liu et al., arXiv 2502.00299): chunks of `granularity.chunk` tokens kept whole by
//! mean score, scores summed over the heads of the layer (`shared_heads`), then an exact fill.
//! Default scorer: window attention without pooling. Checked against a naive chunk selection.
template <class Scorer = window_attention<gqa_mean, no_pool>, class Budget = uniform_budget,
          class Sharing = shared_heads>
using chunkkv = eviction_policy<Scorer, fixed_block<Sharing>, selector<Budget>>;

//! ChunkKV with every KV head choosing its own chunks (`independent_heads`), for caches whose heads
//! may keep different tokens anyway; same defaults as `chunkkv`. Checked against a naive chunk
//! selection per head.
template <class Scorer = window_attention<gqa_mean, no_pool>, class Budget = uniform_budget>
using chunkkv_per_head = chunkkv<Scorer, Budget, independent_heads>;

//! SentenceKV-style (Zhu et al., arXiv 2504.00970): whole sentences / clauses from `Segmenter`
//! kept by mean score, then an exact fill. Checked against a naive segment selection.
template <class Segmenter = delimiter_segmenter, class Scorer = window_attention<gqa_mean, no_pool>,
          class Budget = uniform_budget, class Sharing = independent_heads>
using sentencekv = eviction_policy<Scorer, segment_level<Segmenter, Sharing>, selector<Budget>>;

//! SABlock (arXiv 2510.22556), the three steps of the paper as specified in kvevict's design:
//! segmentation, segment-guided scores, budget-driven block-size search. Checked against the
//! golden cases computed by an independent implementation of the specification.
template <class Segmenter = delimiter_segmenter, class Scorer = window_attention<gqa_mean, no_pool>,
          class Budget = uniform_budget, class Sharing = independent_heads>
using sablock = eviction_policy<Scorer, adaptive_block<Segmenter, Sharing>, selector<Budget>>;

}  // namespace kvevict

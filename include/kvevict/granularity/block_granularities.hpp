//! \file granularity/block_granularities.hpp
//! Block- and segment-level granularities: fixed blocks (ChunkKV, `fixed_block.hpp`), whole
//! segments (SentenceKV, `segment_level.hpp`), adaptive blocks (SABlock, `adaptive_block.hpp`).
//! Each keeps the protected tokens and exactly `min(budget, n)` tokens.
#pragma once

#include "adaptive_block.hpp"
#include "fixed_block.hpp"
#include "segment_level.hpp"

//! \file detail/compact_schedule.hpp
//! The tile schedule of in-place compaction on the device (cuda/compact.cuh), as plain functions
//! the host tests drive through adversarial interleavings. Not API.
//!
//! Row positions p_0 < p_1 < ... < p_{c-1} with p_j >= j; rank j moves from slot p_j to slot j.
//! Tile k holds ranks [k T, min(c, (k + 1) T)). It reads slots p_j of its ranks, then writes slots
//! j of its ranks. Tile k may write once every earlier tile that reads a slot >= k T has read:
//! those are the tiles from `first_blocking_tile` to k - 1 (later tiles read slots >= their own
//! ranks >= (k + 1) T, beyond tile k's writes).
#pragma once

#include <cstdint>

#include "../config.hpp"
#include "math.hpp"

namespace kvevict::detail {

//! The first tile of the row that reads a slot >= `j0` (the tile's first rank): the tile of the
//! first rank whose position is >= j0, or j0's own tile when no earlier rank reads there.
KVEVICT_HOST_DEVICE int first_blocking_tile(const std::int32_t* pos, int j0, int tile) {
  return first_at_least(pos, 0, j0, j0) / tile;  // first rank in [0, j0) with pos >= j0, else j0
}

//! Index of the lowest set bit of a non-zero mask (`__ffs(m) - 1` on the device).
KVEVICT_HOST_DEVICE int lowest_bit(unsigned m) {
#if defined(__CUDA_ARCH__)
  return __ffs(static_cast<int>(m)) - 1;
#else
  return __builtin_ctz(m);
#endif
}

//! `first_blocking_tile` by 32-way search, as one warp runs it: each step probes 32 evenly spaced
//! ranks of the remaining range at once (`probes(base, step, end)` returns the mask of probes `i`
//! with rank `base + i * step >= end` or position `>= j0`; on the device, one lane each and a
//! ballot) and narrows the range 32-fold: about log32(j0) dependent steps instead of log2(j0).
template <class Probes>
KVEVICT_HOST_DEVICE int first_blocking_tile_32way(int j0, int tile, Probes probes) {
  int lo = 0, hi = j0;  // the first rank with position >= j0 lies in [lo, hi] (hi: none)
  while (lo < hi) {
    const int step = (hi - lo + 31) / 32;
    const unsigned m = probes(lo, step, hi);
    const int f = m ? lowest_bit(m) : 32;
    if (f == 0) break;  // rank lo qualifies
    const int next_lo = lo + (f - 1) * step + 1, next_hi = lo + f * step < hi ? lo + f * step : hi;
    lo = next_lo;
    hi = next_hi;
  }
  return lo / tile;
}

//! The compaction's output stage gives row `r` to block `r % blocks` and walks the rows in chunks:
//! the first index `i` of the chunk from row `r0` with `r0 + i` that block's (its next are `+ blocks`).
KVEVICT_HOST_DEVICE int first_owned_in_chunk(int r0, int blocks, int block) {
  return (block + blocks - r0 % blocks) % blocks;
}

}  // namespace kvevict::detail

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

namespace kvevict::detail {

//! The first tile of the row that reads a slot >= `j0` (the tile's first rank): the tile of the
//! first rank whose position is >= j0, or j0's own tile when no earlier rank reads there.
KVEVICT_HOST_DEVICE int first_blocking_tile(const std::int32_t* pos, int j0, int tile) {
  int lo = 0, hi = j0;  // first rank in [0, j0) with pos >= j0, else j0
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (pos[mid] >= j0)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo / tile;
}

//! The row whose tiles `[offsets[r], offsets[r + 1])` hold global tile `g` (offsets: exclusive
//! scan over `rows` rows, g < offsets[rows]); rows with no tiles are skipped.
KVEVICT_HOST_DEVICE int row_of_tile(const int* offsets, int rows, int g) {
  int a = 0, b = rows - 1;
  while (a < b) {
    const int mid = (a + b + 1) / 2;
    if (offsets[mid] <= g)
      a = mid;
    else
      b = mid - 1;
  }
  return a;
}

}  // namespace kvevict::detail

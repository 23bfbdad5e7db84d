//! \file scorer/reduce.hpp
//! Reductions over the query heads of a GQA group.
#pragma once

#include "../config.hpp"

namespace kvevict {

//! Mean over the query heads that share a KV head (kvpress, SnapKV with GQA).
struct gqa_mean {
  KVEVICT_HOST_DEVICE static float reduce(const float* v, int group) {
    float s = 0.0f;
    for (int j = 0; j < group; ++j) s += v[j];
    return s / static_cast<float>(group);
  }
};

//! Max over the query heads that share a KV head (keeps a token any head needs).
struct gqa_max {
  KVEVICT_HOST_DEVICE static float reduce(const float* v, int group) {
    float m = v[0];
    for (int j = 1; j < group; ++j) m = v[j] > m ? v[j] : m;
    return m;
  }
};

}  // namespace kvevict

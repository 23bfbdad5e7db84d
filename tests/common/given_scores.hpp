// Tests serve fixed scores through the library's `precomputed` scorer.
#pragma once

#include <kvevict/kvevict.hpp>

namespace testing {
using given_scores = kvevict::precomputed;
}  // namespace testing

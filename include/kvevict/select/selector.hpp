//! \file select/selector.hpp
//! The selector: protected tokens (sinks, recent window) plus a budget allocator.
#pragma once

#include "../status.hpp"
#include "budget.hpp"

namespace kvevict {

//! Protected sinks and recent window, counted in the budget, and the budget allocator.
//! The recent window is also the observation window of window-attention scorers.
template <class Budget = uniform_budget>
struct selector {
  using budget_type = Budget;
  int sinks = 4;    //!< first tokens always kept (attention sinks)
  int window = 32;  //!< last tokens always kept; the observation window
  Budget budget{};

  status validate() const {
    if (sinks < 0) return make_error(errc::invalid_argument, "selector.sinks", "must be >= 0");
    if (window < 0) return make_error(errc::invalid_argument, "selector.window", "must be >= 0");
    return budget.validate(sinks, window);
  }
};

}  // namespace kvevict

// What the host and CUDA halves of the binding share, with no nanobind and no CUDA header in it (the
// CUDA half is compiled by nvcc): the error type raised to Python, and the policy configuration from
// the Python keyword arguments to the library's presets.
#pragma once

#include <cmath>
#include <cstdint>
#include <kvevict/kvevict.hpp>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace kvevict_py {

//! Raised to Python as `kvevict.KvevictError(message, code, argument)` (a ValueError).
struct py_error {
  std::string message, code, argument;
};

//! Throws the library's status as a Python exception; returns when it is ok.
inline void raise_if_error(const kvevict::status& st) {
  if (!st) throw py_error{st.message(), kvevict::to_string(st.code), st.argument};
}

//! A binding-level check (dtype, shape, device, contiguity), phrased as the library phrases its own.
[[noreturn]] inline void fail(kvevict::errc code, const std::string& argument, const std::string& detail) {
  throw py_error{std::string("kvevict: ") + kvevict::to_string(code) + " in '" + argument + "': " + detail,
                 kvevict::to_string(code), argument};
}

// ---------------------------------------------------------------------------------------------
// Policies

//! A policy as Python describes it: its kind, the keyword arguments it sets (names already checked
//! against the kind's parameters, values as numbers) and the delimiter and sentence-end ids, which
//! the C++ segmenter borrows for the call.
struct config {
  std::string kind;
  std::vector<std::pair<std::string, double>> values;
  std::vector<std::int32_t> delimiter_ids;
  std::vector<std::int32_t> sentence_ids;
};

using wa_scorer = kvevict::window_attention<kvevict::gqa_mean, kvevict::avg_pool<kvevict::pad_zeros>>;
using knorm_policy =
    kvevict::eviction_policy<kvevict::key_norm, kvevict::token_level, kvevict::selector<kvevict::uniform_budget>>;
using chunkkv_policy = kvevict::chunkkv<wa_scorer>;
using sentencekv_policy = kvevict::sentencekv<kvevict::delimiter_segmenter, wa_scorer>;
using sablock_policy = kvevict::sablock<kvevict::delimiter_segmenter, wa_scorer>;

//! Calls `fn(name, field)` for every knob of `p` the package exposes, by its Python keyword: the one
//! table that both the defaults (read) and a call's configuration (write) use.
template <class P, class Fn>
void visit_params(P& p, Fn&& fn) {
  fn("budget", p.selector.budget.entries);
  fn("sinks", p.selector.sinks);
  fn("window", p.selector.window);
  using budget = typename P::selector_type::budget_type;
  if constexpr (std::is_same_v<typename P::scorer_type, wa_scorer>) fn("kernel_size", p.scorer.pool_kernel);
  if constexpr (std::is_same_v<budget, kvevict::pyramid_budget>) fn("beta", p.selector.budget.beta);
  if constexpr (std::is_same_v<budget, kvevict::adaptive_budget>)
    fn("floor_fraction", p.selector.budget.floor_fraction);
  if constexpr (std::is_same_v<P, chunkkv_policy>) fn("chunk", p.granularity.chunk);
  if constexpr (std::is_same_v<P, sentencekv_policy> || std::is_same_v<P, sablock_policy>) {
    fn("min_len", p.granularity.segmenter.min_len);
    fn("max_len", p.granularity.segmenter.max_len);
    fn("sentence_min_len", p.granularity.segmenter.sentence_min_len);
    fn("sentence_max_len", p.granularity.segmenter.sentence_max_len);
  }
  if constexpr (std::is_same_v<P, sablock_policy>) {
    fn("alpha", p.granularity.alpha);
    fn("beta", p.granularity.beta);
    fn("sentence_blocks", p.granularity.sentence_blocks);
    fn("g", p.granularity.g);
    fn("steps", p.granularity.steps);
    fn("block_size", p.granularity.block_size);
  }
}

//! Calls `f(policy)` with the default preset of `kind`. ChunkKV, SentenceKV and SABlock pool
//! nothing in C++ (no_pool); the package scores them with a pooling window of 1, the same bits.
template <class F>
decltype(auto) with_preset(const std::string& kind, F&& f) {
  auto unpooled = [](auto p) {
    p.scorer.pool_kernel = 1;
    return p;
  };
  if (kind == "streaming_llm") return f(kvevict::streaming_llm{});
  if (kind == "h2o") return f(kvevict::h2o<>{});
  if (kind == "knorm") return f(knorm_policy{});
  if (kind == "snapkv") return f(kvevict::snapkv<>{});
  if (kind == "pyramidkv") return f(kvevict::pyramidkv<>{});
  if (kind == "ada_snapkv") return f(kvevict::ada_snapkv<>{});
  if (kind == "chunkkv") return f(unpooled(chunkkv_policy{}));
  if (kind == "sentencekv") return f(unpooled(sentencekv_policy{}));
  if (kind == "sablock") return f(unpooled(sablock_policy{}));
  fail(kvevict::errc::invalid_argument, "policy", "unknown policy kind '" + kind + "'");
}

//! `value` as the type of a knob: an integer knob takes only a whole number in its range.
template <class Field>
Field knob_value(const std::string& name, double value) {
  if constexpr (std::is_same_v<Field, bool>) {
    return value != 0.0;
  } else if constexpr (std::is_integral_v<Field>) {
    if (!(value == std::floor(value)) || value < static_cast<double>(std::numeric_limits<Field>::min()) ||
        value > static_cast<double>(std::numeric_limits<Field>::max()))
      fail(kvevict::errc::invalid_argument, name, "must be an integer that fits a 32-bit int");
    return static_cast<Field>(value);
  } else {
    return static_cast<Field>(value);
  }
}

//! Calls `f(policy)` with the C++ policy `c` describes: the preset, its knobs set from the keyword
//! arguments (the segmenter borrows `c.delimiter_ids` and `c.sentence_ids`).
template <class F>
decltype(auto) with_policy(const config& c, F&& f) {
  return with_preset(c.kind, [&](auto p) {
    visit_params(p, [&](const char* name, auto& field) {
      for (const auto& [key, value] : c.values)
        if (key == name) field = knob_value<std::remove_reference_t<decltype(field)>>(key, value);
    });
    if constexpr (std::is_same_v<decltype(p), sentencekv_policy> || std::is_same_v<decltype(p), sablock_policy>) {
      p.granularity.segmenter.delimiter_ids = c.delimiter_ids.empty() ? nullptr : c.delimiter_ids.data();
      p.granularity.segmenter.num_delimiters = static_cast<int>(c.delimiter_ids.size());
      p.granularity.segmenter.sentence_ids = c.sentence_ids.empty() ? nullptr : c.sentence_ids.data();
      p.granularity.segmenter.num_sentence_ids = static_cast<int>(c.sentence_ids.size());
    }
    return f(p);
  });
}

}  // namespace kvevict_py

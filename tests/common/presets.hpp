// Every preset the library offers, configured for the test caches: the one list tests iterate
// (as kvpress's default_presses.py), so a new preset is tested everywhere by adding one line.
#pragma once

#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include <kvevict/kvevict.hpp>

namespace testing {

//! Token ids the presets' delimiter segmenters cut at: 1 ends a clause, 2 a clause and a sentence.
inline const std::int32_t preset_delimiters[] = {1, 2};
inline const std::int32_t preset_sentence_ends[] = {2};

template <class P>
struct preset {
  const char* name;
  P policy;
  bool heads_interact;  //!< its plan for one head reads other heads' scores (shards need a gather)
};
template <class P>
preset(const char*, P, bool) -> preset<P>;

template <class G, class = void>
struct cuts_at_delimiters : std::false_type {};
template <class G>
struct cuts_at_delimiters<G, std::void_t<decltype(std::declval<G&>().segmenter)>>
    : std::is_same<decltype(std::declval<G&>().segmenter), kvevict::delimiter_segmenter> {};

//! Gives `p` sinks, window and budget (entries), and delimiter ids where it segments by them.
template <class P>
P configure_preset(P p, int sinks, int window, int entries) {
  p.selector.sinks = sinks;
  p.selector.window = window;
  p.selector.budget.entries = entries;
  if constexpr (cuts_at_delimiters<decltype(p.granularity)>::value) {
    p.granularity.segmenter.delimiter_ids = preset_delimiters;
    p.granularity.segmenter.num_delimiters = 2;
  }
  return p;
}

//! SABlock with both levels: clauses inside sentences (sentence ids set).
inline kvevict::sablock<> sablock_two_level() {
  kvevict::sablock<> p;
  p.granularity.segmenter.sentence_ids = preset_sentence_ends;
  p.granularity.segmenter.num_sentence_ids = 1;
  return p;
}

//! Every preset (and the variants worth testing everywhere), configured.
inline auto all_presets(int sinks, int window, int entries) {
  using shared_sablock = kvevict::sablock<kvevict::delimiter_segmenter, kvevict::window_attention<kvevict::gqa_mean,
                                                                                                   kvevict::no_pool>,
                                          kvevict::uniform_budget, kvevict::shared_heads>;
  auto c = [&](auto p) { return configure_preset(p, sinks, window, entries); };
  return std::make_tuple(preset{"streaming_llm", c(kvevict::streaming_llm{}), false},
                         preset{"h2o", c(kvevict::h2o<>{}), false},
                         preset{"snapkv", c(kvevict::snapkv<>{}), false},
                         preset{"pyramidkv", c(kvevict::pyramidkv<>{}), false},
                         preset{"ada_snapkv", c(kvevict::ada_snapkv<>{}), true},
                         preset{"chunkkv", c(kvevict::chunkkv<>{}), true},
                         preset{"chunkkv_per_head", c(kvevict::chunkkv_per_head<>{}), false},
                         preset{"sentencekv", c(kvevict::sentencekv<>{}), false},
                         preset{"sablock", c(kvevict::sablock<>{}), false},
                         preset{"sablock_two_level", c(sablock_two_level()), false},
                         preset{"sablock_shared_heads", c(shared_sablock{}), true});
}

//! Calls `f(preset)` for every entry of `all_presets(...)`.
template <class F>
void for_each_preset(int sinks, int window, int entries, F&& f) {
  std::apply([&](const auto&... p) { (f(p), ...); }, all_presets(sinks, window, entries));
}

}  // namespace testing

// The NIAH-style report: every preset over grids of synthetic sequences (support/niah.hpp), one
// grid per task ("section"), quality per case (support/metrics.hpp).
//
// To add a policy, add one line to `policies()`. Every policy gets sinks 4 and window 32 (the
// question), and the budget of the grid point; segment-based policies with the delimiter
// segmenter get the synthetic vocabulary's delimiter ids (the `_keysim` rows segment by key
// similarity and read no token ids); H2O gets the attention sums of the question's queries (what
// a decode-time H2O has accumulated after reading the question).
#pragma once

#include <kvevict/kvevict.hpp>
#include <kvevict/support/metrics.hpp>
#include <kvevict/support/niah.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <vector>

namespace niah_report {

//! Marker: keep every token (the reference row of the table).
struct full_cache {};

//! Marker: `policy` over the sequence's keys stored as fp8 E4M3 with one scale per layer (amax /
//! 448, vLLM's per-tensor `k_scale`), as an engine's fp8 cache holds them; the queries stay bf16.
template <class P>
struct fp8_cache {
  P policy;
};

template <class P>
struct named {
  const char* name;
  P policy;
};
template <class P>
named(const char*, P) -> named<P>;

//! SABlock as first specified (one level of segments, clause guidance 0.5, no sentence blocks).
inline kvevict::sablock<> sablock_v1() {
  kvevict::sablock<> p;
  p.granularity.alpha = 0.5;
  p.granularity.beta = 0.0;
  p.granularity.sentence_blocks = false;
  return p;
}

//! The policies of the report: the one list to extend.
inline auto policies() {
  return std::make_tuple(named{"full_cache", full_cache{}}, named{"streaming_llm", kvevict::streaming_llm{}},
                         named{"h2o", kvevict::h2o<>{}}, named{"snapkv", kvevict::snapkv<>{}},
                         named{"pyramidkv", kvevict::pyramidkv<>{}}, named{"ada_snapkv", kvevict::ada_snapkv<>{}},
                         named{"chunkkv", kvevict::chunkkv<>{}}, named{"sentencekv", kvevict::sentencekv<>{}},
                         named{"sablock", kvevict::sablock<>{}}, named{"sablock_v1", sablock_v1()},
                         named{"sentencekv_keysim", kvevict::sentencekv<kvevict::key_similarity_segmenter>{}},
                         named{"sablock_keysim", kvevict::sablock<kvevict::key_similarity_segmenter>{}},
                         named{"snapkv_fp8", fp8_cache<kvevict::snapkv<>>{}},
                         named{"sablock_fp8", fp8_cache<kvevict::sablock<>>{}});
}

//! One section of the report: a task over a grid of (context, depth, seed).
struct grid {
  std::string name = "single";
  kvevict::synthetic::niah_task task = kvevict::synthetic::niah_task::single;
  std::vector<int> contexts;
  std::vector<double> depths;
  std::vector<int> budgets = {96, 128, 256, 512, 1024};
  std::vector<std::uint64_t> seeds;
  int distractors = 0;
};

//! The default report (one section per task, budgets 96..1024):
//! * `single`: context 1,000..8,000 step 500, depth 0..100% step 10%, 2 seeds; `full`: context
//!   step 100 (the KVCache-Factory grid) and 3 seeds;
//! * `single_long`: the single task at 16,384, 24,576 and 32,768 tokens, 5 depths, 1 seed;
//! * every other task: context 1,000..8,000 step 1,000, depth 0..100% step 25%, 2 seeds (3 with `full`).
inline std::vector<grid> default_report(bool full) {
  using kvevict::synthetic::niah_task;
  std::vector<grid> out;
  grid single;
  for (int c = 1000; c <= 8000; c += full ? 100 : 500) single.contexts.push_back(c);
  for (int d = 0; d <= 10; ++d) single.depths.push_back(d / 10.0);
  single.seeds = full ? std::vector<std::uint64_t>{1, 2, 3} : std::vector<std::uint64_t>{1, 2};
  out.push_back(single);
  grid lng = single;
  lng.name = "single_long";
  lng.contexts = {16384, 24576, 32768};
  lng.depths = {0.0, 0.25, 0.5, 0.75, 1.0};
  lng.seeds = {1};
  out.push_back(lng);
  for (niah_task t : kvevict::synthetic::all_tasks) {
    if (t == niah_task::single) continue;
    grid g;
    g.name = kvevict::synthetic::task_name(t);
    g.task = t;
    for (int c = 1000; c <= 8000; c += 1000) g.contexts.push_back(c);
    g.depths = {0.0, 0.25, 0.5, 0.75, 1.0};
    g.seeds = full ? std::vector<std::uint64_t>{1, 2, 3} : std::vector<std::uint64_t>{1, 2};
    out.push_back(g);
  }
  return out;
}

struct case_result {
  std::string section, policy;
  int budget = 0, context = 0;
  double depth = 0;
  std::uint64_t seed = 0;
  bool success = false;
  double recall = 0, fidelity = 0;
  double plan_ms = 0;           // scoring + selection, per layer
  std::size_t extra_bytes = 0;  // workspace + plan, per layer
};

namespace detail {

template <class T, class = void>
struct has_segmenter : std::false_type {};
template <class T>
struct has_segmenter<T, std::void_t<decltype(std::declval<T&>().segmenter)>> : std::true_type {};

template <class G>
struct is_sablock : std::false_type {};
template <class Seg, class Sharing>
struct is_sablock<kvevict::adaptive_block<Seg, Sharing>> : std::true_type {};

template <class S>
struct is_accumulated : std::false_type {};
template <class R>
struct is_accumulated<kvevict::accumulated_attention<R>> : std::true_type {};

//! Gives a policy what the synthetic vocabulary and the report's protocol say (see the top).
template <class P>
P configured(P p) {
  p.selector.sinks = 4;
  p.selector.window = 32;
  if constexpr (has_segmenter<decltype(p.granularity)>::value) {
    if constexpr (std::is_same_v<decltype(p.granularity.segmenter), kvevict::delimiter_segmenter>) {
      p.granularity.segmenter.delimiter_ids = kvevict::synthetic::delimiter_ids;
      p.granularity.segmenter.num_delimiters = 4;
      if constexpr (is_sablock<decltype(p.granularity)>::value) {
        // SABlock's sentence level, unless the policy is version 1 (no sentence guidance or blocks:
        // one level of segments, as first specified).
        if (p.granularity.beta > 0.0 || p.granularity.sentence_blocks) {
          p.granularity.segmenter.sentence_ids = kvevict::synthetic::sentence_end_ids;
          p.granularity.segmenter.num_sentence_ids = 3;
        }
      }
    }
  }
  return p;
}

inline double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

//! Scores of one sequence, kept per scorer: presets that share a scorer (type and settings) and the
//! window get the same scores, so each is computed once per layer and its time is charged to every
//! policy that uses it; and the sequence's fp8 keys.
struct score_memo {
  struct entry {
    std::vector<float> scores;  // [kv_heads, tokens]
    double ms = 0;
  };
  std::map<std::string, entry> by_key;  // scorer type + bytes + window + layer
  std::vector<std::vector<kvevict::float8_e4m3>> fp8_keys;  // per layer, when an fp8 policy ran
  std::vector<float> fp8_scales;

  //! Scorers compare by type and bytes, so a preset's scorer must be trivially copyable.
  template <class Scorer>
  static std::string key(const Scorer& sc, int window, int layer) {
    static_assert(std::is_trivially_copyable_v<Scorer>, "the report shares scores by the scorer's bytes");
    std::string k = typeid(Scorer).name();
    k.append(reinterpret_cast<const char*>(&sc), sizeof sc);
    k += '/' + std::to_string(window) + '/' + std::to_string(layer);
    return k;
  }
};

template <class P>
struct is_fp8_cache : std::false_type {};
template <class P>
struct is_fp8_cache<fp8_cache<P>> : std::true_type {};

//! A layer's bf16 elements as fp8 E4M3 codes of `x / scale`, scale = amax / 448 (1 for all zeros).
inline float quantize_fp8(const std::vector<kvevict::bfloat16>& in, std::vector<kvevict::float8_e4m3>& out) {
  float amax = 0.0f;
  for (auto x : in) amax = std::max(amax, std::fabs(kvevict::to_float(x)));
  const float scale = amax > 0.0f ? amax / 448.0f : 1.0f;
  out.resize(in.size());
  for (std::size_t i = 0; i < in.size(); ++i)
    out[i] = kvevict::from_float<kvevict::float8_e4m3>(kvevict::to_float(in[i]) / scale);
  return scale;
}

template <class S>
struct is_pooled_window : std::false_type {};
template <class R, class Pool>
struct is_pooled_window<kvevict::window_attention<R, Pool>> : std::bool_constant<Pool::enabled> {};

//! The scores of `p` on layer `l` from the memo, computed on first use. A pooled window-attention
//! scorer is the same scorer without pooling followed by `pool_1d` over the keys before the window
//! (`host_backend::pool_before_window`, which window_attention::score_head calls), so its scores are pooled from the unpooled
//! scorer's memo entry: the attention is computed once per cache for SnapKV, PyramidKV, Ada-KV and
//! the block policies. Its time is the unpooled scoring's plus the pooling's.
template <class P, class Exec, class View, class Sig>
const score_memo::entry& memo_scores(const char* name, Exec exec, const P& p, const View& view, const Sig& sig,
                                     const std::string& tag, int l, std::vector<unsigned char>& ws,
                                     score_memo& memo) {
  auto& e = memo.by_key[tag + score_memo::key(p.scorer, p.selector.window, l)];
  if (!e.scores.empty()) return e;
  using S = typename P::scorer_type;
  const int kvh = view.num_kv_heads(), n = view.seq_len(0, 0);
  if constexpr (is_pooled_window<S>::value) {
    auto raw_policy = kvevict::eviction_policy<kvevict::window_attention<typename S::reduce_type, kvevict::no_pool>,
                                               typename P::granularity_type, typename P::selector_type>{
        {}, p.granularity, p.selector};
    const auto& raw = memo_scores(name, exec, raw_policy, view, sig, tag, l, ws, memo);
    e.scores.resize(static_cast<std::size_t>(kvh) * n);
    const auto t0 = std::chrono::steady_clock::now();
    for (int h = 0; h < kvh; ++h)
      kvevict::host_backend::pool_before_window<typename S::pool_type>(
          raw.scores.data() + static_cast<std::size_t>(h) * n, e.scores.data() + static_cast<std::size_t>(h) * n, n,
          p.selector.window, p.scorer.pool_kernel);
    e.ms = raw.ms + ms_since(t0);
  } else {
    ws.resize(std::max(ws.size(), kvevict::plan_workspace_bytes(exec, p, view, sig)));
    e.scores.resize(static_cast<std::size_t>(kvh) * n);
    const auto t0 = std::chrono::steady_clock::now();
    const auto st = kvevict::score(exec, p, view, sig, e.scores.data(), n, ws.data(), ws.size());
    e.ms = ms_since(t0);
    if (!st) {
      std::fprintf(stderr, "%s: %s\n", name, st.message().c_str());
      std::exit(1);
    }
  }
  return e;
}

//! All budgets of one policy on one sequence, over the layer views `view_of(l)`; `tag` keeps the
//! score memo of differently stored caches apart.
template <class P, class ViewOf>
void run_policy_on(const char* name, const P& base, kvevict::synthetic::niah_sequence& s, ViewOf view_of,
                   const char* tag, const kvevict::synthetic::niah_evaluator& ev,
                   const std::vector<std::vector<float>>& sums, const grid& g, score_memo& memo,
                   std::vector<case_result>& out);

//! All budgets of one policy on one sequence.
template <class P>
void run_policy(const char* name, const P& base, kvevict::synthetic::niah_sequence& s,
                const kvevict::synthetic::niah_evaluator& ev, const std::vector<std::vector<float>>& sums,
                const grid& g, score_memo& memo, std::vector<case_result>& out) {
  if constexpr (is_fp8_cache<P>::value) {
    const int L = s.cfg.num_layers;
    // Keys only: plans never read V (the evaluator reads the bf16 values), so the fp8 view's values
    // alias its key codes rather than spend a second quantisation per layer. Quantised once per
    // sequence, for every fp8 policy.
    auto& k = memo.fp8_keys;
    auto& ks = memo.fp8_scales;
    if (k.empty()) {
      k.resize(L);
      ks.resize(L);
      for (int l = 0; l < L; ++l) ks[l] = quantize_fp8(s.k[l], k[l]);
    }
    auto view_of = [&](int l) {
      const auto b = s.layer_view(l);
      return kvevict::block_table_cache<kvevict::float8_e4m3>{
          k[l].data(),   k[l].data(),   b.block_table,    b.seq_lens,   b.num_seqs(), b.block_table_stride(),
          b.num_pages(), b.page_size(), b.num_kv_heads(), b.head_dim(), ks[l],        ks[l]};
    };
    run_policy_on(name, base.policy, s, view_of, "fp8", ev, sums, g, memo, out);
  } else {
    run_policy_on(name, base, s, [&](int l) { return s.layer_view(l); }, "", ev, sums, g, memo, out);
  }
}

template <class P, class ViewOf>
void run_policy_on(const char* name, const P& base, kvevict::synthetic::niah_sequence& s, ViewOf view_of,
                   const char* tag, const kvevict::synthetic::niah_evaluator& ev,
                   const std::vector<std::vector<float>>& sums, const grid& g, score_memo& memo,
                   std::vector<case_result>& out) {
  const int L = s.cfg.num_layers, kvh = s.cfg.kv_heads, n = s.tokens;
  std::vector<std::vector<kvevict::keep_plan_buffer>> kept(g.budgets.size());
  std::vector<double> ms(g.budgets.size(), 0.0);
  std::vector<std::size_t> bytes(g.budgets.size(), 0);
  for (int l = 0; l < L; ++l) {
    auto view = view_of(l);
    auto sig = s.layer_signals(l);
    if constexpr (std::is_same_v<P, full_cache>) {
      // The same plan at every budget: built and evaluated once (below).
      kept[0].emplace_back(kvh, n);
      for (int h = 0; h < kvh; ++h) {
        kept[0].back().counts[h] = n;
        for (int t = 0; t < n; ++t) kept[0].back().positions[static_cast<std::size_t>(h) * n + t] = t;
      }
      continue;
    } else {
      P p = configured(base);
      if constexpr (is_accumulated<typename P::scorer_type>::value) {
        sig.attention_sums = sums[l].data();
        sig.sums_stride = n;
      }
      // One thread per case: the report runs cases in parallel, and its plan time is one thread's.
      const auto exec = kvevict::host.threads(1);
      std::vector<unsigned char> ws(kvevict::plan_workspace_bytes(exec, p, view, sig));
      const auto& memo_entry = memo_scores(name, exec, p, view, sig, tag, l, ws, memo);
      const std::vector<float>& scores = memo_entry.scores;
      const double score_ms = memo_entry.ms;
      auto t0 = std::chrono::steady_clock::now();
      for (std::size_t b = 0; b < g.budgets.size(); ++b) {
        kvevict::eviction_policy<kvevict::precomputed, typename P::granularity_type, typename P::selector_type> q{
            {scores.data(), n}, p.granularity, p.selector};
        q.selector.budget.entries = g.budgets[b];
        kept[b].emplace_back(kvh, kvevict::plan_capacity(q, view));
        std::vector<unsigned char> ws2(kvevict::plan_workspace_bytes(exec, q, view, sig));
        t0 = std::chrono::steady_clock::now();
        const auto st2 = kvevict::plan(exec, q, view, sig, kept[b].back().view(), ws2.data(), ws2.size());
        ms[b] += score_ms + ms_since(t0);
        bytes[b] = std::max(ws.size(), ws2.size()) + sizeof(std::int32_t) * kept[b].back().positions.size();
        if (!st2) {
          std::fprintf(stderr, "%s: %s\n", name, st2.message().c_str());
          std::exit(1);
        }
      }
    }
  }
  kvevict::synthetic::niah_quality q;
  for (std::size_t b = 0; b < g.budgets.size(); ++b) {
    if (b == 0 || !std::is_same_v<P, full_cache>) {
      std::vector<kvevict::const_keep_plan> views;
      for (auto& k : kept[b]) views.push_back(k.const_view());
      q = ev.evaluate(views);
    }
    out.push_back({g.name, name, g.budgets[b], s.c.context, s.c.depth, s.c.seed, q.success, q.recall, q.fidelity,
                   ms[b] / L, bytes[b]});
  }
}

//! H2O's sums: per query head, the attention the question's queries gave each key.
inline std::vector<std::vector<float>> question_attention_sums(kvevict::synthetic::niah_sequence& s) {
  const auto& cfg = s.cfg;
  const int group = cfg.q_heads / cfg.kv_heads, n = s.tokens;
  std::vector<std::vector<float>> sums(cfg.num_layers, std::vector<float>(static_cast<std::size_t>(cfg.q_heads) * n));
  std::vector<float> scratch(kvevict::host_backend::window_attention_scratch_floats(cfg.head_dim, cfg.window, group, n));
  for (int l = 0; l < cfg.num_layers; ++l)
    kvevict::host_backend::attention_sums(s.layer_view(l), 0, s.window_queries[l].data(), cfg.q_heads, cfg.window,
                                          sums[l].data(), static_cast<std::size_t>(n), scratch.data());
  return sums;
}

}  // namespace detail

//! Where a run stands, for the progress line.
struct progress_info {
  std::size_t done = 0, total = 0;              //!< sequences
  double tokens_done = 0, tokens_total = 0;     //!< their tokens (the cost is about linear in them)
};

//! Runs every policy over every section's grid on `threads` threads; `progress(info)` after each
//! sequence. Results are ordered by section, case, policy, then budget (deterministic); the
//! longest sequences run first.
//! `run` with another list of (name, policy) entries than `policies()`.
template <class Policies, class Progress>
std::vector<case_result> run_with(const Policies& list, const std::vector<grid>& sections, int threads,
                                  Progress progress) {
  struct point {
    const grid* g;
    int context;
    double depth;
    std::uint64_t seed;
  };
  std::vector<point> points;
  progress_info info;
  for (const auto& g : sections)
    for (int c : g.contexts)
      for (double d : g.depths)
        for (auto s : g.seeds) points.push_back({&g, c, d, s}), info.tokens_total += c;
  info.total = points.size();
  std::vector<std::size_t> schedule(points.size());
  for (std::size_t i = 0; i < schedule.size(); ++i) schedule[i] = i;
  std::stable_sort(schedule.begin(), schedule.end(),
                   [&](std::size_t a, std::size_t b) { return points[a].context > points[b].context; });
  const kvevict::synthetic::niah_generator gen;
  std::vector<std::vector<case_result>> per_point(points.size());
  std::atomic<std::size_t> next{0};
  std::mutex mu;
  auto worker = [&] {
    for (std::size_t k; (k = next++) < schedule.size();) {
      const std::size_t i = schedule[k];
      const grid& g = *points[i].g;
      auto s = gen.generate({points[i].context, points[i].depth, points[i].seed, g.distractors, g.task});
      const kvevict::synthetic::niah_evaluator ev(s);
      const auto sums = detail::question_attention_sums(s);
      detail::score_memo memo;
      std::apply(
          [&](const auto&... entry) {
            (detail::run_policy(entry.name, entry.policy, s, ev, sums, g, memo, per_point[i]), ...);
          },
          list);
      std::lock_guard<std::mutex> lock(mu);
      ++info.done;
      info.tokens_done += points[i].context;
      progress(static_cast<const progress_info&>(info));
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < std::max(1, threads); ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  std::vector<case_result> all;
  for (auto& v : per_point) all.insert(all.end(), v.begin(), v.end());
  return all;
}

template <class Progress>
std::vector<case_result> run(const std::vector<grid>& sections, int threads, Progress progress) {
  return run_with(policies(), sections, threads, progress);
}

}  // namespace niah_report

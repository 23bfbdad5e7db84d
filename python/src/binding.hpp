// The Python binding's shared pieces: policy configuration from Python keyword arguments, tensor
// checks on DLPack arrays, the dispatch from (dtype, layout, policy kind) to the library's types,
// and the calls themselves. Each cache layout's instantiations live in their own translation unit
// (bind_<layout>.cpp) so that a build compiles them in parallel.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <kvevict/kvevict.hpp>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kvevict_py {

namespace nb = nanobind;

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

//! A policy as Python describes it: its kind, its keyword arguments (already checked against the
//! kind's parameters) and the delimiter and sentence-end ids, which the C++ segmenter borrows for
//! the call.
struct config {
  std::string kind;
  nb::dict params;
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

//! Calls `f(policy)` with the C++ policy `c` describes: the preset, its knobs set from the keyword
//! arguments (the segmenter borrows `c.delimiter_ids` and `c.sentence_ids`).
template <class F>
decltype(auto) with_policy(const config& c, F&& f) {
  return with_preset(c.kind, [&](auto p) {
    visit_params(p, [&](const char* name, auto& field) {
      if (c.params.contains(name) && !c.params[name].is_none())
        field = nb::cast<std::remove_reference_t<decltype(field)>>(c.params[name]);
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

// ---------------------------------------------------------------------------------------------
// Arrays

using array = nb::ndarray<nb::ro>;  //!< read-only view of any DLPack tensor
using warray = nb::ndarray<>;       //!< writable view

enum class dtype_id { f32, f16, bf16, i32, other };

template <class A>
dtype_id dtype_of(const A& a) {
  const auto d = a.dtype();
  using code = nb::dlpack::dtype_code;
  if (d.lanes != 1) return dtype_id::other;
  if (d.code == static_cast<std::uint8_t>(code::Float) && d.bits == 32) return dtype_id::f32;
  if (d.code == static_cast<std::uint8_t>(code::Float) && d.bits == 16) return dtype_id::f16;
  if (d.code == static_cast<std::uint8_t>(code::Bfloat) && d.bits == 16) return dtype_id::bf16;
  if (d.code == static_cast<std::uint8_t>(code::Int) && d.bits == 32) return dtype_id::i32;
  return dtype_id::other;
}

template <class A>
bool contiguous(const A& a) {
  std::int64_t expect = 1;
  for (std::size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expect) return false;
    expect *= static_cast<std::int64_t>(a.shape(i));
  }
  return true;
}

//! Checks a host tensor's rank and contiguity (CUDA tensors are refused here with a sentence: this
//! build of the package has the host backend only).
template <class A>
void check_tensor(const A& a, const char* name, std::size_t ndim) {
  if (a.device_type() != nb::device::cpu::value)
    fail(kvevict::errc::invalid_argument, name,
         "not a CPU tensor: this build of the kvevict package runs the host backend only (the CUDA backend "
         "is not bound yet); move the tensor to the CPU or plan in C++ with kvevict::cuda");
  if (a.ndim() != ndim) fail(kvevict::errc::shape_mismatch, name, "must have " + std::to_string(ndim) + " dimensions");
  if (!contiguous(a)) fail(kvevict::errc::invalid_argument, name, "must be contiguous (call .contiguous())");
}

//! An int32 vector argument (`None` allowed when `optional`): its data, checked for length `n`
//! (n < 0: any length).
inline const std::int32_t* int_array(const nb::object& o, const char* name, std::int64_t n, bool optional,
                                     std::int64_t* len = nullptr) {
  if (o.is_none()) {
    if (!optional) fail(kvevict::errc::invalid_argument, name, "required");
    return nullptr;
  }
  array a = nb::cast<array>(o);
  check_tensor(a, name, 1);
  if (dtype_of(a) != dtype_id::i32) fail(kvevict::errc::invalid_argument, name, "must be int32");
  if (n >= 0 && static_cast<std::int64_t>(a.shape(0)) != n)
    fail(kvevict::errc::shape_mismatch, name, "must hold " + std::to_string(n) + " entries");
  if (len) *len = static_cast<std::int64_t>(a.shape(0));
  return static_cast<const std::int32_t*>(a.data());
}

//! An int32 matrix argument `[rows, any]`; returns its data and its row stride.
inline const std::int32_t* int_matrix(const nb::object& o, const char* name, std::int64_t rows, int* stride) {
  if (o.is_none()) return nullptr;
  array a = nb::cast<array>(o);
  check_tensor(a, name, 2);
  if (dtype_of(a) != dtype_id::i32) fail(kvevict::errc::invalid_argument, name, "must be int32");
  if (static_cast<std::int64_t>(a.shape(0)) != rows)
    fail(kvevict::errc::shape_mismatch, name, "must have one row per sequence");
  *stride = static_cast<int>(a.shape(1));
  return static_cast<const std::int32_t*>(a.data());
}

inline int to_int(std::size_t v, const char* name) {
  if (v > static_cast<std::size_t>(INT32_MAX)) fail(kvevict::errc::out_of_range, name, "a dimension exceeds 2^31 - 1");
  return static_cast<int>(v);
}

//! A numpy array that owns `v`.
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v, std::vector<std::size_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.data(), owner);
}

// ---------------------------------------------------------------------------------------------
// Signals

//! The signals of a call, as Python passes them (a dict of optional tensors and ints).
struct signal_args {
  nb::object queries, attention_sums, token_ids, seq_budgets, seq_sinks, seq_windows;
  int layer = 0, num_layers = 1;
  int threads = 0;  //!< host threads: 0 every hardware thread
};

template <class T, class Cache>
kvevict::signals<T> make_signals(const signal_args& s, const Cache& cache) {
  kvevict::signals<T> sig;
  const std::int64_t seqs = cache.num_seqs();
  if (!s.queries.is_none()) {
    array q = nb::cast<array>(s.queries);
    check_tensor(q, "queries", 4);
    if (static_cast<std::int64_t>(q.shape(0)) != seqs)
      fail(kvevict::errc::shape_mismatch, "queries", "must be [num_seqs, num_q_heads, rows, head_dim]");
    if (static_cast<int>(q.shape(3)) != cache.head_dim())
      fail(kvevict::errc::shape_mismatch, "queries", "head_dim differs from the cache's");
    sig.queries = static_cast<const T*>(q.data());
    sig.num_q_heads = to_int(q.shape(1), "queries");
    sig.query_rows = to_int(q.shape(2), "queries");
  }
  if (!s.attention_sums.is_none()) {
    array a = nb::cast<array>(s.attention_sums);
    check_tensor(a, "attention_sums", 3);
    if (dtype_of(a) != dtype_id::f32) fail(kvevict::errc::invalid_argument, "attention_sums", "must be float32");
    if (static_cast<std::int64_t>(a.shape(0)) != seqs)
      fail(kvevict::errc::shape_mismatch, "attention_sums", "must be [num_seqs, num_q_heads, tokens]");
    if (sig.queries != nullptr && static_cast<int>(a.shape(1)) != sig.num_q_heads)
      fail(kvevict::errc::shape_mismatch, "attention_sums", "query heads differ from the queries'");
    sig.attention_sums = static_cast<const float*>(a.data());
    sig.num_q_heads = to_int(a.shape(1), "attention_sums");
    sig.sums_stride = to_int(a.shape(2), "attention_sums");
  }
  sig.token_ids = int_matrix(s.token_ids, "token_ids", seqs, &sig.token_ids_stride);
  sig.seq_budgets = int_array(s.seq_budgets, "seq_budgets", seqs, true);
  sig.seq_sinks = int_array(s.seq_sinks, "seq_sinks", seqs, true);
  sig.seq_windows = int_array(s.seq_windows, "seq_windows", seqs, true);
  sig.layer = s.layer;
  sig.num_layers = s.num_layers;
  return sig;
}

// ---------------------------------------------------------------------------------------------
// Calls

//! What plan / compact / evict return to Python.
struct outputs {
  nb::object positions = nb::none(), counts = nb::none(), new_lens = nb::none(), freed_pages = nb::none();
};

//! Plans (and, with `do_compact`, compacts) `cache` with the policy `cfg` describes. Every check
//! runs before anything is written: the library's front doors validate, the outputs are sized here.
template <class T, class Cache>
outputs run(const config& cfg, const Cache& cache, const signal_args& sa, bool do_plan, bool do_compact,
            const nb::object& plan_positions, const nb::object& plan_counts) {
  raise_if_error(kvevict::validate_cache(cache));
  outputs out;
  const int rows = kvevict::plan_rows(cache);
  std::vector<std::int32_t> positions, counts;
  int capacity = 0;
  if (do_plan) {
    const kvevict::signals<T> sig = make_signals<T>(sa, cache);
    with_policy(cfg, [&](const auto& policy) {
      capacity = kvevict::plan_capacity(policy, cache, sig);
      positions.assign(static_cast<std::size_t>(rows) * static_cast<std::size_t>(capacity), 0);
      counts.assign(static_cast<std::size_t>(rows), 0);
      kvevict::status st;
      {
        nb::gil_scoped_release unlocked;
        st = kvevict::plan(kvevict::host.threads(sa.threads), policy, cache, sig,
                           kvevict::keep_plan{positions.data(), counts.data(), capacity, rows});
      }
      raise_if_error(st);
    });
  }
  const std::int32_t *pos = positions.data(), *cnt = counts.data();
  if (!do_plan) {
    array p = nb::cast<array>(plan_positions), c = nb::cast<array>(plan_counts);
    check_tensor(p, "plan.positions", 2);
    check_tensor(c, "plan.counts", 1);
    if (dtype_of(p) != dtype_id::i32 || dtype_of(c) != dtype_id::i32)
      fail(kvevict::errc::invalid_argument, "plan", "positions and counts must be int32");
    if (p.shape(0) != c.shape(0)) fail(kvevict::errc::shape_mismatch, "plan.counts", "must hold a count per row");
    pos = static_cast<const std::int32_t*>(p.data());
    cnt = static_cast<const std::int32_t*>(c.data());
    capacity = to_int(p.shape(1), "plan.positions");
    if (static_cast<int>(c.shape(0)) < rows)
      fail(kvevict::errc::buffer_too_small, "plan.rows", "fewer rows than sequences x KV heads");
  }
  if (do_compact) {
    const int max_freed = kvevict::max_freed_pages(cache);
    std::vector<std::int32_t> new_lens(static_cast<std::size_t>(rows)), freed(static_cast<std::size_t>(max_freed));
    kvevict::compact_result res{new_lens.data(), rows, freed.data(), max_freed, 0};
    kvevict::status st;
    {
      nb::gil_scoped_release unlocked;
      st = kvevict::compact(kvevict::host, cache, kvevict::const_keep_plan{pos, cnt, capacity, rows}, res);
    }
    raise_if_error(st);
    freed.resize(static_cast<std::size_t>(res.num_freed));
    out.new_lens = nb::cast(to_numpy(std::move(new_lens), {static_cast<std::size_t>(rows)}));
    const std::size_t nf = freed.size();
    out.freed_pages = nb::cast(to_numpy(std::move(freed), {nf}));
  }
  if (do_plan) {
    out.positions =
        nb::cast(to_numpy(std::move(positions), {static_cast<std::size_t>(rows), static_cast<std::size_t>(capacity)}));
    out.counts = nb::cast(to_numpy(std::move(counts), {static_cast<std::size_t>(rows)}));
  }
  return out;
}

//! The tensors of one call: K, V (read-only for a plan, writable to compact) and the layout's tables.
struct call_args {
  nb::object k, v;
  nb::object t0, t1, t2;  //!< dense: seq_lens; block table: block_table, seq_lens; CSR: indptr, indices, last_page_len
};

//! K and V with equal shapes and dtypes; writable when the call compacts.
inline std::pair<void*, void*> kv_data(const call_args& a, bool writable, std::size_t ndim, dtype_id* id,
                                       std::vector<std::size_t>* shape) {
  auto take = [&](const nb::object& o, const char* name) -> void* {
    if (writable) {
      warray t;
      if (!nb::try_cast(o, t))
        fail(kvevict::errc::invalid_argument, name, "must be a writable tensor (compaction moves entries in place)");
      check_tensor(t, name, ndim);
      return t.data();
    }
    array t = nb::cast<array>(o);
    check_tensor(t, name, ndim);
    return const_cast<void*>(t.data());  // a plan only reads
  };
  void* k = take(a.k, "k");
  void* v = take(a.v, "v");
  array kr = nb::cast<array>(a.k), vr = nb::cast<array>(a.v);
  if (kr.ndim() != vr.ndim()) fail(kvevict::errc::shape_mismatch, "v", "must have k's shape");
  for (std::size_t i = 0; i < kr.ndim(); ++i)
    if (kr.shape(i) != vr.shape(i)) fail(kvevict::errc::shape_mismatch, "v", "must have k's shape");
  *id = dtype_of(kr);
  if (dtype_of(vr) != *id) fail(kvevict::errc::invalid_argument, "v", "must have k's dtype");
  if (*id != dtype_id::f32 && *id != dtype_id::f16 && *id != dtype_id::bf16)
    fail(kvevict::errc::invalid_argument, "k", "dtype must be float32, float16 or bfloat16");
  shape->assign(kr.shape_ptr(), kr.shape_ptr() + kr.ndim());
  return {k, v};
}

//! Dispatches on the element type: `f(T{})` with T = float, kvevict::half or kvevict::bfloat16.
template <class F>
decltype(auto) with_dtype(dtype_id id, F&& f) {
  if (id == dtype_id::f16) return f(kvevict::half{});
  if (id == dtype_id::bf16) return f(kvevict::bfloat16{});
  return f(float{});
}

//! Queries must share the cache's element type.
inline void check_queries_dtype(const signal_args& s, dtype_id id) {
  if (s.queries.is_none()) return;
  array q = nb::cast<array>(s.queries);
  if (dtype_of(q) != id) fail(kvevict::errc::invalid_argument, "queries", "must have the cache's dtype");
}

//! Checks K and V (4-D, one dtype, writable when the call compacts) and the queries' dtype, then
//! runs the call on the view `make(k, v, shape)` builds for the element type (T* k, T* v).
template <class Make>
outputs call_with(const config& cfg, const call_args& a, const signal_args& s, bool do_plan, bool do_compact,
                  const nb::object& pp, const nb::object& pc, Make make) {
  dtype_id id;
  std::vector<std::size_t> shape;
  auto [k, v] = kv_data(a, do_compact, 4, &id, &shape);
  check_queries_dtype(s, id);
  return with_dtype(id, [&](auto tag) {
    using T = decltype(tag);
    return run<T>(cfg, make(static_cast<T*>(k), static_cast<T*>(v), shape), s, do_plan, do_compact, pp, pc);
  });
}

outputs call_dense(const config&, const call_args&, const signal_args&, bool, bool, const nb::object&,
                   const nb::object&);
outputs call_block_table(const config&, const call_args&, const signal_args&, bool, bool, const nb::object&,
                         const nb::object&);
outputs call_csr(const config&, const call_args&, const signal_args&, bool, bool, const nb::object&, const nb::object&);

}  // namespace kvevict_py

// The `kvevict._ext` module: plan, compact and evict over three cache layouts on the host backend
// (`call`) and, in a build with CUDA, on the CUDA backend (`cuda_sizes`, then `cuda_call` with the
// outputs and workspace the caller allocated on the device), and the C++ defaults of every policy
// kind. The Python package (kvevict/__init__.py) wraps them.
#include <nanobind/stl/pair.h>

#include "binding.hpp"

namespace kvevict_py {

namespace {

#ifdef KVEVICT_PY_HAS_CUDA
constexpr bool has_cuda = true;
#else
constexpr bool has_cuda = false;
#endif

//! Calls `f(std::integral_constant<layout_id, L>{})` for the layout of `c`: the CUDA half's
//! instantiations (never reached without CUDA: the module then has no cuda_sizes and cuda_call,
//! and `describe` refuses CUDA tensors).
template <class F>
decltype(auto) on_cuda_layout(const call_desc& c, F&& f) {
#ifdef KVEVICT_PY_HAS_CUDA
  if (c.layout == layout_id::dense) return f(std::integral_constant<layout_id, layout_id::dense>{});
  if (c.layout == layout_id::block_table) return f(std::integral_constant<layout_id, layout_id::block_table>{});
  return f(std::integral_constant<layout_id, layout_id::csr>{});
#else
  using result = decltype(f(std::integral_constant<layout_id, layout_id::dense>{}));  // not called
  (void)c;
  fail(kvevict::errc::invalid_argument, "k", "this build of the kvevict package has no CUDA backend");
  return result();
#endif
}

template <class T>
T get(const nb::dict& d, const char* key, T fallback) {
  return d.contains(key) && !d[key].is_none() ? nb::cast<T>(d[key]) : fallback;
}

//! The C++ defaults of `kind`, as a dict of the Python keyword names.
nb::dict defaults(const std::string& kind) {
  nb::dict d;
  with_preset(kind, [&](auto p) { visit_params(p, [&](const char* name, auto& field) { d[name] = field; }); });
  return d;
}

//! A keyword argument's value as a number (bool, int or float).
double number(const std::string& name, const nb::handle& value) {
  if (nb::isinstance<nb::bool_>(value)) return nb::cast<bool>(value) ? 1.0 : 0.0;
  if (nb::isinstance<nb::int_>(value)) {
    long long i = 0;
    if (!nb::try_cast(value, i)) fail(kvevict::errc::invalid_argument, name, "integer out of range");
    return static_cast<double>(i);
  }
  if (nb::isinstance<nb::float_>(value)) return nb::cast<double>(value);
  fail(kvevict::errc::invalid_argument, name, "must be a number");
}

config to_config(const std::string& kind, const nb::dict& d) {
  const nb::dict def = defaults(kind);
  config c{kind, {}, get(d, "delimiter_ids", std::vector<std::int32_t>{}),
           get(d, "sentence_ids", std::vector<std::int32_t>{})};
  for (auto [key, value] : d) {
    const std::string name = nb::cast<std::string>(key);
    if (name == "delimiter_ids" || name == "sentence_ids") continue;
    if (!def.contains(key)) fail(kvevict::errc::invalid_argument, name, "not a parameter of " + kind);
    if (!value.is_none()) c.values.emplace_back(name, number(name, value));
  }
  return c;
}

nb::object entry(const nb::tuple& t, std::size_t i) { return i < t.size() ? nb::borrow(t[i]) : nb::none(); }
nb::object entry(const nb::dict& d, const char* key) { return d.contains(key) ? nb::borrow(d[key]) : nb::none(); }

//! K and V: 4-D, one shape, one dtype (float32, float16 or bfloat16), writable when the call compacts.
void describe_kv(const nb::object& ko, const nb::object& vo, bool writable, call_desc& c, where dev) {
  auto take = [&](const nb::object& o, const char* name) -> void* {
    if (o.is_none()) fail(kvevict::errc::invalid_argument, name, "required");
    if (writable) {
      warray t;
      if (!nb::try_cast(o, t))
        fail(kvevict::errc::invalid_argument, name, "must be a writable tensor (compaction moves entries in place)");
      check_tensor(t, name, 4, dev);
      return t.data();
    }
    array t = nb::cast<array>(o);
    check_tensor(t, name, 4, dev);
    return const_cast<void*>(t.data());  // a plan only reads
  };
  c.k = take(ko, "k");
  c.v = take(vo, "v");
  array kr = nb::cast<array>(ko), vr = nb::cast<array>(vo);
  for (std::size_t i = 0; i < 4; ++i)
    if (kr.shape(i) != vr.shape(i)) fail(kvevict::errc::shape_mismatch, "v", "must have k's shape");
  c.dtype = dtype_of(kr);
  if (dtype_of(vr) != c.dtype) fail(kvevict::errc::invalid_argument, "v", "must have k's dtype");
  if (c.dtype != dtype_id::f32 && c.dtype != dtype_id::f16 && c.dtype != dtype_id::bf16)
    fail(kvevict::errc::invalid_argument, "k", "dtype must be float32, float16 or bfloat16");
  for (int i = 0; i < 4; ++i) c.k_shape[i] = to_int(kr.shape(static_cast<std::size_t>(i)), "k");
}

//! The layout's tables.
void describe_tables(const std::string& layout, const nb::tuple& t, call_desc& c, where dev) {
  if (layout == "dense") {
    c.layout = layout_id::dense;
    c.num_seqs = static_cast<int>(c.k_shape[0]);
    c.t0 = int_array(entry(t, 2), "seq_lens", c.num_seqs, false, dev);
  } else if (layout == "block_table") {
    c.layout = layout_id::block_table;
    if (entry(t, 2).is_none()) fail(kvevict::errc::invalid_argument, "block_table", "required");
    c.t0 = int_matrix(entry(t, 2), "block_table", -1, dev, &c.table_stride, &c.num_seqs);
    c.t1 = int_array(entry(t, 3), "seq_lens", c.num_seqs, false, dev);
  } else if (layout == "csr") {
    c.layout = layout_id::csr;
    std::int64_t n_indptr = 0;
    c.t0 = int_array(entry(t, 2), "indptr", -1, false, dev, &n_indptr);
    if (n_indptr < 1) fail(kvevict::errc::shape_mismatch, "indptr", "must hold num_seqs + 1 entries");
    c.num_seqs = to_int(static_cast<std::size_t>(n_indptr - 1), "indptr");
    c.t1 = int_array(entry(t, 3), "indices", -1, false, dev, &c.indices);
    // The CUDA half reads indptr[num_seqs] back from the device for the same check.
    if (!dev.cuda() && c.num_seqs > 0 && c.t0[c.num_seqs] > c.indices)
      fail(kvevict::errc::shape_mismatch, "indices", "must hold indptr[num_seqs] entries");
    c.t2 = int_array(entry(t, 4), "last_page_len", c.num_seqs, false, dev);
  } else {
    fail(kvevict::errc::invalid_argument, "cache", "unknown layout '" + layout + "'");
  }
}

//! The signals (a dict of optional tensors and ints).
void describe_signals(const nb::dict& d, call_desc& c, where dev) {
  const std::int64_t seqs = c.num_seqs;
  if (nb::object o = entry(d, "queries"); !o.is_none()) {
    array q = nb::cast<array>(o);
    check_tensor(q, "queries", 4, dev);
    if (dtype_of(q) != c.dtype) fail(kvevict::errc::invalid_argument, "queries", "must have the cache's dtype");
    if (static_cast<std::int64_t>(q.shape(0)) != seqs)
      fail(kvevict::errc::shape_mismatch, "queries", "must be [num_seqs, num_q_heads, rows, head_dim]");
    if (static_cast<std::int64_t>(q.shape(3)) != c.k_shape[3])
      fail(kvevict::errc::shape_mismatch, "queries", "head_dim differs from the cache's");
    c.queries = q.data();
    c.num_q_heads = to_int(q.shape(1), "queries");
    c.query_rows = to_int(q.shape(2), "queries");
  }
  if (nb::object o = entry(d, "attention_sums"); !o.is_none()) {
    array a = nb::cast<array>(o);
    check_tensor(a, "attention_sums", 3, dev);
    if (dtype_of(a) != dtype_id::f32) fail(kvevict::errc::invalid_argument, "attention_sums", "must be float32");
    if (static_cast<std::int64_t>(a.shape(0)) != seqs)
      fail(kvevict::errc::shape_mismatch, "attention_sums", "must be [num_seqs, num_q_heads, tokens]");
    if (c.queries != nullptr && static_cast<int>(a.shape(1)) != c.num_q_heads)
      fail(kvevict::errc::shape_mismatch, "attention_sums", "query heads differ from the queries'");
    c.attention_sums = static_cast<const float*>(a.data());
    c.num_q_heads = to_int(a.shape(1), "attention_sums");
    c.sums_stride = to_int(a.shape(2), "attention_sums");
  }
  c.token_ids = int_matrix(entry(d, "token_ids"), "token_ids", seqs, dev, &c.token_ids_stride);
  c.seq_budgets = int_array(entry(d, "seq_budgets"), "seq_budgets", seqs, true, dev);
  c.seq_sinks = int_array(entry(d, "seq_sinks"), "seq_sinks", seqs, true, dev);
  c.seq_windows = int_array(entry(d, "seq_windows"), "seq_windows", seqs, true, dev);
  c.layer = get(d, "layer", 0);
  c.num_layers = get(d, "num_layers", 1);
  c.threads = get(d, "threads", 0);
  if (c.threads < 0) fail(kvevict::errc::invalid_argument, "threads", "must be >= 0 (0: every hardware thread)");
}

//! A plan the caller passes to a compaction: positions `[rows, capacity]`, counts `[rows]`, int32.
void describe_plan(const nb::object& pp, const nb::object& pc, call_desc& c, where dev) {
  if (pp.is_none() || pc.is_none()) fail(kvevict::errc::invalid_argument, "plan", "required");
  int rows = 0;
  c.positions = const_cast<std::int32_t*>(int_matrix(pp, "plan.positions", -1, dev, &c.plan_capacity, &rows));
  std::int64_t n = 0;
  c.counts = const_cast<std::int32_t*>(int_array(pc, "plan.counts", -1, false, dev, &n));
  if (n != rows) fail(kvevict::errc::shape_mismatch, "plan.counts", "must hold a count per row");
  c.plan_rows = rows;
}

//! Checks every tensor of a call and describes it. K's device is the call's: the CPU, or a CUDA
//! device when the package was built with CUDA.
call_desc describe(const std::string& layout, const nb::tuple& tensors, const nb::dict& sig, bool do_plan,
                   bool do_compact, const nb::object& pp, const nb::object& pc, bool cuda) {
  call_desc c;
  const nb::object k = entry(tensors, 0);
  if (k.is_none()) fail(kvevict::errc::invalid_argument, "k", "required");
  const where dev = where_of(nb::cast<array>(k));
  if (cuda != dev.cuda()) {
    if (dev.cuda() && !has_cuda)
      fail(kvevict::errc::invalid_argument, "k",
           "is a CUDA tensor, and this build of the kvevict package has the host backend only: reinstall it "
           "with CUDA (pip install ./python -C cmake.define.KVEVICT_PY_CUDA=ON) or move the tensors to the CPU");
    fail(kvevict::errc::invalid_argument, "k",
         "is on " + dev.name() + (cuda ? ": cuda_call takes CUDA tensors" : ": call takes CPU tensors"));
  }
  describe_kv(k, entry(tensors, 1), do_compact, c, dev);
  describe_tables(layout, tensors, c, dev);
  if (do_plan) describe_signals(sig, c, dev);
  else describe_plan(pp, pc, c, dev);
  return c;
}

nb::tuple call(const std::string& layout, const std::string& kind, const nb::dict& params, const nb::tuple& tensors,
               const nb::dict& sig, bool do_plan, bool do_compact, const nb::object& pp, const nb::object& pc) {
  const config cfg = do_plan ? to_config(kind, params) : config{};
  const call_desc c = describe(layout, tensors, sig, do_plan, do_compact, pp, pc, false);
  outputs o;
  if (c.layout == layout_id::dense)
    o = run_layout<layout_id::dense>(cfg, c, do_plan, do_compact);
  else if (c.layout == layout_id::block_table)
    o = run_layout<layout_id::block_table>(cfg, c, do_plan, do_compact);
  else
    o = run_layout<layout_id::csr>(cfg, c, do_plan, do_compact);
  return nb::make_tuple(o.positions, o.counts, o.new_lens, o.freed_pages);
}

nb::tuple cuda_sizes_of(const std::string& layout, const std::string& kind, const nb::dict& params,
                        const nb::tuple& tensors, const nb::dict& sig, bool do_plan, bool do_compact,
                        const nb::object& pp, const nb::object& pc) {
  const config cfg = do_plan ? to_config(kind, params) : config{};
  const call_desc c = describe(layout, tensors, sig, do_plan, do_compact, pp, pc, true);
  const device_sizes s =
      on_cuda_layout(c, [&](auto L) { return cuda_sizes<decltype(L)::value>(cfg, c, do_plan, do_compact); });
  return nb::make_tuple(s.rows, s.capacity, s.max_freed, s.workspace_bytes);
}

//! An output the caller allocated on the device: int32, contiguous, on K's device, at least `n`
//! entries (`n` < 0: any).
warray device_output(const nb::object& o, const char* name, std::size_t ndim, where dev, std::int64_t n) {
  warray a;
  if (o.is_none() || !nb::try_cast(o, a)) fail(kvevict::errc::invalid_argument, name, "must be a writable tensor");
  check_tensor(a, name, ndim, dev);
  if (dtype_of(a) != dtype_id::i32) fail(kvevict::errc::invalid_argument, name, "must be int32");
  if (n >= 0 && static_cast<std::int64_t>(a.size()) < n)
    fail(kvevict::errc::buffer_too_small, name, "must hold at least " + std::to_string(n) + " entries");
  return a;
}

std::int32_t* i32_data(const warray& a) { return static_cast<std::int32_t*>(a.data()); }

void cuda_call(const std::string& layout, const std::string& kind, const nb::dict& params, const nb::tuple& tensors,
               const nb::dict& sig, bool do_plan, bool do_compact, const nb::object& pp, const nb::object& pc,
               const nb::tuple& outs, const nb::object& workspace, std::uintptr_t stream) {
  const config cfg = do_plan ? to_config(kind, params) : config{};
  call_desc c = describe(layout, tensors, sig, do_plan, do_compact, pp, pc, true);
  const where dev = where_of(nb::cast<array>(entry(tensors, 0)));
  const std::int64_t rows = c.num_seqs * c.k_shape[c.layout == layout_id::dense ? 1 : 2];
  if (do_plan) {
    const warray p = device_output(entry(outs, 0), "plan.positions", 2, dev, -1);
    c.positions = i32_data(p);
    c.plan_capacity = to_int(p.shape(1), "plan.positions");
    c.plan_rows = to_int(p.shape(0), "plan.positions");
    c.counts = i32_data(device_output(entry(outs, 1), "plan.counts", 1, dev, c.plan_rows));
  }
  if (do_compact) {
    c.new_lens = i32_data(device_output(entry(outs, 2), "result.new_lens", 1, dev, rows));
    c.new_lens_capacity = static_cast<int>(rows);
    const warray f = device_output(entry(outs, 3), "result.freed_pages", 1, dev, -1);
    c.freed_pages = i32_data(f);
    c.freed_capacity = to_int(f.size(), "result.freed_pages");
    c.num_freed = i32_data(device_output(entry(outs, 4), "result.num_freed", 1, dev, 1));
  }
  warray w;
  if (!nb::try_cast(workspace, w)) fail(kvevict::errc::invalid_argument, "workspace", "must be a writable tensor");
  check_tensor(w, "workspace", 1, dev);
  c.workspace = w.data();
  c.workspace_bytes = w.nbytes();
  c.stream = reinterpret_cast<void*>(stream);
  nb::gil_scoped_release unlocked;
  on_cuda_layout(c, [&](auto L) { cuda_run<decltype(L)::value>(cfg, c, do_plan, do_compact); });
}

}  // namespace
}  // namespace kvevict_py

NB_MODULE(_ext, m) {
  using namespace kvevict_py;
  m.doc() = "kvevict's C++ core. Use the kvevict package, not this module.";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const py_error& e) {
      nb::object cls = nb::module_::import_("kvevict.errors").attr("KvevictError");
      nb::object args = nb::make_tuple(e.message, e.code, e.argument);
      PyErr_SetObject(cls.ptr(), args.ptr());
    }
  });
  m.def("defaults", &defaults, nb::arg("kind"));
  m.def("call", &call, nb::arg("layout"), nb::arg("kind"), nb::arg("params"), nb::arg("tensors"), nb::arg("signals"),
        nb::arg("do_plan"), nb::arg("do_compact"), nb::arg("plan_positions").none(), nb::arg("plan_counts").none());
  if (has_cuda) {
    m.def("cuda_sizes", &cuda_sizes_of, nb::arg("layout"), nb::arg("kind"), nb::arg("params"), nb::arg("tensors"),
          nb::arg("signals"), nb::arg("do_plan"), nb::arg("do_compact"), nb::arg("plan_positions").none(),
          nb::arg("plan_counts").none());
    m.def("cuda_call", &cuda_call, nb::arg("layout"), nb::arg("kind"), nb::arg("params"), nb::arg("tensors"),
          nb::arg("signals"), nb::arg("do_plan"), nb::arg("do_compact"), nb::arg("plan_positions").none(),
          nb::arg("plan_counts").none(), nb::arg("outputs"), nb::arg("workspace"), nb::arg("stream"));
  }
  m.attr("version") = std::to_string(KVEVICT_VERSION_MAJOR) + "." + std::to_string(KVEVICT_VERSION_MINOR) + "." +
                      std::to_string(KVEVICT_VERSION_PATCH);
  m.attr("has_cuda") = has_cuda;
}

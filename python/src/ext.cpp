// The `kvevict._ext` module: three calls (plan, compact, evict) over three cache layouts, and the
// C++ defaults of every policy kind. The Python package (kvevict/__init__.py) wraps them.
#include <nanobind/stl/pair.h>

#include "binding.hpp"

namespace kvevict_py {
namespace {

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

config to_config(const std::string& kind, const nb::dict& d) {
  const nb::dict def = defaults(kind);
  for (auto [key, value] : d) {
    const std::string name = nb::cast<std::string>(key);
    if (name != "delimiter_ids" && name != "sentence_ids" && !def.contains(key))
      fail(kvevict::errc::invalid_argument, name, "not a parameter of " + kind);
  }
  return config{kind, d, get(d, "delimiter_ids", std::vector<std::int32_t>{}),
                get(d, "sentence_ids", std::vector<std::int32_t>{})};
}

signal_args to_signals(const nb::dict& d) {
  signal_args s;
  auto obj = [&](const char* key) { return d.contains(key) ? nb::borrow(d[key]) : nb::none(); };
  s.queries = obj("queries");
  s.attention_sums = obj("attention_sums");
  s.token_ids = obj("token_ids");
  s.seq_budgets = obj("seq_budgets");
  s.seq_sinks = obj("seq_sinks");
  s.seq_windows = obj("seq_windows");
  s.layer = get(d, "layer", 0);
  s.num_layers = get(d, "num_layers", 1);
  s.threads = get(d, "threads", 0);
  if (s.threads < 0) fail(kvevict::errc::invalid_argument, "threads", "must be >= 0 (0: every hardware thread)");
  return s;
}

nb::tuple call(const std::string& layout, const std::string& kind, const nb::dict& params, const nb::tuple& tensors,
               const nb::dict& sig, bool do_plan, bool do_compact, const nb::object& pp, const nb::object& pc) {
  const config cfg = do_plan ? to_config(kind, params) : config{};
  call_args a;
  auto at = [&](std::size_t i) { return i < tensors.size() ? nb::borrow(tensors[i]) : nb::none(); };
  a.k = at(0);
  a.v = at(1);
  a.t0 = at(2);
  a.t1 = at(3);
  a.t2 = at(4);
  if (a.k.is_none()) fail(kvevict::errc::invalid_argument, "k", "required");
  if (a.v.is_none()) fail(kvevict::errc::invalid_argument, "v", "required");
  const signal_args s = to_signals(sig);
  outputs o;
  if (layout == "dense")
    o = call_dense(cfg, a, s, do_plan, do_compact, pp, pc);
  else if (layout == "block_table")
    o = call_block_table(cfg, a, s, do_plan, do_compact, pp, pc);
  else if (layout == "csr")
    o = call_csr(cfg, a, s, do_plan, do_compact, pp, pc);
  else
    fail(kvevict::errc::invalid_argument, "cache", "unknown layout '" + layout + "'");
  return nb::make_tuple(o.positions, o.counts, o.new_lens, o.freed_pages);
}

}  // namespace
}  // namespace kvevict_py

NB_MODULE(_ext, m) {
  using namespace kvevict_py;
  m.doc() = "kvevict's C++ core (host backend). Use the kvevict package, not this module.";
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
  m.attr("version") = std::to_string(KVEVICT_VERSION_MAJOR) + "." + std::to_string(KVEVICT_VERSION_MINOR) + "." +
                      std::to_string(KVEVICT_VERSION_PATCH);
  m.attr("has_cuda") = false;
}

// HF-style dense caches: K and V `[batch, kv_heads, capacity, head_dim]`, lengths `[batch]`.
#include "binding.hpp"

namespace kvevict_py {

outputs call_dense(const config& cfg, const call_args& a, const signal_args& s, bool do_plan, bool do_compact,
                   const nb::object& pp, const nb::object& pc) {
  dtype_id id;
  std::vector<std::size_t> shape;
  auto [k, v] = kv_data(a, do_compact, 4, &id, &shape);
  check_queries_dtype(s, id);
  const int batch = to_int(shape[0], "k");
  const std::int32_t* lens = int_array(a.t0, "seq_lens", batch, false);
  return with_dtype(id, [&](auto tag) {
    using T = decltype(tag);
    kvevict::dense_cache<T> cache{static_cast<T*>(k),    static_cast<T*>(v),   lens, batch, to_int(shape[1], "k"),
                                  to_int(shape[2], "k"), to_int(shape[3], "k")};
    return run<T>(cfg, cache, s, do_plan, do_compact, pp, pc);
  });
}

}  // namespace kvevict_py

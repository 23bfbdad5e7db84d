// HF-style dense caches: K and V `[batch, kv_heads, capacity, head_dim]`, lengths `[batch]`.
#include "binding.hpp"

namespace kvevict_py {

outputs call_dense(const config& cfg, const call_args& a, const signal_args& s, bool do_plan, bool do_compact,
                   const nb::object& pp, const nb::object& pc) {
  return call_with(cfg, a, s, do_plan, do_compact, pp, pc, [&](auto* k, auto* v, const std::vector<std::size_t>& sh) {
    using T = std::remove_pointer_t<decltype(k)>;
    const int batch = to_int(sh[0], "k");
    return kvevict::dense_cache<T>{k,
                                   v,
                                   int_array(a.t0, "seq_lens", batch, false),
                                   batch,
                                   to_int(sh[1], "k"),
                                   to_int(sh[2], "k"),
                                   to_int(sh[3], "k")};
  });
}

}  // namespace kvevict_py

// vLLM-style paged caches: K and V `[num_pages, page_size, kv_heads, head_dim]`, a block table
// `[num_seqs, stride]` and lengths `[num_seqs]`.
#include "binding.hpp"

namespace kvevict_py {

outputs call_block_table(const config& cfg, const call_args& a, const signal_args& s, bool do_plan, bool do_compact,
                         const nb::object& pp, const nb::object& pc) {
  if (a.t0.is_none()) fail(kvevict::errc::invalid_argument, "block_table", "required");
  array bt = nb::cast<array>(a.t0);
  check_tensor(bt, "block_table", 2);
  if (dtype_of(bt) != dtype_id::i32) fail(kvevict::errc::invalid_argument, "block_table", "must be int32");
  const int seqs = to_int(bt.shape(0), "block_table");
  const std::int32_t* lens = int_array(a.t1, "seq_lens", seqs, false);
  return call_with(cfg, a, s, do_plan, do_compact, pp, pc, [&](auto* k, auto* v, const std::vector<std::size_t>& sh) {
    using T = std::remove_pointer_t<decltype(k)>;
    return kvevict::block_table_cache<T>{k,
                                         v,
                                         static_cast<const std::int32_t*>(bt.data()),
                                         lens,
                                         seqs,
                                         to_int(bt.shape(1), "block_table"),
                                         to_int(sh[0], "k"),
                                         to_int(sh[1], "k"),
                                         to_int(sh[2], "k"),
                                         to_int(sh[3], "k")};
  });
}

}  // namespace kvevict_py

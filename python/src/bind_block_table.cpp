// vLLM-style paged caches: K and V `[num_pages, page_size, kv_heads, head_dim]`, a block table
// `[num_seqs, stride]` and lengths `[num_seqs]`.
#include "binding.hpp"

namespace kvevict_py {

outputs call_block_table(const config& cfg, const call_args& a, const signal_args& s, bool do_plan, bool do_compact,
                         const nb::object& pp, const nb::object& pc) {
  dtype_id id;
  std::vector<std::size_t> shape;
  auto [k, v] = kv_data(a, do_compact, 4, &id, &shape);
  check_queries_dtype(s, id);
  if (a.t0.is_none()) fail(kvevict::errc::invalid_argument, "block_table", "required");
  array bt = nb::cast<array>(a.t0);
  check_tensor(bt, "block_table", 2);
  if (dtype_of(bt) != dtype_id::i32) fail(kvevict::errc::invalid_argument, "block_table", "must be int32");
  const int seqs = to_int(bt.shape(0), "block_table");
  const std::int32_t* lens = int_array(a.t1, "seq_lens", seqs, false);
  return with_dtype(id, [&](auto tag) {
    using T = decltype(tag);
    kvevict::block_table_cache<T> cache{static_cast<T*>(k),
                                        static_cast<T*>(v),
                                        static_cast<const std::int32_t*>(bt.data()),
                                        lens,
                                        seqs,
                                        to_int(bt.shape(1), "block_table"),
                                        to_int(shape[0], "k"),
                                        to_int(shape[1], "k"),
                                        to_int(shape[2], "k"),
                                        to_int(shape[3], "k")};
    return run<T>(cfg, cache, s, do_plan, do_compact, pp, pc);
  });
}

}  // namespace kvevict_py

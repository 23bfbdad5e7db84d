// FlashInfer-style paged caches (NHD): K and V `[num_pages, page_size, kv_heads, head_dim]`,
// `indptr [num_seqs + 1]`, `indices [indptr[-1]]`, `last_page_len [num_seqs]`.
#include "binding.hpp"

namespace kvevict_py {

outputs call_csr(const config& cfg, const call_args& a, const signal_args& s, bool do_plan, bool do_compact,
                 const nb::object& pp, const nb::object& pc) {
  dtype_id id;
  std::vector<std::size_t> shape;
  auto [k, v] = kv_data(a, do_compact, 4, &id, &shape);
  check_queries_dtype(s, id);
  std::int64_t n_indptr = 0;
  const std::int32_t* indptr = int_array(a.t0, "indptr", -1, false, &n_indptr);
  if (n_indptr < 1) fail(kvevict::errc::shape_mismatch, "indptr", "must hold num_seqs + 1 entries");
  const int seqs = static_cast<int>(n_indptr - 1);
  std::int64_t n_indices = 0;
  const std::int32_t* indices = int_array(a.t1, "indices", -1, false, &n_indices);
  if (seqs > 0 && indptr[seqs] > n_indices)
    fail(kvevict::errc::shape_mismatch, "indices", "must hold indptr[num_seqs] entries");
  const std::int32_t* last = int_array(a.t2, "last_page_len", seqs, false);
  return with_dtype(id, [&](auto tag) {
    using T = decltype(tag);
    kvevict::csr_page_cache<T> cache{static_cast<T*>(k),
                                     static_cast<T*>(v),
                                     indptr,
                                     indices,
                                     last,
                                     seqs,
                                     to_int(shape[0], "k"),
                                     to_int(shape[1], "k"),
                                     to_int(shape[2], "k"),
                                     to_int(shape[3], "k")};
    return run<T>(cfg, cache, s, do_plan, do_compact, pp, pc);
  });
}

}  // namespace kvevict_py

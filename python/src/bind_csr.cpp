// FlashInfer-style paged caches (NHD): K and V `[num_pages, page_size, kv_heads, head_dim]`,
// `indptr [num_seqs + 1]`, `indices [indptr[-1]]`, `last_page_len [num_seqs]`.
#include "binding.hpp"

namespace kvevict_py {

outputs call_csr(const config& cfg, const call_args& a, const signal_args& s, bool do_plan, bool do_compact,
                 const nb::object& pp, const nb::object& pc) {
  std::int64_t n_indptr = 0;
  const std::int32_t* indptr = int_array(a.t0, "indptr", -1, false, &n_indptr);
  if (n_indptr < 1) fail(kvevict::errc::shape_mismatch, "indptr", "must hold num_seqs + 1 entries");
  const int seqs = static_cast<int>(n_indptr - 1);
  std::int64_t n_indices = 0;
  const std::int32_t* indices = int_array(a.t1, "indices", -1, false, &n_indices);
  if (seqs > 0 && indptr[seqs] > n_indices)
    fail(kvevict::errc::shape_mismatch, "indices", "must hold indptr[num_seqs] entries");
  const std::int32_t* last = int_array(a.t2, "last_page_len", seqs, false);
  return call_with(cfg, a, s, do_plan, do_compact, pp, pc, [&](auto* k, auto* v, const std::vector<std::size_t>& sh) {
    using T = std::remove_pointer_t<decltype(k)>;
    return kvevict::csr_page_cache<T>{k,
                                      v,
                                      indptr,
                                      indices,
                                      last,
                                      seqs,
                                      to_int(sh[0], "k"),
                                      to_int(sh[1], "k"),
                                      to_int(sh[2], "k"),
                                      to_int(sh[3], "k")};
  });
}

}  // namespace kvevict_py

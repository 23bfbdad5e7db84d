// The host backend's calls on FlashInfer-style paged caches (NHD): K and V `[num_pages, page_size, kv_heads, head_dim]`,
// `indptr [num_seqs + 1]`, `indices [indptr[-1]]`, `last_page_len [num_seqs]`.
#include "binding.hpp"

namespace kvevict_py {

template outputs run_layout<layout_id::csr>(const config&, const call_desc&, bool, bool);

}  // namespace kvevict_py

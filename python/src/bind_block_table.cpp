// The host backend's calls on vLLM-style paged caches: K and V `[num_pages, page_size, kv_heads, head_dim]`, a block table
// `[num_seqs, stride]` and lengths `[num_seqs]`.
#include "binding.hpp"

namespace kvevict_py {

template outputs run_layout<layout_id::block_table>(const config&, const call_desc&, bool, bool);

}  // namespace kvevict_py

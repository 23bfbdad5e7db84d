// The host backend's calls on HF-style dense caches: K and V `[batch, kv_heads, capacity, head_dim]`, lengths `[batch]`.
#include "binding.hpp"

namespace kvevict_py {

template outputs run_layout<layout_id::dense>(const config&, const call_desc&, bool, bool);

}  // namespace kvevict_py

// The CUDA backend's calls on vLLM-style block tables (see device.cuh).
#include "device.cuh"

namespace kvevict_py {

template device_sizes cuda_sizes<layout_id::block_table>(const config&, const call_desc&, bool, bool);
template void cuda_run<layout_id::block_table>(const config&, const call_desc&, bool, bool);

}  // namespace kvevict_py

// The CUDA backend's calls on FlashInfer-style CSR page tables (see device.cuh).
#include "device.cuh"

namespace kvevict_py {

template device_sizes cuda_sizes<layout_id::csr>(const config&, const call_desc&, bool, bool);
template void cuda_run<layout_id::csr>(const config&, const call_desc&, bool, bool);

}  // namespace kvevict_py

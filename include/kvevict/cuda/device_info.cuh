//! \file cuda/device_info.cuh
//! Device attributes the CUDA backend sizes its launches with, queried once per device and
//! process (front doors never query attributes per call), and kernel attributes set once. Not API.
#pragma once

#include <atomic>
#include <mutex>
#include <set>
#include <utility>

#include "backend.cuh"

namespace kvevict::cuda_backend {

struct device_info {
  int sms = 1;             //!< multiprocessors
  int max_smem_optin = 0;  //!< dynamic shared memory a block may opt in to, bytes
  int cc_major = 0;        //!< compute capability, major
  int pageable_access = 0; //!< kernels may read pageable host memory (HMM / ATS systems)
};

//! The current device's attributes (cached after the first call on that device).
inline status current_device_info(device_info& out) {
  constexpr int max_devices = 64;
  static device_info infos[max_devices];
  static std::atomic<bool> ready[max_devices];
  static std::mutex mu;
  int dev = 0;
  KVEVICT_TRY(check(cudaGetDevice(&dev), "cudaGetDevice"));
  auto query = [&](device_info& i) {
    KVEVICT_TRY(check(cudaDeviceGetAttribute(&i.sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute"));
    KVEVICT_TRY(check(cudaDeviceGetAttribute(&i.max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
                      "cudaDeviceGetAttribute"));
    KVEVICT_TRY(check(cudaDeviceGetAttribute(&i.pageable_access, cudaDevAttrPageableMemoryAccess, dev),
                      "cudaDeviceGetAttribute"));
    return check(cudaDeviceGetAttribute(&i.cc_major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  };
  if (dev < 0 || dev >= max_devices) return query(out);
  if (!ready[dev].load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(mu);
    if (!ready[dev].load(std::memory_order_relaxed)) {
      device_info i;
      KVEVICT_TRY(query(i));
      infos[dev] = i;
      ready[dev].store(true, std::memory_order_release);
    }
  }
  out = infos[dev];
  return ok_status();
}

//! Refuses (naming `argument`) an array the kernels read that the current device cannot: plain
//! host memory, unless the device reads pageable memory. Device, managed and mapped pinned memory
//! pass. A pointer-attribute query, no stream operation (allowed while a stream is captured); where
//! the query itself fails the pointer is let through and the error it left is cleared.
inline status check_device_readable(const void* p, int count, const char* argument) {
  if (p == nullptr || count <= 0) return ok_status();
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();  // the query's own error, not the caller's
    return ok_status();
  }
  if (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ||
      (a.type == cudaMemoryTypeHost && a.devicePointer == p))
    return ok_status();
  device_info info;
  KVEVICT_TRY(current_device_info(info));
  if (info.pageable_access) return ok_status();
  return make_error(errc::invalid_argument, argument,
                    "is host memory, which the CUDA backend's kernels cannot read: copy it to device memory");
}

//! Lets `kernel` use `bytes` of dynamic shared memory on the current device; the attribute is set
//! once per (kernel, device, size) and remembered.
template <class Kernel>
status allow_dynamic_smem(Kernel kernel, std::size_t bytes) {
  if (bytes <= 48 * 1024) return ok_status();
  static std::mutex mu;
  static std::set<std::pair<const void*, std::pair<int, std::size_t>>> done;
  int dev = 0;
  KVEVICT_TRY(check(cudaGetDevice(&dev), "cudaGetDevice"));
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), std::make_pair(dev, bytes));
  std::lock_guard<std::mutex> lock(mu);
  if (done.count(key)) return ok_status();
  KVEVICT_TRY(check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
                    "cudaFuncSetAttribute"));
  done.insert(key);
  return ok_status();
}

}  // namespace kvevict::cuda_backend

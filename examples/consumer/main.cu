// Downstream use of the CUDA backend through kvevict::cuda: the plan of StreamingLLM over a small
// vLLM-style cache in device memory equals the host's. Without a device it says so and exits 0
// (it was built and linked, which is what CI can check).
#include <kvevict/cuda.cuh>

#include <cstdio>
#include <vector>

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::puts("consumer_cuda: built and linked against kvevict::cuda; no CUDA device to run on");
    return 0;
  }
  const int pages = 4, page_size = 4, heads = 2, dim = 8, len = 14;
  const std::vector<int> table = {2, 0, 3, 1}, lens = {len};
  float *k, *v;
  int *dtable, *dlens, *pos, *cnt;
  const std::size_t elems = pages * page_size * heads * dim;
  cudaMalloc(&k, sizeof(float) * elems);
  cudaMalloc(&v, sizeof(float) * elems);
  cudaMemset(k, 0, sizeof(float) * elems);
  cudaMemset(v, 0, sizeof(float) * elems);
  cudaMalloc(&dtable, sizeof(int) * 4);
  cudaMalloc(&dlens, sizeof(int));
  cudaMemcpy(dtable, table.data(), sizeof(int) * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dlens, lens.data(), sizeof(int), cudaMemcpyHostToDevice);
  kvevict::block_table_cache<float> cache{k, v, dtable, dlens, 1, 4, pages, page_size, heads, dim};
  kvevict::streaming_llm policy;
  policy.selector = {2, 2, kvevict::uniform_budget{6}};
  kvevict::signals<float> none;
  const auto exec = kvevict::cuda;
  const int cap = kvevict::plan_capacity(exec, policy, cache), rows = kvevict::plan_rows(cache);
  cudaMalloc(&pos, sizeof(int) * rows * cap);
  cudaMalloc(&cnt, sizeof(int) * rows);
  const std::size_t bytes = kvevict::plan_workspace_bytes(exec, policy, cache, none);
  void* ws = nullptr;
  cudaMalloc(&ws, bytes);
  kvevict::status st = kvevict::plan(exec, policy, cache, none, kvevict::keep_plan{pos, cnt, cap, rows}, ws, bytes);
  if (st) st = kvevict::device_status(exec, ws);
  if (!st) {
    std::puts(st.message().c_str());
    return 1;
  }
  std::vector<int> hp(rows * cap), hc(rows);
  cudaMemcpy(hp.data(), pos, sizeof(int) * hp.size(), cudaMemcpyDeviceToHost);
  cudaMemcpy(hc.data(), cnt, sizeof(int) * hc.size(), cudaMemcpyDeviceToHost);
  const std::vector<int> want = {0, 1, 10, 11, 12, 13};
  for (int r = 0; r < rows; ++r)
    if (hc[r] != 6 || std::vector<int>(hp.begin() + r * cap, hp.begin() + r * cap + 6) != want) return 2;
  std::puts("consumer_cuda ok");
  return 0;
}

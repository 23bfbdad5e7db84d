// Tensor parallelism on GPUs with NCCL: a layer's 8 KV heads split over the GPUs of this machine
// (1, 2, 4 or 8 ranks, one per GPU, driven from one thread with NCCL group calls). Each rank holds
// its heads' K and V (one sequence, HF dense layout) and its query heads, scores its own heads on
// its GPU (`kvevict::score`), joins one ncclAllGather of the scores, selects its own rows from the
// gathered scores (`kvevict::select`) and compacts its own cache. ChunkKV keeps whole chunks chosen
// by their mean score over every head of the layer, so without the gather a rank would keep other
// chunks than one GPU holding every head.
//
// Checks: every rank's rows equal the host backend's `select` from the same gathered scores, and
// every rank keeps the same chunks (the heads share them). Exits non-zero otherwise. One rank runs
// on any machine with a GPU (the all-gather is then a copy).
//
// Build (nvcc, NCCL): nvcc -O3 -std=c++17 -arch=sm_90 -Iinclude -I$NCCL/include \
//   examples/cuda/tensor_parallel_nccl.cu -L$NCCL/lib -lnccl -o tensor_parallel_nccl
#include <cuda_runtime.h>
#include <nccl.h>

#include <kvevict/cuda.cuh>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

void require(const kvevict::status& st, const char* what, int rank) {
  if (!st.ok()) {
    std::fprintf(stderr, "rank %d, %s: %s\n", rank, what, st.message().c_str());
    std::exit(2);
  }
}
void cuda_require(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}
void nccl_require(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, ncclGetErrorString(r));
    std::exit(2);
  }
}

using T = kvevict::bfloat16;
constexpr int kv_heads = 8, group = 4, head_dim = 128, tokens = 4096, window = 32, budget = 1024;
constexpr std::size_t stride = tokens;

template <class V>
V* upload(const std::vector<V>& h) {
  V* d = nullptr;
  cuda_require(cudaMalloc(&d, sizeof(V) * (h.empty() ? 1 : h.size())), "cudaMalloc");
  cuda_require(cudaMemcpy(d, h.data(), sizeof(V) * h.size(), cudaMemcpyHostToDevice), "upload");
  return d;
}
template <class V>
std::vector<V> download(const V* d, std::size_t n) {
  std::vector<V> h(n);
  cuda_require(cudaMemcpy(h.data(), d, sizeof(V) * n, cudaMemcpyDeviceToHost), "download");
  return h;
}

// One rank: heads [h0, h0 + count) of a deterministic layer (the same values whichever rank builds
// them), their query heads, and the rank's device buffers.
struct rank_state {
  int device = 0, h0 = 0, count = 0;
  std::vector<T> k, v, q;  // host copies, for the host check
  std::vector<std::int32_t> lens{tokens};
  T *dk = nullptr, *dv = nullptr, *dq = nullptr;
  std::int32_t *dlens = nullptr, *dpos = nullptr, *dcounts = nullptr, *dnew_lens = nullptr, *dnum_freed = nullptr;
  float *dscores = nullptr, *dgathered = nullptr;
  void* ws = nullptr;
  std::size_t ws_bytes = 0;
  int capacity = 0;
  cudaStream_t stream = nullptr;

  void build(int dev, int first, int n) {
    device = dev, h0 = first, count = n;
    k.resize(std::size_t(n) * tokens * head_dim);
    v.resize(k.size());
    q.resize(std::size_t(n) * group * window * head_dim);
    for (int h = 0; h < n; ++h) {
      std::mt19937 rng(1000 + first + h);  // per global head
      std::normal_distribution<float> nd;
      for (int i = 0; i < tokens * head_dim; ++i) {
        k[std::size_t(h) * tokens * head_dim + i] = kvevict::from_float<T>(nd(rng));
        v[std::size_t(h) * tokens * head_dim + i] = kvevict::from_float<T>(nd(rng));
      }
      for (int i = 0; i < group * window * head_dim; ++i)
        q[std::size_t(h) * group * window * head_dim + i] = kvevict::from_float<T>(2 * nd(rng));
    }
    cuda_require(cudaSetDevice(dev), "cudaSetDevice");
    cuda_require(cudaStreamCreate(&stream), "cudaStreamCreate");
    dk = upload(k), dv = upload(v), dq = upload(q), dlens = upload(lens);
  }
  kvevict::dense_cache<T> view(T* kk, T* vv, const std::int32_t* ll) const { return {kk, vv, ll, 1, count, tokens, head_dim}; }
  kvevict::dense_cache<T> device_view() const { return view(dk, dv, dlens); }
  kvevict::signals<T> sig(const T* queries) const {
    kvevict::signals<T> s;
    s.queries = queries;
    s.num_q_heads = count * group;
    return s;
  }
};

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1) {
    std::printf("no CUDA device: nothing to run\n");
    return 77;
  }
  int ranks = 1;
  while (ranks * 2 <= devices && ranks * 2 <= kv_heads) ranks *= 2;
  const int per_rank = kv_heads / ranks;
  std::printf("%d GPU(s): %d rank(s), %d KV heads each, %d tokens, ChunkKV keeps %d per head\n", devices, ranks,
              per_rank, tokens, budget);

  kvevict::chunkkv<> policy;  // shared-heads chunks: one rank's plan reads every head's scores
  policy.selector = {4, window, kvevict::uniform_budget{budget}};

  std::vector<rank_state> r(static_cast<std::size_t>(ranks));
  std::vector<int> devs(static_cast<std::size_t>(ranks));
  for (int i = 0; i < ranks; ++i) devs[i] = i, r[i].build(i, i * per_rank, per_rank);
  std::vector<ncclComm_t> comms(static_cast<std::size_t>(ranks));
  nccl_require(ncclCommInitAll(comms.data(), ranks, devs.data()), "ncclCommInitAll");

  // 1. Each rank scores its own heads.
  for (auto& s : r) {
    cuda_require(cudaSetDevice(s.device), "cudaSetDevice");
    const auto exec = kvevict::cuda.on(s.stream);
    const auto cache = s.device_view();
    const auto sig = s.sig(s.dq);
    const kvevict::head_shard shard{s.h0, kv_heads, nullptr};
    s.ws_bytes = std::max({kvevict::score_workspace_bytes(exec, policy, cache, sig),
                           kvevict::select_workspace_bytes(exec, policy, cache, sig, shard, stride),
                           kvevict::compact_workspace_bytes(exec, cache)});
    s.capacity = kvevict::select_capacity(exec, policy, cache, shard, stride);
    cuda_require(cudaMalloc(&s.ws, s.ws_bytes), "cudaMalloc");
    cuda_require(cudaMalloc(&s.dscores, sizeof(float) * s.count * stride), "cudaMalloc");
    cuda_require(cudaMalloc(&s.dgathered, sizeof(float) * kv_heads * stride), "cudaMalloc");
    cuda_require(cudaMalloc(&s.dpos, sizeof(std::int32_t) * s.count * s.capacity), "cudaMalloc");
    cuda_require(cudaMalloc(&s.dcounts, sizeof(std::int32_t) * s.count), "cudaMalloc");
    cuda_require(cudaMalloc(&s.dnew_lens, sizeof(std::int32_t) * s.count), "cudaMalloc");
    cuda_require(cudaMalloc(&s.dnum_freed, sizeof(std::int32_t)), "cudaMalloc");
    require(kvevict::score(exec, policy, cache, sig, s.dscores, stride, s.ws, s.ws_bytes), "score", s.h0);
    require(kvevict::device_status(exec, s.ws), "score (device checks)", s.h0);
  }
  // 2. One all-gather of the scores: each rank's [count, stride] block, in rank order.
  nccl_require(ncclGroupStart(), "ncclGroupStart");
  for (int i = 0; i < ranks; ++i)
    nccl_require(ncclAllGather(r[i].dscores, r[i].dgathered, std::size_t(per_rank) * stride, ncclFloat, comms[i],
                               r[i].stream),
                 "ncclAllGather");
  nccl_require(ncclGroupEnd(), "ncclGroupEnd");
  // 3. Each rank selects its own rows from every head's scores and compacts its own cache.
  for (auto& s : r) {
    cuda_require(cudaSetDevice(s.device), "cudaSetDevice");
    const auto exec = kvevict::cuda.on(s.stream);
    const auto cache = s.device_view();
    const kvevict::head_shard shard{s.h0, kv_heads, nullptr};
    const kvevict::keep_plan plan{s.dpos, s.dcounts, s.capacity, s.count};
    require(kvevict::select(exec, policy, cache, s.sig(s.dq), shard, s.dgathered, stride, plan, s.ws, s.ws_bytes),
            "select", s.h0);
    require(kvevict::device_status(exec, s.ws), "select (device checks)", s.h0);
    const kvevict::device_compact_result res{s.dnew_lens, s.count, nullptr, 0, s.dnum_freed};
    require(kvevict::compact(exec, cache, kvevict::as_const(plan), res, s.ws, s.ws_bytes), "compact", s.h0);
    require(kvevict::device_status(exec, s.ws), "compact (device checks)", s.h0);
  }

  // Check: the host backend's selection from the same gathered scores (rank 0's copy), row by row.
  const auto gathered = download(r[0].dgathered, std::size_t(kv_heads) * stride);
  int mismatched = 0;
  std::vector<std::int32_t> first_rows;
  for (auto& s : r) {
    cuda_require(cudaSetDevice(s.device), "cudaSetDevice");
    const auto mine = download(s.dgathered, gathered.size());
    if (std::memcmp(mine.data(), gathered.data(), sizeof(float) * gathered.size()) != 0) ++mismatched;
    const auto host_cache = s.view(s.k.data(), s.v.data(), s.lens.data());
    const kvevict::head_shard shard{s.h0, kv_heads, nullptr};
    const auto sig = s.sig(s.q.data());
    kvevict::keep_plan_buffer want(s.count, kvevict::select_capacity(policy, host_cache, sig, shard));
    require(kvevict::select(kvevict::host, policy, host_cache, sig, shard, gathered.data(), stride, want.view()),
            "host select", s.h0);
    const auto pos = download(s.dpos, std::size_t(s.count) * s.capacity);
    const auto counts = download(s.dcounts, std::size_t(s.count));
    const auto new_lens = download(s.dnew_lens, std::size_t(s.count));
    for (int h = 0; h < s.count; ++h) {
      const std::vector<std::int32_t> got(pos.begin() + std::ptrdiff_t(h) * s.capacity,
                                          pos.begin() + std::ptrdiff_t(h) * s.capacity + counts[h]);
      const std::vector<std::int32_t> ref(want.positions.begin() + std::ptrdiff_t(h) * want.capacity,
                                          want.positions.begin() + std::ptrdiff_t(h) * want.capacity + want.counts[h]);
      if (got != ref || new_lens[h] != counts[h]) ++mismatched;
      if (first_rows.empty()) first_rows = got;
      if (got != first_rows) ++mismatched;  // shared heads: every head of every rank keeps the same chunks
    }
    std::printf("rank %d (GPU %d, heads %d-%d): kept %d of %d tokens per head\n", s.h0 / per_rank, s.device, s.h0,
                s.h0 + s.count - 1, counts[0], tokens);
  }
  for (auto& c : comms) ncclCommDestroy(c);
  if (mismatched) {
    std::printf("%d rows differ from the host's selection or between heads\n", mismatched);
    return 1;
  }
  std::printf("every rank's rows equal the host's selection from the gathered scores\n");
  return 0;
}

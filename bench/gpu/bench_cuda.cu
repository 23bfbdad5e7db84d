// CUDA backend benchmarks (Google Benchmark, CUDA-event manual time, JSON with
// --benchmark_format=json): SnapKV, SABlock and ChunkKV plan + compact of one Llama-3-8B-like layer (32 query heads,
// 8 KV heads, head_dim 128, bf16, window 64, pooling 5, block table with 16-token pages) at 8K,
// 32K and 128K tokens, the plan alone, compaction alone at 50% kept, and a device-to-device copy
// of the same bytes (the bandwidth ceiling). Counters: workspace bytes (our extra memory), bytes
// moved, and the floor of docs/performance.md. Inputs are built on the device, once per size.
// `kvevict_bench_cuda --stages` instead prints, per policy and size, the time of each stream
// operation of one evict (JSON lines; see "stage profile" below).
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cxxabi.h>
#include <string>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include <kvevict/cuda.cuh>

namespace {

constexpr int HQ = 32, HKV = 8, D = 128, W = 64, PS = 16;
using T = kvevict::bfloat16;

void ok(cudaError_t e) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA: %s\n", cudaGetErrorString(e));
    std::exit(1);
  }
}

// Normal(0, 1) samples from a counter-based hash (splitmix64, Box-Muller): inputs built on the
// device in one launch, the same for every run.
__global__ void fill_normal(T* x, std::size_t n, unsigned long long seed) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    unsigned long long z = (i + seed * 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 31)) * 0x94D049BB133111EBull;
    z ^= z >> 29;
    const float u1 = (static_cast<float>(z >> 40) + 1.0f) * (1.0f / 16777217.0f);  // (0, 1]
    const float u2 = static_cast<float>(z & 0xFFFFFFull) * (1.0f / 16777216.0f);
    x[i] = kvevict::from_float<T>(sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
  }
}
void fill(T* x, std::size_t n, unsigned long long seed) {
  fill_normal<<<1024, 256>>>(x, n, seed);
  ok(cudaGetLastError());
}

// One sequence of n tokens in a vLLM block table, random bf16 K / V / queries (built on the
// device), pages shuffled. Built once per size (`layer_of`); `reset` restores K and V from the
// pristine copies before each benchmark, since evict and compact move rows in place.
struct layer {
  int n;
  std::size_t elems = 0;
  T *k = nullptr, *v = nullptr, *k0 = nullptr, *v0 = nullptr, *q = nullptr;
  std::int32_t *table = nullptr, *lens = nullptr;
  kvevict::block_table_cache<T> cache{};
  kvevict::signals<T> sig{};
  explicit layer(int tokens) : n(tokens) {
    const int pages = (n + PS - 1) / PS;
    elems = static_cast<std::size_t>(pages) * PS * HKV * D;
    for (T** p : {&k, &v, &k0, &v0}) ok(cudaMalloc(p, elems * sizeof(T)));
    fill(k0, elems, 1);
    fill(v0, elems, 2);
    const std::size_t qn = static_cast<std::size_t>(HQ) * W * D;
    ok(cudaMalloc(&q, qn * sizeof(T)));
    fill(q, qn, 3);
    std::mt19937 rng(7);
    std::vector<std::int32_t> tbl(pages);
    for (int i = 0; i < pages; ++i) tbl[i] = i;
    std::shuffle(tbl.begin(), tbl.end(), rng);
    ok(cudaMalloc(&table, pages * sizeof(std::int32_t)));
    ok(cudaMemcpy(table, tbl.data(), pages * sizeof(std::int32_t), cudaMemcpyHostToDevice));
    ok(cudaMalloc(&lens, sizeof(std::int32_t)));
    ok(cudaMemcpy(lens, &n, sizeof(std::int32_t), cudaMemcpyHostToDevice));
    cache = {k, v, table, lens, 1, pages, pages, PS, HKV, D};
    sig.queries = q;
    sig.num_q_heads = HQ;
    reset();
  }
  void reset() {
    ok(cudaMemcpy(k, k0, elems * sizeof(T), cudaMemcpyDeviceToDevice));
    ok(cudaMemcpy(v, v0, elems * sizeof(T), cudaMemcpyDeviceToDevice));
    ok(cudaDeviceSynchronize());
  }
  layer(const layer&) = delete;
  layer& operator=(const layer&) = delete;
  ~layer() {
    cudaFree(k), cudaFree(v), cudaFree(k0), cudaFree(v0), cudaFree(q), cudaFree(table), cudaFree(lens);
  }
};

// The layer of `tokens` tokens, built on first use and kept for every later benchmark.
layer& layer_of(int tokens) {
  static std::map<int, std::unique_ptr<layer>> layers;
  auto& l = layers[tokens];
  if (!l) l = std::make_unique<layer>(tokens);
  l->reset();
  return *l;
}

struct timer {
  cudaEvent_t a, b;
  timer() {
    ok(cudaEventCreate(&a));
    ok(cudaEventCreate(&b));
  }
  ~timer() {
    cudaEventDestroy(a), cudaEventDestroy(b);
  }
  template <class F>
  double ms(F&& f) {
    ok(cudaEventRecord(a));
    f();
    ok(cudaEventRecord(b));
    ok(cudaEventSynchronize(b));
    float t = 0;
    ok(cudaEventElapsedTime(&t, a, b));
    return t;
  }
};

// docs/performance.md's floor: two passes of window scoring (tensor cores at 790 TFLOP/s or K reads
// at the measured copy bandwidth, whichever is slower) plus moving the kept K and V.
double floor_ms(int n, int kept, double copy_tbs) {
  const double flops = 2.0 * 2.0 * HQ * W * static_cast<double>(n) * D;
  const double kbytes = 2.0 * static_cast<double>(n) * HKV * D * sizeof(T);
  const double score = std::max(flops / 790e12, kbytes / (copy_tbs * 1e12));
  const double move = 4.0 * kept * HKV * D * sizeof(T) / (copy_tbs * 1e12);
  return (score + move) * 1e3;
}

double g_copy_tbs = 2.95;  // replaced by the copy benchmark's measurement when it runs first

void BM_d2d_copy(benchmark::State& st) {
  const std::size_t bytes = std::size_t(1) << 30;
  void *a, *b;
  ok(cudaMalloc(&a, bytes));
  ok(cudaMalloc(&b, bytes));
  ok(cudaMemset(a, 1, bytes));
  timer t;
  double total = 0;
  for (auto _ : st) {
    const double ms = t.ms([&] { ok(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); });
    st.SetIterationTime(ms / 1e3);
    total += ms;
  }
  g_copy_tbs = 2.0 * bytes * st.iterations() / (total / 1e3) / 1e12;
  st.counters["TBps_rw"] = g_copy_tbs;
  cudaFree(a), cudaFree(b);
}

// Token ids for the segmenters: word ids with a delimiter (1, 2 or 3) about every 12 tokens.
struct token_ids {
  std::int32_t *ids = nullptr, *delims = nullptr;
  explicit token_ids(int n) {
    std::mt19937 rng(11);
    std::vector<std::int32_t> h(n), d = {1, 2, 3};
    for (auto& x : h) x = rng() % 12 == 0 ? 1 + static_cast<int>(rng() % 3) : 4 + static_cast<int>(rng() % 30000);
    ok(cudaMalloc(&ids, sizeof(std::int32_t) * n));
    ok(cudaMemcpy(ids, h.data(), sizeof(std::int32_t) * n, cudaMemcpyHostToDevice));
    ok(cudaMalloc(&delims, sizeof(std::int32_t) * 3));
    ok(cudaMemcpy(delims, d.data(), sizeof(std::int32_t) * 3, cudaMemcpyHostToDevice));
  }
  ~token_ids() {
    cudaFree(ids), cudaFree(delims);
  }
};

// Token ids of `n` tokens, built once per size.
token_ids& ids_of(int n) {
  static std::map<int, std::unique_ptr<token_ids>> all;
  auto& t = all[n];
  if (!t) t = std::make_unique<token_ids>(n);
  return *t;
}

// The benchmarked policies: SABlock (delimiter segments, window attention without pooling,
// independent heads) and ChunkKV (chunks of 20 as the torch path, shared heads).
kvevict::sablock<> sablock_policy(int n) {
  kvevict::sablock<> p;
  p.granularity.segmenter.delimiter_ids = ids_of(n).delims;
  p.granularity.segmenter.num_delimiters = 3;
  return p;
}
kvevict::signals<T> sablock_signals(const layer& L) {
  kvevict::signals<T> sig = L.sig;
  sig.token_ids = ids_of(L.n).ids;
  sig.token_ids_stride = L.n;
  return sig;
}
kvevict::chunkkv<> chunkkv_policy() {
  kvevict::chunkkv<> p;
  p.granularity.chunk = 20;
  return p;
}

// The device buffers of one `plan` / `evict` of policy `p` on layer `L`: workspace, plan, outputs.
struct call_buffers {
  std::size_t bytes = 0;
  int cap = 0;
  void* ws = nullptr;
  std::int32_t *pos = nullptr, *cnt = nullptr, *new_lens = nullptr, *freed = nullptr, *num = nullptr;
  kvevict::device_compact_result out{};
  template <class Policy>
  call_buffers(kvevict::cuda_t exec, const Policy& p, const layer& L, const kvevict::signals<T>& sig)
      : bytes(kvevict::evict_workspace_bytes(exec, p, L.cache, sig)), cap(kvevict::plan_capacity(exec, p, L.cache)) {
    ok(cudaMalloc(&ws, bytes));
    ok(cudaMalloc(&pos, sizeof(std::int32_t) * HKV * cap));
    ok(cudaMalloc(&cnt, sizeof(std::int32_t) * HKV));
    ok(cudaMalloc(&new_lens, sizeof(std::int32_t) * HKV));
    ok(cudaMalloc(&freed, sizeof(std::int32_t) * L.cache.num_pages()));
    ok(cudaMalloc(&num, sizeof(std::int32_t)));
    out = {new_lens, HKV, freed, L.cache.num_pages(), num};
  }
  call_buffers(const call_buffers&) = delete;
  call_buffers& operator=(const call_buffers&) = delete;
  ~call_buffers() {
    cudaFree(ws), cudaFree(pos), cudaFree(cnt), cudaFree(new_lens), cudaFree(freed), cudaFree(num);
  }
  kvevict::keep_plan plan() const { return {pos, cnt, cap, HKV}; }
};

// Plan (+ compact unless plan_only) of one layer with policy `p`.
template <class Policy>
void run_policy(benchmark::State& st, Policy p, layer& L, const kvevict::signals<T>& sig, bool plan_only) {
  p.selector.window = W;
  p.selector.budget.entries = static_cast<int>(st.range(1));
  const auto exec = kvevict::cuda;
  call_buffers b(exec, p, L, sig);
  auto once = [&] {
    const auto s = plan_only ? kvevict::plan(exec, p, L.cache, sig, b.plan(), b.ws, b.bytes)
                             : kvevict::evict(exec, p, L.cache, sig, b.plan(), b.out, b.ws, b.bytes);
    if (!s.ok()) st.SkipWithError(s.message().c_str());
  };
  once();
  const auto s = kvevict::device_status(exec, b.ws);
  if (!s.ok()) st.SkipWithError(s.message().c_str());
  timer t;
  for (auto _ : st) st.SetIterationTime(t.ms(once) / 1e3);
  st.counters["tokens"] = L.n;
  st.counters["budget"] = static_cast<double>(p.selector.budget.entries);
  st.counters["workspace_MiB"] = static_cast<double>(b.bytes) / (1 << 20);
  st.counters["floor_ms"] = floor_ms(L.n, plan_only ? 0 : p.selector.budget.entries, g_copy_tbs);
}

void BM_snapkv_evict(benchmark::State& st) {
  layer& L = layer_of(static_cast<int>(st.range(0)));
  run_policy(st, kvevict::snapkv<>{}, L, L.sig, st.range(2) != 0);
}

// SABlock and ChunkKV, plan + compact.
void BM_sablock_evict(benchmark::State& st) {
  layer& L = layer_of(static_cast<int>(st.range(0)));
  run_policy(st, sablock_policy(L.n), L, sablock_signals(L), false);
}
void BM_chunkkv_evict(benchmark::State& st) {
  layer& L = layer_of(static_cast<int>(st.range(0)));
  run_policy(st, chunkkv_policy(), L, L.sig, false);
}

// Ada-SnapKV (per-head budgets, cuda/adaptive.cuh), plan only: its heads keep different counts,
// which a block table shared by the heads cannot hold after a compaction.
void BM_ada_snapkv_plan(benchmark::State& st) {
  layer& L = layer_of(static_cast<int>(st.range(0)));
  run_policy(st, kvevict::ada_snapkv<>{}, L, L.sig, true);
}

// Compaction alone, every other token kept (50%): bytes moved (K and V, read + written).
void BM_compact_half(benchmark::State& st) {
  layer& L = layer_of(static_cast<int>(st.range(0)));
  const int kept = L.n / 2;
  std::vector<std::int32_t> hp(static_cast<std::size_t>(HKV) * kept), hc(HKV, kept);
  for (int h = 0; h < HKV; ++h)
    for (int j = 0; j < kept; ++j) hp[static_cast<std::size_t>(h) * kept + j] = 2 * j + 1;
  std::int32_t *pos, *cnt, *new_lens, *freed, *num;
  ok(cudaMalloc(&pos, sizeof(std::int32_t) * hp.size()));
  ok(cudaMalloc(&cnt, sizeof(std::int32_t) * HKV));
  ok(cudaMemcpy(pos, hp.data(), sizeof(std::int32_t) * hp.size(), cudaMemcpyHostToDevice));
  ok(cudaMemcpy(cnt, hc.data(), sizeof(std::int32_t) * HKV, cudaMemcpyHostToDevice));
  ok(cudaMalloc(&new_lens, sizeof(std::int32_t) * HKV));
  ok(cudaMalloc(&freed, sizeof(std::int32_t) * L.cache.num_pages()));
  ok(cudaMalloc(&num, sizeof(std::int32_t)));
  const auto exec = kvevict::cuda;
  const std::size_t bytes = kvevict::compact_workspace_bytes(exec, L.cache);
  void* ws;
  ok(cudaMalloc(&ws, bytes));
  kvevict::device_compact_result out{new_lens, HKV, freed, L.cache.num_pages(), num};
  auto once = [&] {
    const auto s = kvevict::compact(exec, L.cache, kvevict::const_keep_plan{pos, cnt, kept, HKV}, out, ws, bytes);
    if (!s.ok()) st.SkipWithError(s.message().c_str());
  };
  once();
  const auto s = kvevict::device_status(exec, ws);
  if (!s.ok()) st.SkipWithError(s.message().c_str());
  timer t;
  double total = 0;
  for (auto _ : st) {
    const double ms = t.ms(once);
    st.SetIterationTime(ms / 1e3);
    total += ms;
  }
  const double moved = 2.0 * 2.0 * kept * HKV * D * sizeof(T);  // K and V, read and written
  st.counters["TBps_rw"] = moved * st.iterations() / (total / 1e3) / 1e12;
  st.counters["of_copy"] = st.counters["TBps_rw"] / g_copy_tbs;
  st.counters["workspace_MiB"] = static_cast<double>(bytes) / (1 << 20);
  cudaFree(ws), cudaFree(pos), cudaFree(cnt), cudaFree(new_lens), cudaFree(freed), cudaFree(num);
}

// ---- stage profile (`--stages`): where the time of one evict goes ----
//
// No profiler is needed on the device machine: the call is captured into a CUDA graph (one
// stream, so its stream operations form a chain), and the graphs made of its first 1, 2, ... k
// operations are timed in turn (CUDA events, medians of 9 launches after a warm-up). Operation k
// costs t(k) - t(k-1): each prefix is a complete, consistent run of the stages before it, and the
// launch overhead common to all prefixes cancels.

// The kernel's name without namespaces, template arguments or parameters.
std::string op_name(cudaGraphNode_t node) {
  cudaGraphNodeType type;
  ok(cudaGraphNodeGetType(node, &type));
  if (type == cudaGraphNodeTypeMemset) return "memset";
  if (type == cudaGraphNodeTypeMemcpy) return "memcpy";
  if (type != cudaGraphNodeTypeKernel) return "other";
  cudaKernelNodeParams kp{};
  ok(cudaGraphKernelNodeGetParams(node, &kp));
  const char* mangled = nullptr;
  if (cudaFuncGetName(&mangled, kp.func) != cudaSuccess || mangled == nullptr) return "kernel";
  int rc = 0;
  char* dem = abi::__cxa_demangle(mangled, nullptr, nullptr, &rc);
  std::string name = rc == 0 && dem != nullptr ? dem : mangled;
  std::free(dem);
  const std::size_t cut = name.find_first_of("<(");
  if (cut != std::string::npos) name.resize(cut);
  const std::size_t ns = name.rfind("::");
  if (ns != std::string::npos) name = name.substr(ns + 2);
  const std::size_t sp = name.rfind(' ');
  return sp == std::string::npos ? name : name.substr(sp + 1);
}

// Times the prefixes of the graph captured from `call(stream)`; prints one JSON line per operation.
template <class F>
void profile_call(const char* policy, int tokens, cudaStream_t stream, F&& call) {
  cudaGraph_t graph;
  ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  call();
  ok(cudaStreamEndCapture(stream, &graph));
  std::vector<cudaGraphNode_t> chain;
  std::size_t n = 1;
  cudaGraphNode_t node;
  ok(cudaGraphGetRootNodes(graph, &node, &n));
  while (n == 1) {
    chain.push_back(node);
    std::size_t next = 0;
    ok(cudaGraphNodeGetDependentNodes(node, nullptr, nullptr, &next));
    if (next != 1) break;
    ok(cudaGraphNodeGetDependentNodes(node, &node, nullptr, &next));
  }
  std::size_t total = 0;
  ok(cudaGraphGetNodes(graph, nullptr, &total));
  if (chain.size() != total) {
    std::printf("{\"policy\": \"%s\", \"tokens\": %d, \"error\": \"not a chain of stream operations\"}\n", policy,
                tokens);
    cudaGraphDestroy(graph);
    return;
  }
  cudaEvent_t a, b;
  ok(cudaEventCreate(&a));
  ok(cudaEventCreate(&b));
  double before = 0.0;
  for (std::size_t k = 1; k <= chain.size(); ++k) {
    cudaGraph_t prefix;
    ok(cudaGraphClone(&prefix, graph));
    for (std::size_t j = k; j < chain.size(); ++j) {
      cudaGraphNode_t c;
      ok(cudaGraphNodeFindInClone(&c, chain[j], prefix));
      ok(cudaGraphDestroyNode(c));
    }
    cudaGraphExec_t exec;
    ok(cudaGraphInstantiate(&exec, prefix, 0));
    ok(cudaGraphLaunch(exec, stream));
    ok(cudaStreamSynchronize(stream));
    std::vector<float> ms(9);
    for (float& t : ms) {
      ok(cudaEventRecord(a, stream));
      ok(cudaGraphLaunch(exec, stream));
      ok(cudaEventRecord(b, stream));
      ok(cudaEventSynchronize(b));
      ok(cudaEventElapsedTime(&t, a, b));
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    std::printf("{\"policy\": \"%s\", \"tokens\": %d, \"op\": %zu, \"name\": \"%s\", \"prefix_ms\": %.4f, "
                "\"op_ms\": %.4f}\n",
                policy, tokens, k, op_name(chain[k - 1]).c_str(), med, med - before);
    before = med;
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(prefix);
  }
  std::fflush(stdout);
  cudaEventDestroy(a), cudaEventDestroy(b);
  cudaGraphDestroy(graph);
}

// evict of SnapKV, SABlock and ChunkKV at budget 1,024 on the benchmark's layers, stage by stage.
template <class Policy>
void profile_policy(const char* name, Policy p, layer& L, const kvevict::signals<T>& sig, cudaStream_t stream) {
  p.selector.window = W;
  p.selector.budget.entries = 1024;
  const auto exec = kvevict::cuda.on(stream);
  call_buffers b(exec, p, L, sig);
  auto call = [&] {
    const auto s = kvevict::evict(exec, p, L.cache, sig, b.plan(), b.out, b.ws, b.bytes);
    if (!s.ok()) std::fprintf(stderr, "%s: %s\n", name, s.message().c_str());
  };
  call();
  const auto s = kvevict::device_status(exec, b.ws);
  if (s.ok())
    profile_call(name, L.n, stream, call);
  else
    std::fprintf(stderr, "%s: %s\n", name, s.message().c_str());
}

int profile_stages() {
  cudaStream_t stream;
  ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int n : {8192, 32768, 131072}) {
    layer& L = layer_of(n);
    profile_policy("snapkv", kvevict::snapkv<>{}, L, L.sig, stream);
    L.reset();
    profile_policy("sablock", sablock_policy(n), L, sablock_signals(L), stream);
    L.reset();
    profile_policy("chunkkv", chunkkv_policy(), L, L.sig, stream);
  }
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace

BENCHMARK(BM_d2d_copy)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(20);
BENCHMARK(BM_snapkv_evict)
    ->ArgsProduct({{8192, 32768, 131072}, {1024}, {0, 1}})
    ->Args({131072, 96, 0})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Repetitions(5)
    ->ReportAggregatesOnly(true);
BENCHMARK(BM_sablock_evict)
    ->ArgsProduct({{8192, 32768, 131072}, {1024}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Repetitions(5)
    ->ReportAggregatesOnly(true);
BENCHMARK(BM_chunkkv_evict)
    ->ArgsProduct({{8192, 32768, 131072}, {1024}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Repetitions(5)
    ->ReportAggregatesOnly(true);
BENCHMARK(BM_ada_snapkv_plan)
    ->ArgsProduct({{8192, 32768, 131072}, {1024}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond)
    ->Repetitions(5)
    ->ReportAggregatesOnly(true);
BENCHMARK(BM_compact_half)->Arg(8192)->Arg(32768)->Arg(131072)->UseManualTime()->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  if (argc > 1 && std::string(argv[1]) == "--stages") return profile_stages();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

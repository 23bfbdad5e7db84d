// CUDA backend benchmarks (Google Benchmark, CUDA-event manual time, JSON with
// --benchmark_format=json): SnapKV, SABlock and ChunkKV plan + compact of one Llama-3-8B-like layer (32 query heads,
// 8 KV heads, head_dim 128, bf16, window 64, pooling 5, block table with 16-token pages) at 8K,
// 32K and 128K tokens, the plan alone, compaction alone at 50% kept, and a device-to-device copy
// of the same bytes (the bandwidth ceiling). Counters: workspace bytes (our extra memory), bytes
// moved, and the floor of docs/performance.md.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
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

// One sequence of n tokens in a vLLM block table, random bf16 K / V / queries, pages shuffled.
struct layer {
  int n;
  T *k = nullptr, *v = nullptr, *q = nullptr;
  std::int32_t *table = nullptr, *lens = nullptr;
  kvevict::block_table_cache<T> cache{};
  kvevict::signals<T> sig{};
  explicit layer(int tokens) : n(tokens) {
    const int pages = (n + PS - 1) / PS;
    const std::size_t elems = static_cast<std::size_t>(pages) * PS * HKV * D;
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<T> h(elems);
    for (auto& x : h) x = kvevict::from_float<T>(nd(rng));
    ok(cudaMalloc(&k, elems * sizeof(T)));
    ok(cudaMalloc(&v, elems * sizeof(T)));
    ok(cudaMemcpy(k, h.data(), elems * sizeof(T), cudaMemcpyHostToDevice));
    for (auto& x : h) x = kvevict::from_float<T>(nd(rng));
    ok(cudaMemcpy(v, h.data(), elems * sizeof(T), cudaMemcpyHostToDevice));
    std::vector<T> hq(static_cast<std::size_t>(HQ) * W * D);
    for (auto& x : hq) x = kvevict::from_float<T>(nd(rng));
    ok(cudaMalloc(&q, hq.size() * sizeof(T)));
    ok(cudaMemcpy(q, hq.data(), hq.size() * sizeof(T), cudaMemcpyHostToDevice));
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
  }
  ~layer() {
    cudaFree(k), cudaFree(v), cudaFree(q), cudaFree(table), cudaFree(lens);
  }
};

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

// Plan (+ compact unless plan_only) of one layer with policy `p`.
template <class Policy>
void run_policy(benchmark::State& st, Policy p, layer& L, bool plan_only) {
  p.selector.window = W;
  p.selector.budget.entries = static_cast<int>(st.range(1));
  const auto exec = kvevict::cuda;
  const std::size_t bytes = kvevict::evict_workspace_bytes(exec, p, L.cache, L.sig);
  const int cap = kvevict::plan_capacity(exec, p, L.cache);
  void* ws;
  std::int32_t *pos, *cnt, *new_lens, *freed, *num;
  ok(cudaMalloc(&ws, bytes));
  ok(cudaMalloc(&pos, sizeof(std::int32_t) * HKV * cap));
  ok(cudaMalloc(&cnt, sizeof(std::int32_t) * HKV));
  ok(cudaMalloc(&new_lens, sizeof(std::int32_t) * HKV));
  ok(cudaMalloc(&freed, sizeof(std::int32_t) * L.cache.num_pages()));
  ok(cudaMalloc(&num, sizeof(std::int32_t)));
  kvevict::device_compact_result out{new_lens, HKV, freed, L.cache.num_pages(), num};
  auto once = [&] {
    const auto s = plan_only ? kvevict::plan(exec, p, L.cache, L.sig, {pos, cnt, cap, HKV}, ws, bytes)
                             : kvevict::evict(exec, p, L.cache, L.sig, {pos, cnt, cap, HKV}, out, ws, bytes);
    if (!s.ok()) st.SkipWithError(s.message().c_str());
  };
  once();
  const auto s = kvevict::device_status(exec, ws);
  if (!s.ok()) st.SkipWithError(s.message().c_str());
  timer t;
  for (auto _ : st) st.SetIterationTime(t.ms(once) / 1e3);
  st.counters["tokens"] = L.n;
  st.counters["budget"] = static_cast<double>(p.selector.budget.entries);
  st.counters["workspace_MiB"] = static_cast<double>(bytes) / (1 << 20);
  st.counters["floor_ms"] = floor_ms(L.n, plan_only ? 0 : p.selector.budget.entries, g_copy_tbs);
  cudaFree(ws), cudaFree(pos), cudaFree(cnt), cudaFree(new_lens), cudaFree(freed), cudaFree(num);
}

void BM_snapkv_evict(benchmark::State& st) {
  layer L(static_cast<int>(st.range(0)));
  run_policy(st, kvevict::snapkv<>{}, L, st.range(2) != 0);
}

// SABlock (delimiter segments, window attention without pooling, independent heads) and ChunkKV
// (chunks of 20 as the torch path, shared heads), plan + compact.
void BM_sablock_evict(benchmark::State& st) {
  layer L(static_cast<int>(st.range(0)));
  token_ids ids(L.n);
  L.sig.token_ids = ids.ids;
  L.sig.token_ids_stride = L.n;
  kvevict::sablock<> p;
  p.granularity.segmenter.delimiter_ids = ids.delims;
  p.granularity.segmenter.num_delimiters = 3;
  run_policy(st, p, L, false);
}
void BM_chunkkv_evict(benchmark::State& st) {
  layer L(static_cast<int>(st.range(0)));
  kvevict::chunkkv<> p;
  p.granularity.chunk = 20;
  run_policy(st, p, L, false);
}

// Compaction alone, every other token kept (50%): bytes moved (K and V, read + written).
void BM_compact_half(benchmark::State& st) {
  layer L(static_cast<int>(st.range(0)));
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
BENCHMARK(BM_compact_half)->Arg(8192)->Arg(32768)->Arg(131072)->UseManualTime()->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

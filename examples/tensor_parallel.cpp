// Tensor parallelism: a layer's 8 KV heads split over 4 ranks (threads here; GPUs with NCCL in an
// engine). Each rank holds its heads' pages and query heads, scores its own heads, joins one
// all-gather of the scores (simulated: each rank copies its block into a shared array between two
// barriers; with NCCL it is one ncclAllGather of `kv_heads_per_rank * stride` floats per
// sequence), selects its own rows and compacts its own pages. Ada-KV's per-head budgets compete
// across every head of the layer, so without the gather a rank would plan a different cache.
//
// The example checks that every rank's rows equal the plan of one device holding all 8 heads, and
// exits non-zero otherwise.
#include <kvevict/kvevict.hpp>

#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

namespace {

void require(const kvevict::status& st, const char* what) {
  if (!st.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, st.message().c_str());
    std::exit(2);
  }
}

constexpr int ranks = 4, kv_heads = 8, group = 4, head_dim = 64, tokens = 1000, window = 16, budget = 128;
constexpr int heads_per_rank = kv_heads / ranks;

// One sequence, heads [h0, h0 + count) of a deterministic layer (the same values whichever rank
// builds them), in a (sequence, head)-row paged cache of one page per head: Ada-KV's heads keep
// different counts, which a shared page table cannot hold after compaction.
struct shard_data {
  std::vector<float> k, v, q;
  std::vector<std::int32_t> table, lens;
  shard_data(int h0, int count) : table(count), lens(count, tokens) {
    for (int h = 0; h < count; ++h) table[h] = h;
    k.resize(std::size_t(count) * tokens * head_dim);
    v.resize(k.size());
    q.resize(std::size_t(count) * group * window * head_dim);
    for (int h = 0; h < count; ++h) {
      std::mt19937 rng(1000 + h0 + h);  // per global head
      std::normal_distribution<float> nd;
      for (int i = 0; i < tokens * head_dim; ++i) {
        k[std::size_t(h) * tokens * head_dim + i] = nd(rng);
        v[std::size_t(h) * tokens * head_dim + i] = nd(rng);
      }
      for (int i = 0; i < group * window * head_dim; ++i) q[std::size_t(h) * group * window * head_dim + i] = 2 * nd(rng);
    }
  }
  kvevict::head_row_table_cache<float> view(int count) {
    return {k.data(), v.data(), table.data(), lens.data(), 1, 1, count, tokens, count, head_dim};
  }
  kvevict::signals<float> sig(int count) const {
    kvevict::signals<float> s;
    s.queries = q.data();
    s.num_q_heads = count * group;
    return s;
  }
};

}  // namespace

int main() {
  kvevict::ada_snapkv<> policy;
  policy.selector = {4, window, kvevict::adaptive_budget{budget}};

  // The reference: one device with every head.
  shard_data all(0, kv_heads);
  auto all_view = all.view(kv_heads);
  auto reference = kvevict::keep_plan_buffer::for_cache(policy, all_view, all.sig(kv_heads));
  require(kvevict::plan(kvevict::host, policy, all_view, all.sig(kv_heads), reference.view()), "plan");

  std::vector<float> gathered(std::size_t(kv_heads) * tokens);  // the all-gather's receive buffer
  const std::vector<std::int32_t> all_lens(kv_heads, tokens);     // every head's length (known to every rank)
  std::barrier sync(ranks);
  std::vector<int> mismatched(ranks, 0), kept(ranks, 0);
  auto rank_main = [&](int rank) {
    shard_data mine(rank * heads_per_rank, heads_per_rank);
    auto view = mine.view(heads_per_rank);
    const auto sig = mine.sig(heads_per_rank);
    const auto exec = kvevict::host.threads(1);  // the engine's rank owns its thread
    std::vector<float> scores(std::size_t(heads_per_rank) * tokens);
    require(kvevict::score(exec, policy, view, sig, scores.data(), tokens), "score");
    std::memcpy(&gathered[std::size_t(rank) * heads_per_rank * tokens], scores.data(), sizeof(float) * scores.size());
    sync.arrive_and_wait();  // the all-gather completes
    const kvevict::head_shard shard{rank * heads_per_rank, kv_heads, all_lens.data()};
    kvevict::keep_plan_buffer plan(kvevict::plan_rows(view), kvevict::select_capacity(policy, view, sig, shard));
    require(kvevict::select(exec, policy, view, sig, shard, gathered.data(), tokens, plan.view()), "select");
    for (int h = 0; h < heads_per_rank; ++h) {
      const int g = rank * heads_per_rank + h;
      mismatched[rank] += plan.counts[h] != reference.counts[g] ||
                          std::memcmp(plan.view().row(h), reference.view().row(g), sizeof(int) * plan.counts[h]) != 0;
      kept[rank] += plan.counts[h];
    }
    // Each rank compacts its own heads' pages in place.
    auto out = kvevict::compact_result_buffer::for_cache(view);
    require(kvevict::compact(exec, view, plan.const_view(), out.result), "compact");
    sync.arrive_and_wait();
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) threads.emplace_back(rank_main, r);
  for (auto& t : threads) t.join();

  int bad = 0;
  for (int r = 0; r < ranks; ++r) {
    std::printf("rank %d: heads %d-%d keep %d tokens in all, %s the single-device plan\n", r, r * heads_per_rank,
                (r + 1) * heads_per_rank - 1, kept[r], mismatched[r] ? "DIFFERS FROM" : "equal to");
    bad += mismatched[r];
  }
  return bad == 0 ? 0 : 1;
}

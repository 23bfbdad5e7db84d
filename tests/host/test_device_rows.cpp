// The row selection the CUDA kernels run on a whole block of threads (cuda/blocks.cuh), emulated
// on the host from the same pieces. Segmentation: the pieces (segment/segmenters.hpp: blocked_share, merge_successor,
// merge_jump_step, merge_short_last, split_pieces, split_cut) and compared with the host's
// sequential merge_and_split. The emulation runs every parallel phase's indices in a random order
// (a block's threads may run them in any), and its ordered writes as the kernels make them: one
// count per thread's contiguous share, an exclusive scan of the counts, the writes in each share.
// SABlock: the kernel's bisection (every step evaluates every sentence below its price bound, in
// parallel, no certificate) against the host's sablock_select.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include <kvevict/detail/radix_select.hpp>
#include <kvevict/detail/sablock_core.hpp>
#include <kvevict/host/block_select.hpp>
#include <kvevict/segment/segmenters.hpp>

namespace {

using kvevict::detail::blocked_share;

//! `enumerate_weighted` of cuda/blocks.cuh with `threads` threads.
template <class Weight, class Visit>
int enumerate_weighted(int m, int threads, Weight weight, Visit visit) {
  std::vector<int> sums(threads, 0), at(threads, 0);
  for (int t = 0; t < threads; ++t) {
    const auto sh = blocked_share(m, threads, t);
    for (int i = sh.begin; i < sh.end; ++i) sums[t] += weight(i);
  }
  std::exclusive_scan(sums.begin(), sums.end(), at.begin(), 0);
  for (int t = threads - 1; t >= 0; --t) {  // shares in any order
    const auto sh = blocked_share(m, threads, t);
    int k = at[t];
    for (int i = sh.begin; i < sh.end; ++i)
      if (const int w = weight(i); w > 0) {
        visit(i, k);
        k += w;
      }
  }
  return std::accumulate(sums.begin(), sums.end(), 0);
}

//! `enumerate_flagged` of cuda/blocks.cuh with `threads` threads.
template <class Flag, class Visit>
int enumerate_flagged(int m, int threads, Flag flag, Visit visit) {
  return enumerate_weighted(m, threads, [&](int i) { return flag(i) ? 1 : 0; }, visit);
}

//! `radix_threshold` of cuda/blocks.cuh: 8-bit digits of 64-bit keys from the top, histograms of
//! the weights (indices visited in a random order, as the block's atomics land), pick_digit.
template <class Key, class Weight>
std::uint64_t radix_threshold(int m, Key key, Weight weight, int& krem, std::mt19937& rng) {
  std::vector<int> order(m);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::uint64_t prefix = 0, mask = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    unsigned hist[256] = {};
    for (int t : order) {
      const int w = weight(t);
      if (w <= 0) continue;
      const std::uint64_t k = key(t);
      if ((k & mask) == prefix) hist[(k >> shift) & 255u] += static_cast<unsigned>(w);
    }
    const int digit = kvevict::detail::pick_digit(hist, krem);
    prefix |= static_cast<std::uint64_t>(digit) << shift;
    mask |= 255ull << shift;
  }
  return prefix;
}

std::vector<int> shuffled(int n, std::mt19937& rng) {
  std::vector<int> p(n);
  std::iota(p.begin(), p.end(), 0);
  std::shuffle(p.begin(), p.end(), rng);
  return p;
}

//! `merge_and_split_block` of cuda/blocks.cuh: raw ends off[0..count] in, the ends out.
std::vector<std::int32_t> merge_and_split_block(std::vector<std::int32_t> off, int count, int min_len, int max_len,
                                                int threads, std::mt19937& rng, int* rounds) {
  std::vector<std::int32_t> ja(count), jb(count), merged(count + 1, -1);
  std::vector<unsigned char> mark(count);
  for (int i : shuffled(count, rng)) {
    ja[i] = kvevict::detail::merge_successor(off.data(), count, min_len, i);
    mark[i] = i == 0;
  }
  *rounds = 0;
  while (ja[0] != count) {
    for (int i : shuffled(count, rng)) kvevict::detail::merge_jump_step(ja.data(), jb.data(), mark.data(), count, i);
    std::swap(ja, jb);
    ++*rounds;
  }
  int mm = enumerate_flagged(
      count, threads, [&](int i) { return mark[i] != 0; }, [&](int i, int k) { merged[k] = off[i]; });
  merged[mm] = off[count];
  mm = kvevict::detail::merge_short_last(merged.data(), mm, min_len);
  std::vector<int> pieces(threads, 0), at(threads, 0);
  for (int t = 0; t < threads; ++t) {
    const auto sh = blocked_share(mm, threads, t);
    for (int i = sh.begin; i < sh.end; ++i)
      pieces[t] += static_cast<int>(kvevict::detail::split_pieces(merged[i + 1] - merged[i], max_len));
  }
  std::exclusive_scan(pieces.begin(), pieces.end(), at.begin(), 0);
  const int total = std::accumulate(pieces.begin(), pieces.end(), 0);
  std::vector<std::int32_t> out(total + 1, -1);
  for (int t : shuffled(threads, rng)) {
    const auto sh = blocked_share(mm, threads, t);
    int k = at[t];
    for (int i = sh.begin; i < sh.end; ++i) {
      const std::int64_t start = merged[i], n = merged[i + 1] - merged[i];
      const std::int64_t p = kvevict::detail::split_pieces(n, max_len);
      for (std::int64_t j = 0; j < p; ++j) out[k++] = kvevict::detail::split_cut(start, n, p, j);
    }
  }
  out[total] = merged[mm];
  return out;
}

std::vector<std::int32_t> host_merge_and_split(const std::vector<std::int32_t>& raw, int count, int m, int min_len,
                                               int max_len) {
  std::vector<std::int32_t> off(2 * static_cast<std::size_t>(m) + 1, -1);
  std::copy(raw.begin(), raw.end(), off.begin());
  const int c = kvevict::detail::merge_and_split(off.data(), count, min_len, max_len);
  off.resize(c + 1);
  return off;
}

}  // namespace

TEST_CASE("device segmentation: blocked shares are contiguous, in order, and cover the range", "[segment][cuda]") {
  for (int threads : {1, 2, 3, 7, 32, 512})
    for (int m = 0; m <= 1100; m += m < 40 ? 1 : 97) {
      int next = 0, lo = m, hi = 0;
      for (int t = 0; t < threads; ++t) {
        const auto sh = blocked_share(m, threads, t);
        REQUIRE(sh.begin == next);
        REQUIRE(sh.end >= sh.begin);
        lo = std::min(lo, sh.end - sh.begin);
        hi = std::max(hi, sh.end - sh.begin);
        next = sh.end;
      }
      REQUIRE(next == m);
      REQUIRE(hi - lo <= 1);
    }
}

TEST_CASE("device segmentation: the block's merge and split equal the host's merge_and_split", "[segment][cuda]") {
  std::mt19937 rng(20261129);
  int cases = 0, max_rounds = 0;
  for (int rep = 0; rep < 3000; ++rep) {
    const int m = 1 + static_cast<int>(rng() % (rep % 10 == 0 ? 5000 : 300));
    // Raw ends: 0 < cuts < m, strictly increasing, at a random density (every token a cut too).
    const int density = 1 + static_cast<int>(rng() % 20);
    std::vector<std::int32_t> raw = {0};
    for (int t = 1; t < m; ++t)
      if (density == 1 || static_cast<int>(rng() % density) == 0) raw.push_back(t);
    raw.push_back(m);
    const int count = static_cast<int>(raw.size()) - 1;
    const int min_len = 1 + static_cast<int>(rng() % (rep % 3 == 0 ? 3 : 40));
    const int max_len = rep % 7 == 0 ? kvevict::no_max_len : 1 + static_cast<int>(rng() % 80);
    const int threads = std::vector<int>{1, 3, 32, 512}[rng() % 4];
    int rounds = 0;
    const auto got = merge_and_split_block(raw, count, min_len, max_len, threads, rng, &rounds);
    const auto want = host_merge_and_split(raw, count, m, min_len, max_len);
    REQUIRE(got == want);
    max_rounds = std::max(max_rounds, rounds);
    ++cases;
  }
  CHECK(cases == 3000);
  CHECK(max_rounds >= 10);  // long chains were among the cases (every end kept: 2^10 ends and more)
}

TEST_CASE("device segmentation: delimiter cuts, merged and split on a block, equal the host segmenter's",
          "[segment][cuda]") {
  std::mt19937 rng(7);
  const std::vector<std::int32_t> delims = {1, 2, 3};
  kvevict::delimiter_segmenter seg;
  seg.delimiter_ids = delims.data();
  seg.num_delimiters = 3;
  for (int rep = 0; rep < 500; ++rep) {
    const int n = 1 + static_cast<int>(rng() % 2000);
    std::vector<std::int32_t> ids(n);
    for (auto& x : ids) x = rng() % 9 == 0 ? 1 + static_cast<int>(rng() % 3) : 4 + static_cast<int>(rng() % 50);
    const int lo = static_cast<int>(rng() % n), hi = lo + 1 + static_cast<int>(rng() % (n - lo));
    seg.min_len = 1 + static_cast<int>(rng() % 8);
    seg.max_len = 1 + static_cast<int>(rng() % 100);
    std::vector<std::int32_t> want(2 * static_cast<std::size_t>(hi - lo) + 1);
    const int c = seg.segment_ids(ids.data(), lo, hi, want.data());
    want.resize(c + 1);
    for (auto& x : want) x -= lo;  // the kernels' ends are relative to lo
    // device_segmenter<delimiter_segmenter>::cuts, then the block's merge and split
    const int m = hi - lo, threads = 512;
    std::vector<std::int32_t> off(m + 1, -1);
    const int k = enumerate_flagged(
        m - 1, threads, [&](int t) { return seg.is_delimiter(ids[lo + t]); }, [&](int t, int j) { off[1 + j] = t + 1; });
    off[0] = 0;
    off[k + 1] = m;
    off.resize(k + 2);
    int rounds = 0;
    REQUIRE(merge_and_split_block(off, k + 1, seg.min_len, seg.max_len, threads, rng, &rounds) == want);
  }
}

namespace {

//! `row_stages::mark_sablock` of cuda/blocks.cuh and the fill after it, sentence by sentence (the
//! kernel's threads each take whole sentences; every sum stays inside one). `use_bounds` as the
//! kernel decides from the scratch it has. Returns the kept positions relative to lo.
std::vector<int> device_sablock(const std::vector<double>& a, int lo, int hi, const std::vector<std::int32_t>& off_abs,
                                int count, const std::int32_t* sent, int num_sentences, int bc,
                                const kvevict::host_backend::sablock_params& prm, bool use_bounds,
                                bool use_live = false, long long* evaluations = nullptr) {
  namespace d = kvevict::detail;
  const int m = hi - lo, S = sent ? num_sentences : count;
  std::vector<std::int32_t> off(count + 1);
  for (int u = 0; u <= count; ++u) off[u] = off_abs[u] - lo;  // the kernel's ends are relative to lo
  std::vector<double> r(a.begin() + lo, a.begin() + hi), prefix(m);
  auto first = [&](int k) { return sent ? sent[k] : k; };
  double rmax = -DBL_MAX;
  for (int k = S - 1; k >= 0; --k) {  // sentences in any order
    d::refine_sentence(r.data(), prefix.data(), off.data(), 0, first(k), first(k + 1), prm.alpha, prm.beta);
    for (int t = off[first(k)]; t < off[first(k + 1)]; ++t) rmax = std::max(rmax, r[t]);
  }
  // The kernel's total: its threads add the runs of clauses in any order into a tile, then one
  // thread adds the run sums in run order.
  const int run = d::clause_run(count), runs = (count + run - 1) / run;
  std::vector<double> run_sum(runs);
  for (int q = runs - 1; q >= 0; --q)
    run_sum[q] = d::clause_run_total(prefix.data(), off.data(), 0, q * run, std::min(count, q * run + run));
  double rsum = 0;
  for (int q = 0; q < runs; ++q) rsum = d::add_rn(rsum, run_sum[q]);
  const double gamma = d::mul_rn(prm.g, rsum / m);
  std::vector<double> bound, clause_bound;
  if (use_bounds) {
    clause_bound.resize(count);
    for (int u = 0; u < count; ++u)
      clause_bound[u] = d::clause_price_bound(prefix.data(), off[u], off[u + 1] - off[u], gamma, prm.max_candidates);
    bound = clause_bound;
    if (sent) {
      bound.resize(S);
      for (int k = 0; k < S; ++k)
        bound[k] = d::sentence_price_bound(prefix.data(), off.data(), 0, first(k), first(k + 1), gamma,
                                           prm.max_candidates, prm.sentence_blocks, clause_bound.data());
    }
  }
  const double* skip = sent && use_bounds ? clause_bound.data() : nullptr;
  std::vector<unsigned char> keep(m, 0);
  // The live set (with bounds, where the kernel has room): its threads evaluate the live sentences in
  // any order (here from the last), then settle them and compact the list in order.
  const bool live_set = use_bounds && use_live;
  std::vector<int> live(S);
  std::iota(live.begin(), live.end(), 0);
  std::vector<d::sablock_summary> sides(3 * static_cast<std::size_t>(S));
  d::sablock_summary *at_lo = sides.data(), *at_hi = at_lo + S, *at_mid = at_hi + S;
  long long left_cost = 0;
  auto cost_at = [&](double lam, unsigned char* mark) {
    long long total = 0;
    if (live_set && !mark) {
      for (auto i = live.rbegin(); i != live.rend(); ++i) {
        if (lam >= bound[*i]) continue;
        d::sablock_probe pr;
        const long long c = d::sentence_cost(prefix.data(), off.data(), 0, first(*i), first(*i + 1), lam, gamma,
                                             prm.max_candidates, prm.sentence_blocks, nullptr, skip, &pr);
        at_mid[*i] = d::summarize(pr, c);
        total += c;
        if (evaluations) ++*evaluations;
      }
      return total + left_cost;
    }
    for (int k = 0; k < S; ++k)
      if (!use_bounds || lam < bound[k]) {
        total += d::sentence_cost(prefix.data(), off.data(), 0, first(k), first(k + 1), lam, gamma, prm.max_candidates,
                                  prm.sentence_blocks, mark, skip);
        if (evaluations && !mark) ++*evaluations;
      }
    return total;
  };
  double lam_lo = 0.0, lam_hi = d::add_rn(rmax, gamma);
  for (int grow = 0; grow < d::sablock_max_grow; ++grow) {
    if (cost_at(lam_hi, nullptr) <= bc) break;
    lam_hi = d::sablock_grow(lam_hi);
  }
  std::swap(at_hi, at_mid);
  for (int it = 0; it < prm.steps; ++it) {
    const double mid = 0.5 * (lam_lo + lam_hi);
    const bool over = cost_at(mid, nullptr) > bc;
    (over ? lam_lo : lam_hi) = mid;
    std::swap(over ? at_lo : at_hi, at_mid);
    if (!live_set) continue;
    std::vector<int> next;
    for (int k : live) {
      const int fixed = d::sablock_settled(lam_lo, lam_hi, bound[k], at_lo[k], at_hi[k]);
      if (fixed < 0)
        next.push_back(k);
      else
        left_cost += fixed;
    }
    live.swap(next);
  }
  const long long kept = cost_at(lam_hi, keep.data());
  // The fill: the best unmarked refined scores, ties to the lower position.
  std::vector<int> rest;
  for (int t = 0; t < m; ++t)
    if (!keep[t]) rest.push_back(t);
  std::sort(rest.begin(), rest.end(), [&](int x, int y) {
    const std::uint64_t kx = d::order_key64(r[x]), ky = d::order_key64(r[y]);
    return kx > ky || (kx == ky && x < y);
  });
  const int need = bc - static_cast<int>(std::min<long long>(kept, bc));
  for (int i = 0; i < need; ++i) keep[rest[i]] = 1;
  std::vector<int> out;
  for (int t = 0; t < m; ++t)
    if (keep[t]) out.push_back(t);
  return out;
}

}  // namespace

TEST_CASE("device SABlock: the kernel's bisection, with and without price bounds, equals sablock_select",
          "[sablock][cuda]") {
  const std::vector<std::int32_t> delims = {1, 2, 3}, ends = {1};
  std::mt19937 rng(29);
  std::uniform_real_distribution<double> u(0, 1);
  int not_top_k = 0;
  long long all_evaluations = 0, live_evaluations = 0;
  for (int trial = 0; trial < 240; ++trial) {
    const int n = 40 + static_cast<int>(rng() % 600), lo = 4, hi = n - 16, kind = trial % 5;
    std::vector<std::int32_t> ids(n);
    const double rate = 0.05 + 0.15 * u(rng);
    for (auto& x : ids) x = u(rng) < rate ? 1 + static_cast<int>(rng() % 3) : 4 + static_cast<int>(rng() % 37);
    std::vector<double> a(n);
    for (auto& x : a) {
      const double v = u(rng);
      x = kind == 0 ? v * v : kind == 1 ? static_cast<double>(rng() % 4) : kind == 2 ? v - 0.5 : kind == 3 ? 1e-300 * v
                                                                                                 : std::pow(v, 8) * (v > 0.97 ? 50 : 1);
    }
    const bool two = trial % 3 != 0;
    kvevict::host_backend::sablock_params prm;
    prm.alpha = (trial % 4) * 0.2;
    prm.beta = two ? (trial % 3) * 0.15 : 0.0;
    prm.g = (trial % 6) * 0.8;
    prm.sentence_blocks = trial % 4 != 3;
    prm.max_candidates = trial % 7 == 6 ? 4 : 0;
    const int bc = 1 + static_cast<int>(rng() % static_cast<unsigned>(hi - lo - 1));
    kvevict::delimiter_segmenter seg{delims.data(), 3};
    seg.sentence_ids = ends.data();
    seg.num_sentence_ids = 1;
    seg.sentence_max_len = 30 + trial % 50;
    std::vector<std::int32_t> off(2 * n + 4), sent(n + 2), raw(n);
    int num_sentences = -1;
    const int count = two ? seg.segment_levels_ids(ids.data(), lo, hi, off.data(), sent.data(), &num_sentences, raw.data())
                          : seg.segment_ids(ids.data(), lo, hi, off.data());
    const std::int32_t* sp = two ? sent.data() : nullptr;
    std::vector<unsigned char> keep(hi - lo);
    std::vector<double> r(hi - lo + 1), prefix(hi - lo + 1), bound(kvevict::host_backend::sablock_bound_doubles(hi - lo));
    std::vector<std::int32_t> idx(hi - lo);
    kvevict::host_backend::sablock_select(a.data(), lo, hi, off.data(), count, sp, num_sentences, bc, prm, keep.data(),
                                          r.data(), prefix.data(), idx.data(), bound.data());
    std::vector<int> want;
    for (int t = 0; t < hi - lo; ++t)
      if (keep[t]) want.push_back(t);
    INFO("trial " << trial << " kind " << kind << " n " << n << " bc " << bc << " two " << two);
    REQUIRE(static_cast<int>(want.size()) == bc);
    REQUIRE(device_sablock(a, lo, hi, off, count, sp, num_sentences, bc, prm, true) == want);
    REQUIRE(device_sablock(a, lo, hi, off, count, sp, num_sentences, bc, prm, false) == want);
    REQUIRE(device_sablock(a, lo, hi, off, count, sp, num_sentences, bc, prm, true, false, &all_evaluations) == want);
    REQUIRE(device_sablock(a, lo, hi, off, count, sp, num_sentences, bc, prm, true, true, &live_evaluations) == want);
    std::vector<int> order(hi - lo);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int x, int y) { return a[lo + x] > a[lo + y] || (a[lo + x] == a[lo + y] && x < y); });
    order.resize(bc);
    std::sort(order.begin(), order.end());
    not_top_k += order != want;
  }
  CHECK(not_top_k > 150);  // the blocks matter: most plans are not the token top-k
  // The live set takes certified sentences out: far fewer evaluations than with the bounds alone.
  INFO("evaluations with bounds " << all_evaluations << ", with the live set " << live_evaluations);
  CHECK(live_evaluations * 4 < all_evaluations * 3);
}

TEST_CASE("device SABlock: the live set's room in the row's idx scratch", "[sablock][cuda]") {
  namespace d = kvevict::detail;
  // One level: bounds take 2 count ints of 2 m; 14 ints per sentence (= clause) above them.
  CHECK(d::sablock_live_room(800, 100, 100, false) == 200);
  CHECK(d::sablock_live_room(800, 101, 101, false) == -1);  // 202 + 1414 > 1600
  // Two levels: the sentences take S + 1 ints from m - 1; the room starts after them.
  CHECK(d::sablock_live_room(800, 300, 50, true) == 850);
  CHECK(d::sablock_live_room(800, 300, 53, true) == 853);    // 747 >= 742
  CHECK(d::sablock_live_room(800, 300, 54, true) == -1);     // 746 < 756
}

TEST_CASE("device units: the radix select weighted by length, its ties, the greedy after it and the fill equal "
          "select_units_then_fill",
          "[chunkkv][sentencekv][cuda]") {
  // `row_stages::mark_units` then `fill_best_unmarked` of cuda/blocks.cuh, step by step, on rows of
  // scores with many tied unit means (small integer scores, -0 and +0) and on rows of random ones.
  namespace d = kvevict::detail;
  std::mt19937 rng(5);
  int skipped_then_taken = 0, tied_overflow = 0, filled = 0;
  for (int rep = 0; rep < 3000; ++rep) {
    const int count = 1 + static_cast<int>(rng() % 300), threads = std::vector<int>{1, 3, 32, 512}[rng() % 4];
    const int maxlen = 1 + static_cast<int>(rng() % (rep % 2 ? 8 : 70));
    std::vector<std::int32_t> off(count + 1, 0);
    for (int u = 0; u < count; ++u) {
      const bool equal = rep % 5 == 0 && u + 1 < count;  // ChunkKV: equal units, the last one shorter
      off[u + 1] = off[u] + (equal ? maxlen : 1 + static_cast<int>(rng() % maxlen));
    }
    const int m = off[count];
    if (m < 2) continue;
    const int bc = 1 + static_cast<int>(rng() % (m - 1));  // the kernel's case: 0 < bc < m
    std::vector<double> a(m);
    const bool ties = rep % 3 != 2;
    for (auto& x : a) {
      const int r = static_cast<int>(rng() % 5);
      x = ties ? (r == 4 ? -0.0 : r - 1.0) : std::ldexp(static_cast<double>(rng() % 100000) - 50000.0, -7);
    }
    // The host.
    std::vector<unsigned char> want(m, 0);
    std::vector<std::int32_t> order(count), idx(m);
    std::vector<double> means(count);
    kvevict::host_backend::select_units_then_fill(a.data(), 0, m, off.data(), count, bc, want.data(), order.data(),
                                                  idx.data(), means.data());
    // The block, emulated.
    std::vector<std::uint64_t> key(count);
    for (int u = 0; u < count; ++u) {
      const double mean = d::segment_mean(a.data(), off[u], off[u + 1] - off[u]);
      key[u] = d::order_key64(mean == 0.0 ? 0.0 : mean);
    }
    auto len = [&](int u) { return off[u + 1] - off[u]; };
    int krem = bc + 1;
    const std::uint64_t thr = radix_threshold(count, [&](int u) { return key[u]; }, len, krem, rng);
    int over = -1, left = -1, at_thr = 0;
    enumerate_weighted(count, threads, [&](int u) { return key[u] == thr ? len(u) : 0; },
                       [&](int u, int before) {
                         ++at_thr;
                         if (before < krem && before + len(u) >= krem) {
                           REQUIRE(over == -1);  // exactly one unit
                           over = u;
                           left = krem - 1 - before;
                         }
                       });
    REQUIRE(over >= 0);
    tied_overflow += at_thr > 1;
    std::vector<unsigned char> taken(count, 0);
    for (int u = 0; u < count; ++u) taken[u] = key[u] > thr || (key[u] == thr && u < over);
    // unit_rank of cuda/blocks.cuh: (rank key, unit), ordered by key descending, ties to the earlier unit.
    struct rank {
      std::uint64_t key;
      int u;
    };
    auto before = [](rank x, rank y) { return x.key > y.key || (x.key == y.key && x.u < y.u); };
    rank prev{thr, over};
    while (left > 0) {
      rank best{0, count};  // each thread's best (strided) unit after prev that still fits, then the block's
      for (int t = 0; t < threads; ++t) {
        rank mine{0, count};
        for (int u = t; u < count; u += threads)
          if (before(prev, rank{key[u], u}) && len(u) <= left && before(rank{key[u], u}, mine)) mine = rank{key[u], u};
        if (before(mine, best)) best = mine;
      }
      if (best.key == 0) break;
      taken[best.u] = 1;
      left -= len(best.u);
      prev = best;
      ++skipped_then_taken;
    }
    std::vector<unsigned char> keep(m, 0);
    for (int u = 0; u < count; ++u)
      if (taken[u])
        for (int t = off[u]; t < off[u + 1]; ++t) keep[t] = 1;
    if (left > 0) {  // fill_best_unmarked
      ++filled;
      int fk = left;
      const std::uint64_t ft = radix_threshold(
          m, [&](int t) { return d::order_key64(a[t]); }, [&](int t) { return keep[t] ? 0 : 1; }, fk, rng);
      enumerate_flagged(
          m, threads, [&](int t) { return !keep[t] && d::order_key64(a[t]) == ft; },
          [&](int t, int rank) {
            if (rank < fk) keep[t] = 1;
          });
      for (int t = 0; t < m; ++t)
        if (d::order_key64(a[t]) > ft) keep[t] = 1;
    }
    INFO("rep " << rep << " count " << count << " m " << m << " bc " << bc << " threads " << threads);
    REQUIRE(keep == want);
    REQUIRE(std::count(keep.begin(), keep.end(), 1) == bc);
  }
  CHECK(skipped_then_taken > 500);  // units after the first that overflowed were taken
  CHECK(tied_overflow > 500);       // the overflowing unit was among several at its key
  CHECK(filled > 500);
}

TEST_CASE("device segmentation: two levels (sentences of clauses) on a block equal the host's two_level_segments",
          "[segment][sablock][cuda]") {
  // device_segmenter<delimiter_segmenter>::segment with sentence ids, step by step.
  std::mt19937 rng(13);
  const std::vector<std::int32_t> delims = {1, 2, 3}, ends = {1, 2};
  kvevict::delimiter_segmenter seg;
  seg.delimiter_ids = delims.data();
  seg.num_delimiters = 3;
  seg.sentence_ids = ends.data();
  seg.num_sentence_ids = rng() % 2 ? 1 : 2;
  int multi_clause = 0;
  for (int rep = 0; rep < 600; ++rep) {
    const int n = 2 + static_cast<int>(rng() % (rep % 10 == 0 ? 4000 : 600));
    std::vector<std::int32_t> ids(n);
    const int rate = 2 + static_cast<int>(rng() % 12);
    for (auto& x : ids) x = static_cast<int>(rng() % rate) == 0 ? 1 + static_cast<int>(rng() % 3) : 4 + static_cast<int>(rng() % 50);
    const int lo = static_cast<int>(rng() % (n / 2 + 1)), hi = lo + 1 + static_cast<int>(rng() % (n - lo));
    seg.min_len = 1 + static_cast<int>(rng() % 6);
    seg.max_len = rep % 9 == 0 ? kvevict::no_max_len : 1 + static_cast<int>(rng() % 40);
    seg.sentence_min_len = 1 + static_cast<int>(rng() % 10);
    seg.sentence_max_len = 1 + static_cast<int>(rng() % 120);
    seg.num_sentence_ids = 1 + static_cast<int>(rng() % 2);
    const int m = hi - lo;
    // The host.
    std::vector<std::int32_t> want_off(m + 1), want_sent(m + 1), raw_h(m);
    int want_s = -1;
    const int want_c =
        seg.segment_levels_ids(ids.data(), lo, hi, want_off.data(), want_sent.data(), &want_s, raw_h.data());
    for (int i = 0; i <= want_c; ++i) want_off[i] -= lo;
    // The block, emulated: raw cuts, sentence ends among them, the sentences merged and split.
    const int threads = std::vector<int>{1, 7, 512}[rng() % 3];
    std::vector<std::int32_t> raw(m), sent(m + 1, -1), spare(2 * static_cast<std::size_t>(m), -1), off(m + 1, -1);
    const int k = enumerate_flagged(
        m - 1, threads, [&](int t) { return seg.is_delimiter(ids[lo + t]); }, [&](int t, int j) { raw[j] = t + 1; });
    const kvevict::delimiter_segmenter::sentence_cut ends_sentence{&seg, ids.data(), lo};
    const int e = enumerate_flagged(
        k, threads, [&](int i) { return ends_sentence(raw[i]); }, [&](int i, int j) { sent[1 + j] = raw[i]; });
    sent[0] = 0;
    sent[e + 1] = m;
    int rounds = 0;
    const std::vector<std::int32_t> merged = merge_and_split_block(
        std::vector<std::int32_t>(sent.begin(), sent.begin() + e + 2), e + 1, seg.sentence_min_len,
        seg.sentence_max_len, threads, rng, &rounds);
    const int S = static_cast<int>(merged.size()) - 1;
    std::copy(merged.begin(), merged.end(), sent.begin());
    // Each thread its share of sentences: clauses in the sentence's region, then written in order.
    auto region = [&](int q) { return spare.data() + sent[q] + q; };
    std::vector<int> mine(threads, 0), at(threads, 0);
    for (int t : shuffled(threads, rng)) {
      const auto sh = blocked_share(S, threads, t);
      for (int q = sh.begin; q < sh.end; ++q)
        mine[t] += kvevict::detail::sentence_clauses(raw.data(), k, sent[q], sent[q + 1], seg.min_len, seg.max_len,
                                                     region(q));
    }
    std::exclusive_scan(mine.begin(), mine.end(), at.begin(), 0);
    const int total = std::accumulate(mine.begin(), mine.end(), 0);
    for (int t : shuffled(threads, rng)) {
      const auto sh = blocked_share(S, threads, t);
      int a = at[t];
      for (int q = sh.begin; q < sh.end; ++q)
        for (const std::int32_t *r = region(q), end = sent[q + 1]; *r != end; ++r) off[a++] = *r;
    }
    off[total] = m;
    for (int q = 0; q < S; ++q)
      sent[q] = static_cast<int>(std::lower_bound(off.begin(), off.begin() + total, sent[q]) - off.begin());
    sent[S] = total;
    INFO("rep " << rep << " m " << m << " threads " << threads);
    REQUIRE(S == want_s);
    REQUIRE(total == want_c);
    REQUIRE(std::vector<std::int32_t>(off.begin(), off.begin() + total + 1) ==
            std::vector<std::int32_t>(want_off.begin(), want_off.begin() + want_c + 1));
    REQUIRE(std::vector<std::int32_t>(sent.begin(), sent.begin() + S + 1) ==
            std::vector<std::int32_t>(want_sent.begin(), want_sent.begin() + want_s + 1));
    multi_clause += want_c > want_s;
  }
  CHECK(multi_clause > 300);  // sentences of several clauses were among the cases
}

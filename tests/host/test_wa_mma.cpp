// The tensor-core window-attention scorer (cuda/window_attention_mma.cuh) cannot run here, but its
// arithmetic can: these tests check the fragment coordinates against the PTX ISA's tables (written
// out independently below), and run the kernels' data flow lane by lane with the same detail/
// functions, comparing the scores with the host scorer.
#include <catch2/catch.hpp>

#include <kvevict/detail/wa_mma_core.hpp>

#include <array>
#include <cmath>
#include <random>
#include <vector>

#include "common/test_cache.hpp"

namespace {

using kvevict::detail::log2_stats;
using kvevict::detail::wa_rows;
namespace kd = kvevict::detail;

// PTX ISA, mma.m16n8k16 (.bf16 / .f16): groupID = lane >> 2, threadID_in_group = lane % 4.
// A element a_i (i = 0..7, two per register): row = groupID (+8 for i in {2,3,6,7}),
// col = threadID_in_group * 2 + (i & 1) (+8 for i >= 4).
int spec_a_row(int lane, int i) { return (lane >> 2) + ((i == 2 || i == 3 || i == 6 || i == 7) ? 8 : 0); }
int spec_a_col(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0); }
// B element b_i (i = 0..3): row (k) = threadID_in_group * 2 + (i & 1) (+8 for i >= 2), col = groupID.
int spec_b_row(int lane, int i) { return (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0); }
int spec_b_col(int lane) { return lane >> 2; }
// C element c_i (i = 0..3): row = groupID (+8 for i >= 2), col = threadID_in_group * 2 + (i & 1).
int spec_c_row(int lane, int i) { return (lane >> 2) + (i >= 2 ? 8 : 0); }
int spec_c_col(int lane, int i) { return (lane % 4) * 2 + (i & 1); }
// ldmatrix.x4: lanes 8j .. 8j + 7 give the row addresses of matrix j; lane l receives, of every
// matrix j, row l / 4 and columns 2 (l % 4), +1, in register j.

// The kernels' test of a logit (cuda/window_attention_mma.cuh, `wa_seen`): in the m-tile of keys
// [tm, tm + 16), the row's validity alone when the tile lies below `seen_by_all`, else `last_key`.
bool kernel_counts(const wa_rows& rows, int n, int te, int tm, int row, int t) {
  return tm + 16 <= rows.seen_by_all(n, te) ? rows.valid(row) : t <= rows.last_key(row, n, te);
}

}  // namespace

TEST_CASE("tensor-core scorer: fragment coordinates follow the PTX ISA tables", "[cuda][mma]") {
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {  // A registers hold elements 2r, 2r + 1
      CHECK(kd::mma_a_row(lane, r) == spec_a_row(lane, 2 * r));
      CHECK(kd::mma_a_col(lane, r) == spec_a_col(lane, 2 * r));
      CHECK(spec_a_col(lane, 2 * r + 1) == kd::mma_a_col(lane, r) + 1);
      CHECK(spec_a_row(lane, 2 * r + 1) == kd::mma_a_row(lane, r));
    }
    for (int r = 0; r < 2; ++r) {
      CHECK(kd::mma_b_k(lane, r) == spec_b_row(lane, 2 * r));
      CHECK(kd::mma_b_n(lane) == spec_b_col(lane));
    }
    for (int i = 0; i < 4; ++i) {
      CHECK(kd::mma_c_row(lane, i) == spec_c_row(lane, i));
      CHECK(kd::mma_c_col(lane, i) == spec_c_col(lane, i));
    }
  }
  // ldmatrix.x4 with the kernel's row addresses delivers, in register j of lane l, the A register j.
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 4; ++j) {
      const int src = 8 * j + lane / 4;  // the lane whose address gives matrix j's row lane / 4
      const int row = kd::ldmatrix_a_row(src), col = kd::ldmatrix_a_col(src) + 2 * (lane % 4);
      CHECK(row == kd::mma_a_row(lane, j));
      CHECK(col == kd::mma_a_col(lane, j));
    }
}

TEST_CASE("tensor-core scorer: the per-logit test without a division is the causal rule", "[cuda][mma]") {
  // The kernels decide whether window query `row` sees key `t` (of a slice ending at `te`) from
  // `last_key` and, for whole m-tiles, `seen_by_all` and the row's validity; both must be the rule
  // `t < te && sees(row, t, n)` exactly.
  long checked = 0, by_validity = 0;
  for (int window : {1, 2, 7, 8, 9, 31, 64, 65})
    for (int group : {1, 3, 4, 8}) {
      const wa_rows rows = wa_rows::make(window, group);
      for (int n : {1, 5, 16, 63, 64, 65, 130, 200}) {
        for (int te = 1; te <= n; te += (te < 18 ? 1 : 29)) {
          for (int row = 0; row < rows.rows() + 8; ++row)
            for (int t = 0; t < n + 3; ++t) {
              const bool rule = t < te && rows.sees(row, t, n);
              REQUIRE((t <= rows.last_key(row, n, te)) == rule);
              if (t < rows.seen_by_all(n, te) && rows.valid(row)) {
                REQUIRE(rule);
                ++by_validity;
              }
              // Whole m-tiles at multiples of 16 from the slice start, as the kernels walk them.
              REQUIRE(kernel_counts(rows, n, te, t - t % 16, row, t) == rule);
              ++checked;
            }
          // As large as it can be: below the slice's end, its key is missed by some real query.
          const int all = rows.seen_by_all(n, te);
          if (all >= 0 && all < te) {
            bool missed = false;
            for (int row = 0; row < rows.rows(); ++row) missed = missed || (rows.valid(row) && !rows.sees(row, all, n));
            REQUIRE(missed);
          }
        }
      }
    }
  CHECK(by_validity > 0);  // the fast case was reached
}

TEST_CASE("tensor-core scorer: log2 statistics merge in any grouping to the same softmax sums", "[cuda][mma]") {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 6.0f);
  std::vector<float> x(300);
  for (auto& v : x) v = nd(rng);
  double m = -1e30, l = 0;
  for (float v : x) m = std::max(m, double(v));
  for (float v : x) l += std::exp2(double(v) - m);
  log2_stats one;
  for (float v : x) one.add(v);
  log2_stats parts[7], merged;
  for (std::size_t i = 0; i < x.size(); ++i) parts[i % 7].add(x[i]);
  for (auto& p : parts) merged.merge(p);
  for (const log2_stats& s : {one, merged}) {
    CHECK(s.m == Approx(m));
    CHECK(s.l == Approx(l).epsilon(1e-5));
  }
  log2_stats empty;
  merged.merge(empty);  // an empty side changes nothing
  CHECK(merged.l == Approx(l).epsilon(1e-5));
  empty.merge(one);
  CHECK(empty.m == one.m);
  CHECK(empty.l == one.l);
}

namespace {

// The kernels' data flow, run lane by lane: scores of one (sequence, KV head).
struct mirror {
  int n, d, window, group, slice, warps, ntiles;
  std::vector<float> keys;  // [n][d]
  std::vector<float> q;     // [group][window][d]

  // D = A B for one m-tile and n-tile, delivered per lane as the hardware does: A through the
  // ldmatrix addresses and registers, B through the kernel's loads, D in the C layout.
  void mma(int t0, int mt, int nrow0, const std::vector<float>& qrows, float acc[32][4]) const {
    const int D = (d + 15) / 16 * 16;
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) acc[lane][i] = 0.0f;
    for (int k0 = 0; k0 < D; k0 += 16) {
      // Gather the A and B tiles from the lanes' registers, per the spec tables.
      float A[16][16], B[16][8];
      for (int lane = 0; lane < 32; ++lane) {
        for (int j = 0; j < 4; ++j) {
          const int src = 8 * j + lane / 4;
          const int key = mt * 16 + kd::ldmatrix_a_row(src), dim = k0 + kd::ldmatrix_a_col(src) + 2 * (lane % 4);
          for (int e = 0; e < 2; ++e) {
            const int t = t0 + key, x = dim + e;
            A[spec_a_row(lane, 2 * j + e)][spec_a_col(lane, 2 * j + e)] =
                t < n && x < d ? keys[static_cast<size_t>(t) * d + x] : 0.0f;
          }
        }
        for (int r = 0; r < 2; ++r)
          for (int e = 0; e < 2; ++e) {
            const int row = nrow0 + kd::mma_b_n(lane), x = k0 + kd::mma_b_k(lane, r) + e;
            B[spec_b_row(lane, 2 * r + e)][spec_b_col(lane)] = x < d ? qrows[static_cast<size_t>(row) * d + x] : 0.0f;
          }
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) {
          double s = 0;
          for (int k = 0; k < 16; ++k) s += double(A[spec_c_row(lane, i)][k]) * B[k][spec_c_col(lane, i)];
          acc[lane][i] += static_cast<float>(s);
        }
    }
  }

  template <class Reduce>
  std::vector<float> scores() const {
    const wa_rows rows = wa_rows::make(window, group);
    const int rows_cap = warps * ntiles * 8;
    REQUIRE(rows.rows() <= rows_cap);
    std::vector<float> qrows(static_cast<size_t>(rows_cap) * d, 0.0f);
    for (int r = 0; r < rows_cap; ++r)
      if (rows.valid(r))
        for (int x = 0; x < d; ++x)
          qrows[static_cast<size_t>(r) * d + x] =
              q[(static_cast<size_t>(rows.head_of(r)) * window + rows.index_of(r)) * d + x];
    const float scale = 1.4426950408889634f / std::sqrt(static_cast<float>(d));
    const int nslices = (n + slice - 1) / slice;
    float acc[32][4];
    // Pass 1.
    std::vector<log2_stats> part(static_cast<size_t>(nslices) * rows_cap);
    for (int sl = 0; sl < nslices; ++sl) {
      const int tb = sl * slice, te = std::min(n, tb + slice);
      for (int w = 0; w < warps; ++w) {
        std::vector<std::array<std::array<log2_stats, 2>, 32>> st(ntiles);
        for (int t0 = tb; t0 < te; t0 += 64)
          for (int mt = 0; mt < 4 && t0 + mt * 16 < te; ++mt)
            for (int nt = 0; nt < ntiles; ++nt) {
              mma(t0, mt, (w * ntiles + nt) * 8, qrows, acc);
              for (int lane = 0; lane < 32; ++lane)
                for (int i = 0; i < 4; ++i) {
                  const int t = t0 + mt * 16 + kd::mma_c_row(lane, i), row = (w * ntiles + nt) * 8 + kd::mma_c_col(lane, i);
                  if (kernel_counts(rows, n, te, t0 + mt * 16, row, t)) st[nt][lane][i % 2].add(acc[lane][i] * scale);
                }
            }
        for (int nt = 0; nt < ntiles; ++nt)
          for (int j = 0; j < 2; ++j) {
            for (int off = 4; off < 32; off *= 2) {  // butterfly: every lane reads before any writes
              std::array<log2_stats, 32> before;
              for (int lane = 0; lane < 32; ++lane) before[lane] = st[nt][lane][j];
              for (int lane = 0; lane < 32; ++lane) st[nt][lane][j].merge(before[lane ^ off]);
            }
            for (int lane = 0; lane < 4; ++lane) part[static_cast<size_t>(sl) * rows_cap + (w * ntiles + nt) * 8 + lane * 2 + j] = st[nt][lane][j];
          }
      }
    }
    std::vector<float> m(rows_cap), inv(rows_cap);
    for (int row = 0; row < rows_cap; ++row) {
      log2_stats s;
      for (int sl = 0; sl < nslices; ++sl) s.merge(part[static_cast<size_t>(sl) * rows_cap + row]);
      const bool ok = rows.valid(row) && s.l > 0;
      m[row] = ok ? s.m : 0.0f;
      inv[row] = ok ? 1.0f / (s.l * static_cast<float>(window)) : 0.0f;
    }
    // Pass 2.
    std::vector<float> out(n);
    for (int sl = 0; sl < nslices; ++sl) {
      const int tb = sl * slice, te = std::min(n, tb + slice);
      for (int t0 = tb; t0 < te; t0 += 64) {
        std::vector<float> ptile(static_cast<size_t>(rows_cap / 8) * 64, 0.0f);
        for (int w = 0; w < warps; ++w)
          for (int mt = 0; mt < 4 && t0 + mt * 16 < te; ++mt)
            for (int nt = 0; nt < ntiles; ++nt) {
              mma(t0, mt, (w * ntiles + nt) * 8, qrows, acc);
              float sum[32][2] = {};
              for (int lane = 0; lane < 32; ++lane)
                for (int i = 0; i < 4; ++i) {
                  const int t = t0 + mt * 16 + kd::mma_c_row(lane, i), row = (w * ntiles + nt) * 8 + kd::mma_c_col(lane, i);
                  if (kernel_counts(rows, n, te, t0 + mt * 16, row, t))
                    sum[lane][i / 2] += kd::exp2_nonpositive(acc[lane][i] * scale - m[row]) * inv[row];
                }
              for (int off : {1, 2}) {
                float before[32][2];
                std::copy(&sum[0][0], &sum[0][0] + 64, &before[0][0]);
                for (int lane = 0; lane < 32; ++lane)
                  for (int k = 0; k < 2; ++k) sum[lane][k] += before[lane ^ off][k];
              }
              for (int lane = 0; lane < 32; lane += 4) {
                ptile[static_cast<size_t>(w * ntiles + nt) * 64 + mt * 16 + lane / 4] = sum[lane][0];
                ptile[static_cast<size_t>(w * ntiles + nt) * 64 + mt * 16 + lane / 4 + 8] = sum[lane][1];
              }
            }
        for (int k = 0; k < 64 && t0 + k < te; ++k) out[t0 + k] = kd::wa_key_score<Reduce>(&ptile[k], 64, rows);
      }
    }
    return out;
  }
};

// The host scorer on the same keys and queries (one sequence, one KV head), for comparison.
template <class Reduce>
std::vector<float> host_scores(const mirror& mi) {
  auto L = testing::make_logical(1, 1, mi.d, {mi.n}, 1);
  for (int t = 0; t < mi.n; ++t)
    for (int x = 0; x < mi.d; ++x) L.kvals[L.idx(0, 0, t, x)] = mi.keys[static_cast<size_t>(t) * mi.d + x];
  auto c = testing::build<float>(L, testing::layout_kind::block_nhd, 16, 2);
  kvevict::signals<float> sig;
  sig.queries = mi.q.data();
  sig.num_q_heads = mi.group;
  kvevict::eviction_policy<kvevict::window_attention<Reduce, kvevict::no_pool>, kvevict::token_level,
                           kvevict::selector<>>
      p;
  p.selector = {0, mi.window, kvevict::uniform_budget{mi.window}};
  std::vector<float> s(mi.n);
  const auto st = kvevict::score(kvevict::host, p, c.block_view(), sig, s.data(), mi.n);
  INFO(st.message());
  REQUIRE(st.ok());
  return s;
}

mirror make_mirror(int n, int d, int window, int group, int slice, int warps, int ntiles, std::uint32_t seed) {
  mirror mi{n, d, window, group, slice, warps, ntiles, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  // bf16-representable values, as the kernels read them.
  auto bf = [&](float x) { return kvevict::to_float(kvevict::from_float<kvevict::bfloat16>(x)); };
  mi.keys.resize(static_cast<size_t>(n) * d);
  for (auto& x : mi.keys) x = bf(nd(rng));
  mi.q.resize(static_cast<size_t>(group) * window * d);
  for (auto& x : mi.q) x = bf(2.0f * nd(rng));
  return mi;
}

template <class Reduce>
void compare(const mirror& mi) {
  const auto a = mi.scores<Reduce>(), b = host_scores<Reduce>(mi);
  double worst = 0;
  for (int t = 0; t < mi.n; ++t) worst = std::max(worst, std::abs(double(a[t]) - b[t]) / (std::abs(double(b[t])) + 1e-6));
  INFO("n " << mi.n << " d " << mi.d << " window " << mi.window << " group " << mi.group << " slice " << mi.slice
            << ": worst relative difference " << worst);
  CHECK(worst < 2e-4);
}

}  // namespace

TEST_CASE("tensor-core scorer: the kernels' data flow gives the host scorer's scores", "[cuda][mma]") {
  // Several slices, a partial last tile and m-tile, the causal window inside the last slice,
  // head dims padded to the k-step, windows padded to n-tiles, and GQA mean and max.
  compare<kvevict::gqa_mean>(make_mirror(300, 64, 16, 4, 128, 8, 1, 1));
  compare<kvevict::gqa_max>(make_mirror(300, 64, 16, 4, 128, 8, 1, 2));
  compare<kvevict::gqa_mean>(make_mirror(200, 40, 5, 3, 256, 4, 1, 3));    // d 40 -> 48, window 5 -> 8
  compare<kvevict::gqa_max>(make_mirror(131, 32, 12, 2, 64, 2, 2, 4));     // window across the slice edge
  compare<kvevict::gqa_mean>(make_mirror(97, 16, 40, 1, 4096, 2, 3, 5));   // one slice, 40 -> 48 rows
}

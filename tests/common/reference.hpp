// Naive references for the tests. Shares no code with the library: every formula is written out
// again here, in double precision where it matters, the slow obvious way.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <utility>
#include <vector>

namespace ref {

// ---- 16-bit floats, by arithmetic on doubles rather than bit tricks ----------------------------

inline double round_to_grid(double x, int mant_bits, int min_exp, double max_finite, bool* overflow) {
  // Rounds |x| to `mant_bits` fraction bits (normal) or the subnormal grid 2^(min_exp - mant_bits),
  // ties to even. overflow: the rounded value exceeds max_finite.
  const double a = std::fabs(x);
  int e = a == 0.0 ? min_exp : std::max(min_exp, static_cast<int>(std::floor(std::log2(a))));
  if (a != 0.0 && std::ldexp(1.0, e) > a) --e;  // guard log2 rounding
  if (a != 0.0 && std::ldexp(1.0, e + 1) <= a) ++e;
  e = std::max(e, min_exp);
  const double ulp = std::ldexp(1.0, e - mant_bits);
  const double q = a / ulp;
  double r = std::floor(q);
  const double frac = q - r;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(r, 2.0) != 0.0)) r += 1.0;
  const double out = r * ulp;
  *overflow = out > max_finite;
  return std::copysign(out, x);
}

inline std::uint16_t half_bits(float f) {
  if (std::isnan(f)) return 0x7e00;
  if (std::isinf(f)) return std::signbit(f) ? 0xfc00 : 0x7c00;
  bool of = false;
  const double r = round_to_grid(f, 10, -14, 65504.0, &of);
  const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (of || std::isinf(f)) return sign | 0x7c00;
  const double a = std::fabs(r);
  if (a == 0.0) return sign;
  if (a < std::ldexp(1.0, -14)) return sign | static_cast<std::uint16_t>(a / std::ldexp(1.0, -24));
  int e = static_cast<int>(std::floor(std::log2(a)));
  const double m = a / std::ldexp(1.0, e) - 1.0;
  return sign | static_cast<std::uint16_t>((e + 15) << 10) | static_cast<std::uint16_t>(std::lround(m * 1024.0));
}

inline std::uint16_t bf16_bits(float f) {
  if (std::isnan(f)) return 0x7fc0;
  if (std::isinf(f)) return std::signbit(f) ? 0xff80 : 0x7f80;
  bool of = false;
  const double r = round_to_grid(f, 7, -126, 3.3895313892515355e38, &of);
  std::uint32_t u;
  if (of || std::isinf(f)) return std::signbit(f) ? 0xff80 : 0x7f80;
  const float rf = static_cast<float>(r);
  std::memcpy(&u, &rf, 4);
  return static_cast<std::uint16_t>(u >> 16);
}

// ---- window attention, materialised, in double -------------------------------------------------

// keys: [n, d] of one KV head; queries: [group, w, d]. Returns per query head the window-mean
// attention each key receives: out[j][t].
inline std::vector<std::vector<double>> window_attention(const std::vector<double>& keys, int n, int d,
                                                         const std::vector<double>& queries, int group, int w) {
  std::vector<std::vector<double>> out(group, std::vector<double>(n, 0.0));
  for (int j = 0; j < group; ++j)
    for (int r = 0; r < w; ++r) {
      const int last = n - w + r;
      std::vector<double> logit(last + 1);
      for (int t = 0; t <= last; ++t) {
        double s = 0;
        for (int x = 0; x < d; ++x)
          s += queries[(static_cast<size_t>(j) * w + r) * d + x] * keys[static_cast<size_t>(t) * d + x];
        logit[t] = s / std::sqrt(static_cast<double>(d));
      }
      const double m = *std::max_element(logit.begin(), logit.end());
      double z = 0;
      for (double l : logit) z += std::exp(l - m);
      for (int t = 0; t <= last; ++t) out[j][t] += std::exp(logit[t] - m) / z / w;
    }
  return out;
}

// torch.nn.functional.avg_pool1d(kernel, stride 1, padding kernel/2, count_include_pad=True), odd kernel.
inline std::vector<double> avg_pool_zero_pad(const std::vector<double>& x, int kernel) {
  const int n = static_cast<int>(x.size()), p = kernel / 2;
  std::vector<double> y(n);
  for (int i = 0; i < n; ++i) {
    double s = 0;
    for (int t = i - p; t <= i + p; ++t) s += (t >= 0 && t < n) ? x[t] : 0.0;
    y[i] = s / kernel;
  }
  return y;
}

// ---- selection ---------------------------------------------------------------------------------

// Kept set: first `sinks`, last `window`, and the best (score desc, position asc) of the rest.
template <class Score>
std::vector<int> kept_set(const std::vector<Score>& scores, int budget, int sinks, int window) {
  const int n = static_cast<int>(scores.size());
  std::vector<int> out;
  if (n <= budget) {
    for (int t = 0; t < n; ++t) out.push_back(t);
    return out;
  }
  std::vector<int> mid;
  for (int t = 0; t < n; ++t) {
    if (t < sinks || t >= n - window)
      out.push_back(t);
    else
      mid.push_back(t);
  }
  std::stable_sort(mid.begin(), mid.end(), [&](int a, int b) { return scores[a] > scores[b]; });
  const int k = budget - static_cast<int>(out.size());
  out.insert(out.end(), mid.begin(), mid.begin() + k);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace ref

namespace ref {

// Segments of [lo, hi): cut after delimiters; merge runs shorter than min_len forward (a short
// tail backward); split long ones into ceil(n / max_len) near-equal pieces. Written from the
// specification's words, as lists of (start, end).
inline std::vector<std::pair<int, int>> segments(const std::vector<int>& ids, const std::vector<int>& delims, int lo,
                                                 int hi, int min_len, int max_len) {
  std::vector<std::pair<int, int>> raw, merged, out;
  int start = lo;
  for (int t = lo; t < hi; ++t) {
    const bool d = std::find(delims.begin(), delims.end(), ids[t]) != delims.end();
    if (d || t == hi - 1) {
      raw.push_back({start, t + 1});
      start = t + 1;
    }
  }
  int cur = -1;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (cur < 0) cur = raw[i].first;
    if (raw[i].second - cur >= min_len || i + 1 == raw.size()) {
      merged.push_back({cur, raw[i].second});
      cur = -1;
    }
  }
  if (merged.size() > 1 && merged.back().second - merged.back().first < min_len) {
    merged[merged.size() - 2].second = merged.back().second;
    merged.pop_back();
  }
  for (auto [a, b] : merged) {
    const int n = b - a, p = (n + max_len - 1) / max_len;
    if (n <= max_len) {
      out.push_back({a, b});
      continue;
    }
    for (int j = 0; j < p; ++j)
      out.push_back({a + static_cast<int>(static_cast<long>(n) * j / p),
                     a + static_cast<int>(static_cast<long>(n) * (j + 1) / p)});
  }
  return out;
}

// Units kept whole by mean score (desc, earlier first) while they fit, then the best remaining
// tokens (score desc, position asc). Returns the kept positions of [lo, hi), sorted.
inline std::vector<int> units_then_fill(const std::vector<double>& score, const std::vector<std::pair<int, int>>& units,
                                        int lo, int hi, int bc) {
  std::vector<int> order(units.size());
  std::iota(order.begin(), order.end(), 0);
  auto mean = [&](int u) {
    double s = 0;
    for (int t = units[u].first; t < units[u].second; ++t) s += score[t];
    return s / (units[u].second - units[u].first);
  };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return mean(a) > mean(b); });
  std::vector<bool> keep(hi, false);
  int left = bc;
  for (int u : order) {
    const int len = units[u].second - units[u].first;
    if (len <= left) {
      for (int t = units[u].first; t < units[u].second; ++t) keep[t] = true;
      left -= len;
    }
  }
  std::vector<int> rest;
  for (int t = lo; t < hi; ++t)
    if (!keep[t]) rest.push_back(t);
  std::stable_sort(rest.begin(), rest.end(), [&](int a, int b) { return score[a] > score[b]; });
  for (int i = 0; i < left && i < static_cast<int>(rest.size()); ++i) keep[rest[i]] = true;
  std::vector<int> out;
  for (int t = lo; t < hi; ++t)
    if (keep[t]) out.push_back(t);
  return out;
}

}  // namespace ref

// Minimal image writers for the NIAH heatmaps: PNG (RGB, stored deflate blocks, no zlib needed)
// and SVG (with labels).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace niah_report {

struct rgb {
  std::uint8_t r, g, b;
};

//! Success rate in [0, 1] -> red, yellow, green (the usual NIAH palette).
inline rgb success_colour(double s) {
  const rgb lo{214, 58, 52}, mid{244, 203, 66}, hi{46, 160, 84};
  auto mix = [](rgb a, rgb b, double t) {
    return rgb{static_cast<std::uint8_t>(a.r + (b.r - a.r) * t), static_cast<std::uint8_t>(a.g + (b.g - a.g) * t),
               static_cast<std::uint8_t>(a.b + (b.b - a.b) * t)};
  };
  return s < 0.5 ? mix(lo, mid, s * 2) : mix(mid, hi, (s - 0.5) * 2);
}

struct image {
  int w, h;
  std::vector<rgb> px;
  image(int w_, int h_, rgb fill) : w(w_), h(h_), px(static_cast<size_t>(w_) * h_, fill) {}
  void rect(int x0, int y0, int rw, int rh, rgb c) {
    for (int y = y0; y < y0 + rh && y < h; ++y)
      for (int x = x0; x < x0 + rw && x < w; ++x) px[static_cast<size_t>(y) * w + x] = c;
  }
};

inline std::uint32_t crc32(const std::uint8_t* p, size_t n, std::uint32_t c = 0xffffffffu) {
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return c;
}

inline bool write_png(const std::string& path, const image& img) {
  std::vector<std::uint8_t> raw;  // filter byte 0 + RGB per row
  for (int y = 0; y < img.h; ++y) {
    raw.push_back(0);
    for (int x = 0; x < img.w; ++x) {
      const rgb c = img.px[static_cast<size_t>(y) * img.w + x];
      raw.insert(raw.end(), {c.r, c.g, c.b});
    }
  }
  std::vector<std::uint8_t> z = {0x78, 0x01};  // zlib header, stored blocks
  for (size_t off = 0; off < raw.size() || raw.empty(); off += 65535) {
    const size_t len = std::min<size_t>(65535, raw.size() - off);
    z.push_back(off + len >= raw.size() ? 1 : 0);
    z.insert(z.end(), {static_cast<std::uint8_t>(len), static_cast<std::uint8_t>(len >> 8),
                       static_cast<std::uint8_t>(~len), static_cast<std::uint8_t>(~len >> 8)});
    z.insert(z.end(), raw.begin() + static_cast<long>(off), raw.begin() + static_cast<long>(off + len));
    if (raw.empty()) break;
  }
  std::uint32_t a = 1, b = 0;  // Adler-32
  for (std::uint8_t v : raw) a = (a + v) % 65521, b = (b + a) % 65521;
  const std::uint32_t adler = (b << 16) | a;
  z.insert(z.end(), {static_cast<std::uint8_t>(adler >> 24), static_cast<std::uint8_t>(adler >> 16),
                     static_cast<std::uint8_t>(adler >> 8), static_cast<std::uint8_t>(adler)});
  std::ofstream f(path, std::ios::binary);
  auto be32 = [&](std::uint32_t v) {
    const std::uint8_t b4[4] = {static_cast<std::uint8_t>(v >> 24), static_cast<std::uint8_t>(v >> 16),
                                static_cast<std::uint8_t>(v >> 8), static_cast<std::uint8_t>(v)};
    f.write(reinterpret_cast<const char*>(b4), 4);
  };
  auto chunk = [&](const char* type, const std::vector<std::uint8_t>& data) {
    be32(static_cast<std::uint32_t>(data.size()));
    std::vector<std::uint8_t> td(type, type + 4);
    td.insert(td.end(), data.begin(), data.end());
    f.write(reinterpret_cast<const char*>(td.data()), static_cast<long>(td.size()));
    be32(crc32(td.data(), td.size()) ^ 0xffffffffu);
  };
  const std::uint8_t sig[8] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
  f.write(reinterpret_cast<const char*>(sig), 8);
  std::vector<std::uint8_t> ihdr = {static_cast<std::uint8_t>(img.w >> 24),
                                    static_cast<std::uint8_t>(img.w >> 16),
                                    static_cast<std::uint8_t>(img.w >> 8),
                                    static_cast<std::uint8_t>(img.w),
                                    static_cast<std::uint8_t>(img.h >> 24),
                                    static_cast<std::uint8_t>(img.h >> 16),
                                    static_cast<std::uint8_t>(img.h >> 8),
                                    static_cast<std::uint8_t>(img.h),
                                    8,
                                    2,
                                    0,
                                    0,
                                    0};
  chunk("IHDR", ihdr);
  chunk("IDAT", z);
  chunk("IEND", {});
  return static_cast<bool>(f);
}

}  // namespace niah_report

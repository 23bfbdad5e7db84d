// Builds the same logical cache in every supported layout, with shuffled page ids, and gives a
// naive address formula per layout (independent of the views) for byte-for-byte checks.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <kvevict/kvevict.hpp>

namespace testing {

enum class layout_kind { block_nhd, block_hnd, csr_nhd, csr_hnd, dense, head_rows };
inline const layout_kind all_layouts[] = {layout_kind::block_nhd, layout_kind::block_hnd, layout_kind::csr_nhd,
                                          layout_kind::csr_hnd,   layout_kind::dense,     layout_kind::head_rows};
inline std::string name(layout_kind k) {
  const char* n[] = {"block_nhd", "block_hnd", "csr_nhd", "csr_hnd", "dense", "head_rows"};
  return n[static_cast<int>(k)];
}

// Logical content: value(seq, head, pos, x) for every token, as float; lens per (seq, head).
struct logical {
  int num_seqs = 1, kv_heads = 1, head_dim = 4;
  std::vector<int> lens;            // [num_seqs * kv_heads]; equal across heads unless head_rows
  std::vector<float> kvals, vvals;  // [num_seqs, kv_heads, max_len, head_dim]
  int max_len = 0;
  float key(int s, int h, int t, int x) const { return kvals[idx(s, h, t, x)]; }
  float val(int s, int h, int t, int x) const { return vvals[idx(s, h, t, x)]; }
  size_t idx(int s, int h, int t, int x) const {
    return ((static_cast<size_t>(s) * kv_heads + h) * max_len + t) * head_dim + x;
  }
};

inline logical make_logical(int num_seqs, int kv_heads, int head_dim, std::vector<int> seq_lens, std::uint32_t seed,
                            bool per_head_lens = false) {
  logical L;
  L.num_seqs = num_seqs;
  L.kv_heads = kv_heads;
  L.head_dim = head_dim;
  std::mt19937 rng(seed);
  for (int s = 0; s < num_seqs; ++s)
    for (int h = 0; h < kv_heads; ++h) {
      int n = seq_lens[s];
      if (per_head_lens && n > 0) n = std::max(1, n - static_cast<int>(rng() % 3));
      L.lens.push_back(n);
    }
  L.max_len = std::max(1, *std::max_element(L.lens.begin(), L.lens.end()));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  L.kvals.resize(static_cast<size_t>(num_seqs) * kv_heads * L.max_len * head_dim);
  L.vvals.resize(L.kvals.size());
  for (auto& x : L.kvals) x = nd(rng);
  for (auto& x : L.vvals) x = nd(rng);
  return L;
}

template <class T>
struct test_cache {
  layout_kind kind;
  int num_seqs, kv_heads, head_dim, page_size, num_pages = 0, stride = 0, capacity = 0;
  std::vector<std::vector<int>> pages;  // per page list (seq, or seq*H+h for head_rows)
  std::vector<int> lens;                // per page list
  std::vector<T> k, v;
  std::vector<std::int32_t> table, lens32, indptr, indices, last;

  int lists() const { return kind == layout_kind::head_rows ? num_seqs * kv_heads : num_seqs; }
  int list_of(int s, int h) const { return kind == layout_kind::head_rows ? s * kv_heads + h : s; }
  size_t page_elems() const {
    return static_cast<size_t>(page_size) * head_dim * (kind == layout_kind::head_rows ? 1 : kv_heads);
  }

  // Naive element offset of (seq, head, pos) in k / v.
  size_t addr(int s, int h, int pos) const {
    if (kind == layout_kind::dense) return ((static_cast<size_t>(s) * kv_heads + h) * capacity + pos) * head_dim;
    const int pg = pages[list_of(s, h)][pos / page_size], slot = pos % page_size;
    switch (kind) {
      case layout_kind::block_nhd:
      case layout_kind::csr_nhd:
        return ((static_cast<size_t>(pg) * page_size + slot) * kv_heads + h) * head_dim;
      case layout_kind::block_hnd:
      case layout_kind::csr_hnd:
        return ((static_cast<size_t>(pg) * kv_heads + h) * page_size + slot) * head_dim;
      default:
        return (static_cast<size_t>(pg) * page_size + slot) * head_dim;
    }
  }

  auto block_view() {
    return kvevict::block_table_cache<T, kvevict::nhd>{k.data(), v.data(),  table.data(), lens32.data(), num_seqs,
                                                       stride,   num_pages, page_size,    kv_heads,      head_dim};
  }
  auto block_hnd_view() {
    return kvevict::block_table_cache<T, kvevict::hnd>{k.data(), v.data(),  table.data(), lens32.data(), num_seqs,
                                                       stride,   num_pages, page_size,    kv_heads,      head_dim};
  }
  template <class L>
  auto csr_view() {
    return kvevict::csr_page_cache<T, L>{k.data(), v.data(),  indptr.data(), indices.data(), last.data(),
                                         num_seqs, num_pages, page_size,     kv_heads,       head_dim};
  }
  auto dense_view() {
    return kvevict::dense_cache<T>{k.data(), v.data(), lens32.data(), num_seqs, kv_heads, capacity, head_dim};
  }
  auto head_rows_view() {
    return kvevict::head_row_table_cache<T>{k.data(), v.data(),  table.data(), lens32.data(), num_seqs,
                                            stride,   num_pages, page_size,    kv_heads,      head_dim};
  }

  // Calls f(view) with the view of this layout.
  template <class F>
  void visit(F&& f) {
    switch (kind) {
      case layout_kind::block_nhd:
        f(block_view());
        break;
      case layout_kind::block_hnd:
        f(block_hnd_view());
        break;
      case layout_kind::csr_nhd:
        f(csr_view<kvevict::nhd>());
        break;
      case layout_kind::csr_hnd:
        f(csr_view<kvevict::hnd>());
        break;
      case layout_kind::dense:
        f(dense_view());
        break;
      case layout_kind::head_rows:
        f(head_rows_view());
        break;
    }
  }

  // Regenerates every table representation (block table, CSR, lengths) from `pages` and `lens`.
  void sync_tables() {
    stride = 1;
    for (auto& p : pages) stride = std::max<int>(stride, static_cast<int>(p.size()));
    table.assign(static_cast<size_t>(lists()) * stride, -1);
    for (int li = 0; li < lists(); ++li)
      for (size_t i = 0; i < pages[li].size(); ++i) table[static_cast<size_t>(li) * stride + i] = pages[li][i];
    lens32.assign(lens.begin(), lens.end());
    indptr.assign(1, 0);
    indices.clear();
    last.clear();
    for (int li = 0; li < lists(); ++li) {
      for (int p : pages[li]) indices.push_back(p);
      indptr.push_back(static_cast<std::int32_t>(indices.size()));
      const int n = lens[li];
      last.push_back(n == 0 ? 0 : n - (n - 1) / page_size * page_size);
    }
    if (indices.empty()) indices.push_back(0);
  }

  std::uint64_t checksum() const {  // FNV-1a over K and V bytes
    std::uint64_t hsh = 1469598103934665603ull;
    auto mix = [&](const void* p, size_t n) {
      const unsigned char* b = static_cast<const unsigned char*>(p);
      for (size_t i = 0; i < n; ++i) hsh = (hsh ^ b[i]) * 1099511628211ull;
    };
    mix(k.data(), k.size() * sizeof(T));
    mix(v.data(), v.size() * sizeof(T));
    return hsh;
  }
};

// Lays out `L` in layout `kind` with `page_size`, page ids shuffled, `spare_pages` unused pages, and
// garbage in every unused slot.
template <class T>
test_cache<T> build(const logical& L, layout_kind kind, int page_size, std::uint32_t seed, int spare_pages = 3) {
  test_cache<T> c;
  c.kind = kind;
  c.num_seqs = L.num_seqs;
  c.kv_heads = L.kv_heads;
  c.head_dim = L.head_dim;
  c.page_size = kind == layout_kind::dense ? L.max_len : page_size;
  c.capacity = L.max_len;
  std::mt19937 rng(seed);
  for (int li = 0; li < c.lists(); ++li) {
    const int s = kind == layout_kind::head_rows ? li / L.kv_heads : li;
    const int h = kind == layout_kind::head_rows ? li % L.kv_heads : 0;
    c.lens.push_back(L.lens[static_cast<size_t>(s) * L.kv_heads + h]);
  }
  if (kind == layout_kind::dense) {
    c.num_pages = c.num_seqs;
    for (int s = 0; s < c.num_seqs; ++s) c.pages.push_back({s});
  } else {
    int total = 0;
    for (int n : c.lens) total += (n + page_size - 1) / page_size;
    c.num_pages = total + spare_pages;
    std::vector<int> ids(c.num_pages);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    int next = 0;
    for (int n : c.lens) {
      std::vector<int> p;
      for (int i = 0; i < (n + page_size - 1) / page_size; ++i) p.push_back(ids[next++]);
      c.pages.push_back(p);
    }
  }
  const size_t elems = c.kind == layout_kind::dense
                           ? static_cast<size_t>(c.num_seqs) * c.kv_heads * c.capacity * c.head_dim
                           : static_cast<size_t>(c.num_pages) * c.page_elems();
  c.k.resize(elems);
  c.v.resize(elems);
  std::uniform_real_distribution<float> garbage(-9.0f, 9.0f);
  for (auto& x : c.k) x = kvevict::from_float<T>(garbage(rng));
  for (auto& x : c.v) x = kvevict::from_float<T>(garbage(rng));
  for (int s = 0; s < L.num_seqs; ++s)
    for (int h = 0; h < L.kv_heads; ++h)
      for (int t = 0; t < L.lens[static_cast<size_t>(s) * L.kv_heads + h]; ++t)
        for (int x = 0; x < L.head_dim; ++x) {
          c.k[c.addr(s, h, t) + x] = kvevict::from_float<T>(L.key(s, h, t, x));
          c.v[c.addr(s, h, t) + x] = kvevict::from_float<T>(L.val(s, h, t, x));
        }
  c.sync_tables();
  return c;
}

}  // namespace testing

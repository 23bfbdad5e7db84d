//! \file support/page_pool.hpp
//! An owning page pool for tests and examples (engines bring their own allocator).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvevict {

//! Owns K and V storage for `num_pages` pages of `page_elems` elements each, and a free list.
//! Allocation order is deterministic (lowest free page id first after construction, then LIFO).
//! Not thread-safe. Not used by the library itself.
template <class T>
class page_pool {
 public:
  page_pool(int num_pages, std::size_t page_elems)
      : k_(static_cast<std::size_t>(num_pages) * page_elems),
        v_(static_cast<std::size_t>(num_pages) * page_elems),
        in_use_(static_cast<std::size_t>(num_pages), 0),
        page_elems_(page_elems) {
    free_.reserve(static_cast<std::size_t>(num_pages));
    for (int p = num_pages - 1; p >= 0; --p) free_.push_back(p);
  }

  //! A free page id, or -1 when the pool is exhausted.
  int allocate() {
    if (free_.empty()) return -1;
    const int p = free_.back();
    free_.pop_back();
    in_use_[static_cast<std::size_t>(p)] = 1;
    return p;
  }

  //! Returns a page to the pool. False (and no change) for an unknown or already free page.
  bool release(int page) {
    if (page < 0 || page >= num_pages() || !in_use_[static_cast<std::size_t>(page)]) return false;
    in_use_[static_cast<std::size_t>(page)] = 0;
    free_.push_back(page);
    return true;
  }

  bool in_use(int page) const { return page >= 0 && page < num_pages() && in_use_[static_cast<std::size_t>(page)]; }
  int num_pages() const { return static_cast<int>(in_use_.size()); }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_used() const { return num_pages() - num_free(); }
  std::size_t page_elems() const { return page_elems_; }

  T* k() { return k_.data(); }  // [num_pages, page_elems]
  T* v() { return v_.data(); }  // [num_pages, page_elems]
  const std::vector<T>& k_storage() const { return k_; }
  const std::vector<T>& v_storage() const { return v_; }

 private:
  std::vector<T> k_, v_;
  std::vector<unsigned char> in_use_;
  std::vector<int> free_;
  std::size_t page_elems_;
};

}  // namespace kvevict

// The host half of the binding: the checks of DLPack tensors (device, dtype, shape, contiguity), the
// description of a call (call.hpp) they produce, and the host backend's calls with numpy outputs.
// Each cache layout's host instantiations live in their own translation unit (bind_<layout>.cpp)
// so that a build compiles them in parallel.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "call.hpp"
#include "common.hpp"

namespace kvevict_py {

namespace nb = nanobind;

using array = nb::ndarray<nb::ro>;  //!< read-only view of any DLPack tensor
using warray = nb::ndarray<>;       //!< writable view

template <class A>
dtype_id dtype_of(const A& a) {
  const auto d = a.dtype();
  using code = nb::dlpack::dtype_code;
  if (d.lanes != 1) return dtype_id::other;
  if (d.code == static_cast<std::uint8_t>(code::Float) && d.bits == 32) return dtype_id::f32;
  if (d.code == static_cast<std::uint8_t>(code::Float) && d.bits == 16) return dtype_id::f16;
  if (d.code == static_cast<std::uint8_t>(code::Bfloat) && d.bits == 16) return dtype_id::bf16;
  if (d.code == static_cast<std::uint8_t>(code::Int) && d.bits == 32) return dtype_id::i32;
  return dtype_id::other;
}

template <class A>
bool contiguous(const A& a) {
  std::int64_t expect = 1;
  for (std::size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expect) return false;
    expect *= static_cast<std::int64_t>(a.shape(i));
  }
  return true;
}

//! A DLPack device: the CPU, or one CUDA device.
struct where {
  std::int32_t type = nb::device::cpu::value;
  std::int32_t id = 0;
  bool cuda() const { return type == nb::device::cuda::value; }
  bool operator==(const where& o) const { return type == o.type && (type == nb::device::cpu::value || id == o.id); }
  std::string name() const {
    if (type == nb::device::cpu::value) return "the CPU";
    if (cuda()) return "cuda:" + std::to_string(id);
    return "DLPack device type " + std::to_string(type);
  }
};

template <class A>
where where_of(const A& a) {
  return where{a.device_type(), a.device_id()};
}

//! Checks a tensor's device (`dev`, K's), rank and contiguity.
template <class A>
void check_tensor(const A& a, const char* name, std::size_t ndim, where dev) {
  if (!(where_of(a) == dev))
    fail(kvevict::errc::invalid_argument, name,
         "is on " + where_of(a).name() + " and K on " + dev.name() + ": every tensor of a call must be on K's device");
  if (a.ndim() != ndim) fail(kvevict::errc::shape_mismatch, name, "must have " + std::to_string(ndim) + " dimensions");
  if (!contiguous(a)) fail(kvevict::errc::invalid_argument, name, "must be contiguous (call .contiguous())");
}

inline int to_int(std::size_t v, const char* name) {
  if (v > static_cast<std::size_t>(INT32_MAX)) fail(kvevict::errc::out_of_range, name, "a dimension exceeds 2^31 - 1");
  return static_cast<int>(v);
}

//! An int32 vector argument (`None` allowed when `optional`): its data, checked for length `n`
//! (n < 0: any length).
inline const std::int32_t* int_array(const nb::object& o, const char* name, std::int64_t n, bool optional, where dev,
                                     std::int64_t* len = nullptr) {
  if (o.is_none()) {
    if (!optional) fail(kvevict::errc::invalid_argument, name, "required");
    return nullptr;
  }
  array a = nb::cast<array>(o);
  check_tensor(a, name, 1, dev);
  if (dtype_of(a) != dtype_id::i32) fail(kvevict::errc::invalid_argument, name, "must be int32");
  if (n >= 0 && static_cast<std::int64_t>(a.shape(0)) != n)
    fail(kvevict::errc::shape_mismatch, name, "must hold " + std::to_string(n) + " entries");
  if (len) *len = static_cast<std::int64_t>(a.shape(0));
  return static_cast<const std::int32_t*>(a.data());
}

//! An int32 matrix argument `[rows, any]` (rows < 0: any); returns its data, its shape in `rows_out`
//! and `stride`.
inline const std::int32_t* int_matrix(const nb::object& o, const char* name, std::int64_t rows, where dev,
                                      int* stride, int* rows_out = nullptr) {
  if (o.is_none()) return nullptr;
  array a = nb::cast<array>(o);
  check_tensor(a, name, 2, dev);
  if (dtype_of(a) != dtype_id::i32) fail(kvevict::errc::invalid_argument, name, "must be int32");
  if (rows >= 0 && static_cast<std::int64_t>(a.shape(0)) != rows)
    fail(kvevict::errc::shape_mismatch, name, "must have one row per sequence");
  *stride = to_int(a.shape(1), name);
  if (rows_out) *rows_out = to_int(a.shape(0), name);
  return static_cast<const std::int32_t*>(a.data());
}

//! A numpy array that owns `v`.
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T>&& v, std::vector<std::size_t> shape) {
  auto* owned = new std::vector<T>(std::move(v));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.data(), owner);
}

// ---------------------------------------------------------------------------------------------
// Host calls

//! What plan / compact / evict return to Python.
struct outputs {
  nb::object positions = nb::none(), counts = nb::none(), new_lens = nb::none(), freed_pages = nb::none();
};

//! Plans (and, with `do_compact`, compacts) the host cache `c` describes with the policy `cfg`
//! describes, or (without `do_plan`) compacts it with the plan `c` holds. Every check runs before
//! anything is written: the library's front doors validate, the outputs are sized here.
template <class T, class Cache>
outputs run_host(const config& cfg, const call_desc& c, const Cache& cache, bool do_plan, bool do_compact) {
  raise_if_error(kvevict::validate_cache(cache));
  outputs out;
  const int rows = kvevict::plan_rows(cache);
  std::vector<std::int32_t> positions, counts;
  int capacity = c.plan_capacity;
  if (do_plan) {
    const kvevict::signals<T> sig = signals_of<T>(c);
    with_policy(cfg, [&](const auto& policy) {
      capacity = kvevict::plan_capacity(policy, cache, sig);
      positions.assign(static_cast<std::size_t>(rows) * static_cast<std::size_t>(capacity), 0);
      counts.assign(static_cast<std::size_t>(rows), 0);
      kvevict::status st;
      {
        nb::gil_scoped_release unlocked;
        st = kvevict::plan(kvevict::host.threads(c.threads), policy, cache, sig,
                           kvevict::keep_plan{positions.data(), counts.data(), capacity, rows});
      }
      raise_if_error(st);
    });
  }
  const std::int32_t* pos = do_plan ? positions.data() : c.positions;
  const std::int32_t* cnt = do_plan ? counts.data() : c.counts;
  if (!do_plan && c.plan_rows < rows)
    fail(kvevict::errc::buffer_too_small, "plan.rows", "fewer rows than sequences x KV heads");
  if (do_compact) {
    const int max_freed = kvevict::max_freed_pages(cache);
    std::vector<std::int32_t> new_lens(static_cast<std::size_t>(rows)), freed(static_cast<std::size_t>(max_freed));
    kvevict::compact_result res{new_lens.data(), rows, freed.data(), max_freed, 0};
    kvevict::status st;
    {
      nb::gil_scoped_release unlocked;
      st = kvevict::compact(kvevict::host, cache,
                            kvevict::const_keep_plan{pos, cnt, capacity, do_plan ? rows : c.plan_rows}, res);
    }
    raise_if_error(st);
    freed.resize(static_cast<std::size_t>(res.num_freed));
    out.new_lens = nb::cast(to_numpy(std::move(new_lens), {static_cast<std::size_t>(rows)}));
    const std::size_t nf = freed.size();
    out.freed_pages = nb::cast(to_numpy(std::move(freed), {nf}));
  }
  if (do_plan) {
    out.positions =
        nb::cast(to_numpy(std::move(positions), {static_cast<std::size_t>(rows), static_cast<std::size_t>(capacity)}));
    out.counts = nb::cast(to_numpy(std::move(counts), {static_cast<std::size_t>(rows)}));
  }
  return out;
}

//! The host call on a cache of layout L (one translation unit per layout: bind_<layout>.cpp).
template <layout_id L>
outputs run_layout(const config& cfg, const call_desc& c, bool do_plan, bool do_compact) {
  return with_dtype(c.dtype, [&](auto tag) {
    using T = decltype(tag);
    return with_layout_view<L, T>(c, [&](const auto& cache) { return run_host<T>(cfg, c, cache, do_plan, do_compact); });
  });
}

extern template outputs run_layout<layout_id::dense>(const config&, const call_desc&, bool, bool);
extern template outputs run_layout<layout_id::block_table>(const config&, const call_desc&, bool, bool);
extern template outputs run_layout<layout_id::csr>(const config&, const call_desc&, bool, bool);

}  // namespace kvevict_py

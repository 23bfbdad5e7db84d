//! \file status.hpp
//! The status every kvevict front door returns.
#pragma once

#include <string>

namespace kvevict {

//! Error categories. The README's error catalogue documents each one.
enum class errc : int {
  ok = 0,
  invalid_argument,  //!< a parameter is outside its documented domain
  budget_too_small,  //!< budget below the protected tokens (sinks + window)
  shape_mismatch,    //!< two arguments disagree about a size
  out_of_range,      //!< an index (page id, position, head) is outside its array
  non_finite,        //!< a NaN or infinite score, key or query
  empty_batch,       //!< no sequences
  buffer_too_small,  //!< a caller-provided output or workspace is too small
  device_error,      //!< a CUDA runtime call failed (launch, copy, no device); `detail` says which
};

//! Name of an error category, for messages.
inline const char* to_string(errc e) noexcept {
  switch (e) {
    case errc::ok:
      return "ok";
    case errc::invalid_argument:
      return "invalid argument";
    case errc::budget_too_small:
      return "budget too small";
    case errc::shape_mismatch:
      return "shape mismatch";
    case errc::out_of_range:
      return "out of range";
    case errc::non_finite:
      return "non-finite value";
    case errc::empty_batch:
      return "empty batch";
    case errc::buffer_too_small:
      return "buffer too small";
    case errc::device_error:
      return "device error";
  }
  return "unknown";
}

//! Result of a front door: ok, or an error category plus the name of the offending argument and
//! a short static explanation. Trivially copyable (static strings only), so it is cheap to return
//! and safe to build in any context.
struct [[nodiscard]] status {
  errc code = errc::ok;
  const char* argument = "";  //!< name of the bad argument, as in the front door's signature
  const char* detail = "";    //!< what is wrong with it

  constexpr bool ok() const noexcept { return code == errc::ok; }
  constexpr explicit operator bool() const noexcept { return ok(); }

  //! "kvevict: <category> in '<argument>': <detail>" (or "kvevict: ok").
  std::string message() const {
    if (ok()) return "kvevict: ok";
    return std::string("kvevict: ") + to_string(code) + " in '" + argument + "': " + detail;
  }
};

constexpr status ok_status() noexcept { return {}; }
constexpr status make_error(errc code, const char* argument, const char* detail) noexcept {
  return status{code, argument, detail};
}

}  // namespace kvevict

//! Propagates a non-ok status to the caller.
#define KVEVICT_TRY(expr)                            \
  do {                                               \
    ::kvevict::status kvevict_try_s_ = (expr);       \
    if (!kvevict_try_s_.ok()) return kvevict_try_s_; \
  } while (0)

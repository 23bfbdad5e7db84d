// The test fixtures (tests/fixtures/*.json), read with nlohmann-json (Debian nlohmann-json3-dev).
#pragma once

#include <fstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace testing {

//! Parses `tests/fixtures/<name>`; throws (failing the test) when it is missing or malformed.
inline nlohmann::json load_fixture(const std::string& name) {
  const std::string path = std::string(KVEVICT_FIXTURES_DIR) + "/" + name;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open fixture " + path);
  return nlohmann::json::parse(in);
}

}  // namespace testing

// A small engine loop over a vLLM-style block table with decode-time H2O eviction: prefill, then
// decode with host attention on random weights; prints memory held and the attention-output
// error against the same loop without eviction.
#include "toy_engine.hpp"

int main() {
  toy::settings s;
  s.budget = 128;
  s.slack = 32;
  const double err = toy::compare_loops<toy::table_kind::block_table>(
      "vLLM-style block table, H2O (budget 128 + slack 32), 4 sequences", kvevict::h2o<>{}, s, 300, 400);
  // A smoke check: two unrelated outputs of equal norm differ by about sqrt(2) = 1.41 (relative); the
  // invariants themselves are tested in tests/host/test_decode.cpp.
  return err < 1.3 ? 0 : 1;
}

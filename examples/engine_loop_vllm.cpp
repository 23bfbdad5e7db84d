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
  return err < 1.0 ? 0 : 1;
}

// The same engine loop over a FlashInfer-style CSR page table, with SnapKV scoring from the
// decode-time query ring.
#include "toy_engine.hpp"

int main() {
  toy::settings s;
  s.budget = 128;
  s.slack = 32;
  const double err = toy::compare_loops<toy::table_kind::csr>(
      "FlashInfer-style CSR page table, SnapKV on the query ring (budget 128 + slack 32), 4 sequences",
      kvevict::snapkv<>{}, s, 300, 400);
  // A smoke check: two unrelated outputs of equal norm differ by about sqrt(2) = 1.41 (relative); the
  // invariants themselves are tested in tests/host/test_decode.cpp.
  return err < 1.3 ? 0 : 1;
}

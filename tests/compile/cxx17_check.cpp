// Compiled as C++17: the trait fallback recognises every cache model and rejects a non-model.
#include <kvevict/kvevict.hpp>

static_assert(kvevict::is_paged_kv_cache_v<kvevict::block_table_cache<float>>);
static_assert(kvevict::is_paged_kv_cache_v<kvevict::block_table_cache<kvevict::bfloat16, kvevict::hnd>>);
static_assert(kvevict::is_paged_kv_cache_v<kvevict::csr_page_cache<kvevict::half, kvevict::hnd>>);
static_assert(kvevict::is_paged_kv_cache_v<kvevict::dense_cache<float>>);
static_assert(kvevict::is_paged_kv_cache_v<kvevict::head_row_table_cache<kvevict::half>>);
static_assert(!kvevict::is_paged_kv_cache_v<int>);
static_assert(std::is_trivially_copyable_v<kvevict::snapkv<>>);
static_assert(std::is_trivially_copyable_v<kvevict::h2o<>>);
static_assert(std::is_trivially_copyable_v<kvevict::ada_snapkv<>>);
static_assert(std::is_standard_layout_v<kvevict::csr_page_cache<float>>);
#if __cplusplus >= 202002L
#error "this translation unit must be compiled as C++17"
#endif

int main() { return 0; }

// The roofline's read in 32-byte loads (read.h).
#include "../simd_x86.h"
#include "kernels.h"
#include "read.h"

namespace tinylm::int8 {
namespace {

struct Avx2 {
  using V = __m256i;
  static constexpr int64_t kWords = 4;
  static V zero() { return _mm256_setzero_si256(); }
  static V load(const uint64_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static V add(V a, V b) { return _mm256_add_epi64(a, b); }
  static uint64_t sum(V v) {
    alignas(32) uint64_t w[4];
    _mm256_store_si256((__m256i*)w, v);
    return w[0] + w[1] + w[2] + w[3];
  }
};

}  // namespace

uint64_t read_words_avx2(const uint64_t* data, int64_t n) { return read::sum_words<Avx2>(data, n); }

}  // namespace tinylm::int8

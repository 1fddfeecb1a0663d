// The roofline's read in 64-byte loads (read.h).
#include "../simd_x86.h"
#include "kernels.h"
#include "read.h"

namespace tinylm::int8 {
namespace {

struct Avx512 {
  using V = __m512i;
  static constexpr int64_t kWords = 8;
  static V zero() { return _mm512_setzero_si512(); }
  static V load(const uint64_t* p) { return _mm512_loadu_si512((const void*)p); }
  static V add(V a, V b) { return _mm512_add_epi64(a, b); }
  static uint64_t sum(V v) {
    alignas(64) uint64_t w[8];
    _mm512_store_si512((void*)w, v);
    return ((w[0] + w[1]) + (w[2] + w[3])) + ((w[4] + w[5]) + (w[6] + w[7]));
  }
};

}  // namespace

uint64_t read_words_avx512(const uint64_t* data, int64_t n) { return read::sum_words<Avx512>(data, n); }

}  // namespace tinylm::int8

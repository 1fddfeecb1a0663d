// int8 GEMV for the decode step, AVX-512 VNNI: the four-stream loop of gemv_streams.h
// with 64 bytes per step. vpdpbusd multiplies unsigned by signed bytes, so w is biased
// to unsigned (w ^ 0x80 = w + 128) and 128 * sum(x) is taken off at the end.
// GCC 12's own AVX-512 headers trip -Wuninitialized (_mm256_undefined_* inside the
// 512-to-256-bit casts and extracts); the warning is not about our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "gemv_streams.h"

namespace tinylm::engine {
namespace {

// Adds two rows' lanes in interleaved pairs: per 128-bit lane, (a0 + a2, b0 + b2,
// a1 + a3, b1 + b3) of a's and b's int32 lanes 0-3.
inline __m512i pair_sum(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}

struct Avx512VnniI8 {
  using Acc = __m512i;
  using X = __m512i;
  static constexpr int64_t kWidth = 64;
  static constexpr int32_t kBias = 128;
  static Acc zero() { return _mm512_setzero_si512(); }
  static __m512i load_w(const int8_t* p) {
    return _mm512_xor_si512(_mm512_loadu_si512((const void*)p), _mm512_set1_epi8(char(0x80)));
  }
  static X prepare_x(const int8_t* p) { return _mm512_loadu_si512((const void*)p); }
  static Acc dot(Acc acc, __m512i w, X x) { return _mm512_dpbusd_epi32(acc, w, x); }
  // Unpacks and adds, one uop each, rather than vphaddd (three): the sums of a `baby`
  // row (K = 128) are as many instructions as its products.
  static __m128i hsum4(Acc a0, Acc a1, Acc a2, Acc a3) {
    const __m512i s01 = pair_sum(a0, a1), s23 = pair_sum(a2, a3);
    const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23),  // per 128-bit lane:
                                       _mm512_unpackhi_epi64(s01, s23)); // a0 a1 a2 a3
    const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  }
};

}  // namespace

void gemv_i8_avx512vnni(const GemvI8& g, int64_t n0, int64_t n1) {
  streams::gemv_i8<Avx512VnniI8>(g, n0, n1);
}

}  // namespace tinylm::engine

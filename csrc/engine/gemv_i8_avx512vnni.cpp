// int8 GEMV for the decode step, AVX-512 VNNI: the four-stream loop of gemv_streams.h
// with 64 bytes per step. vpdpbusd multiplies unsigned by signed bytes, so w is biased
// to unsigned (w ^ 0x80 = w + 128) and 128 * sum(x) is taken off at the end.
// GCC 12's own AVX-512 headers trip -Wuninitialized (_mm256_undefined_* inside the
// 512-to-256-bit casts and extracts); the warning is not about our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "../int8/x86_reduce.h"
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "gemv_streams.h"

namespace tinylm::engine {
namespace {

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
  // The int8 family's unpack-and-add sums (one uop each, where vphaddd is three): the
  // sums of a `baby` row (K = 128) are as many instructions as its products.
  static __m128i hsum4(Acc a0, Acc a1, Acc a2, Acc a3) { return int8::lane_sums4(a0, a1, a2, a3); }
};

}  // namespace

void gemv_i8_avx512vnni(const GemvI8& g, int64_t n0, int64_t n1) {
  streams::gemv_i8<Avx512VnniI8>(g, n0, n1);
}

}  // namespace tinylm::engine

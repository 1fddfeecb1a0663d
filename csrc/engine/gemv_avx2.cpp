// AVX2 + FMA float32 GEMV: the four-stream loop of gemv_streams.h on 8-wide vectors;
// and the key/value cache's float-to-half conversion with F16C.
#include "../half.h"
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "gemv_streams.h"
#include "silu.h"

namespace tinylm::engine {
namespace {

struct Avx2 {
  using V = __m256;
  static constexpr int64_t kWidth = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

}  // namespace

void gemv_avx2(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
               bool prefetch) {
  streams::gemv_f32<Avx2>(W, x, y, K, n0, n1, prefetch);
}

void silu_mul_avx2(float* g, const float* u, int64_t n) { silu_mul_loop(g, u, n); }

// vcvtps2ph rounds to nearest, ties to even, as float_to_half does, and makes the same
// infinities and subnormal halves (its NaNs keep the top of the payload, where
// float_to_half's are all 0x7e00), except with flush-to-zero on (MXCSR.FTZ, as some
// -ffast-math library may leave it), which flushes subnormal halves too: the portable
// loop then. That loop took ~6% of a `baby` int8 step.
void halves_f16c(const float* x, uint16_t* h, int64_t n) {
  if (_mm_getcsr() & _MM_FLUSH_ZERO_ON) return floats_to_halves(x, h, n);
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i*)(h + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), kNearest));
  for (; i < n; ++i) h[i] = uint16_t(_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(x[i]), kNearest), 0));
}

}  // namespace tinylm::engine

// AVX-512 float32 GEMV: the four-stream loop of gemv_streams.h on 16-wide vectors. Uses
// only intrinsics SIMDe implements, so the native test driver can check the logic on a
// CPU without AVX-512.
// GCC 12's own AVX-512 headers trip -Wuninitialized (_mm256_undefined_* inside the
// 512-to-256-bit casts and extracts); the warning is not about our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "gemv_streams.h"
#include "silu.h"

namespace tinylm::engine {
namespace {

struct Avx512 {
  using V = __m512;
  static constexpr int64_t kWidth = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static float hsum(V v) {
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

}  // namespace

void gemv_avx512(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
                 bool prefetch) {
  streams::gemv_f32<Avx512>(W, x, y, K, n0, n1, prefetch);
}

void silu_mul_avx512(float* g, const float* u, int64_t n) { silu_mul_loop(g, u, n); }

}  // namespace tinylm::engine

// AVX2 + FMA float32 GEMV, as gemv_avx512.cpp with 8-wide vectors: four rows at a time,
// one from each quarter of the range, so that x is loaded once for four rows and the
// weights are read as four long sequential streams; each row sums in the same order
// whether it is one of four or alone (two accumulators, the 8-wide tail, the scalar
// tail), so its result does not depend on how the rows are split.
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "silu.h"

namespace tinylm::engine {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// A row's sum after its accumulators: the 8-wide tail, then the scalar tail.
inline float finish(__m256 a0, __m256 a1, const float* w, const float* x, int64_t k, int64_t K) {
  float s = hsum(_mm256_add_ps(a0, a1));
  for (; k + 8 <= K; k += 8) s += hsum(_mm256_mul_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k)));
  for (; k < K; ++k) s += w[k] * x[k];
  return s;
}

}  // namespace

void gemv_avx2(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1) {
  const int64_t q = (n1 - n0) / 4, whole = K / 16 * 16;
  const int64_t stride = q * K;  // from one quarter's row to the next's
  for (int64_t n = n0; n < n0 + q; ++n) {
    const float* w = W + n * K;
    __m256 a[4][2];
    for (auto& r : a) r[0] = r[1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < whole; k += 16) {
      const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
      for (int r = 0; r < 4; ++r) {
        a[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(w + r * stride + k), x0, a[r][0]);
        a[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(w + r * stride + k + 8), x1, a[r][1]);
      }
    }
    for (int r = 0; r < 4; ++r) y[n + r * q] = finish(a[r][0], a[r][1], w + r * stride, x, whole, K);
  }
  for (int64_t n = n0 + 4 * q; n < n1; ++n) {  // the rest one at a time
    const float* w = W + n * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    for (int64_t k = 0; k < whole; k += 16) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
    }
    y[n] = finish(a0, a1, w, x, whole, K);
  }
}

void silu_mul_avx2(float* g, const float* u, int64_t n) { silu_mul_loop(g, u, n); }

}  // namespace tinylm::engine

// AVX2 + FMA float32 GEMV: four rows at a time (four weight streams, one load of x
// serves all four), two 8-wide accumulators per row to hide the FMA latency.
#include <immintrin.h>

#include "gemv_kernels.h"

namespace tinylm::engine {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R>
void rows(const float* W, const float* x, float* y, int64_t K, int64_t n) {
  __m256 a[R][2];
  const float* w[R];
  for (int r = 0; r < R; ++r) {
    a[r][0] = a[r][1] = _mm256_setzero_ps();
    w[r] = W + (n + r) * K;
  }
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
    for (int r = 0; r < R; ++r) {
      a[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(w[r] + k), x0, a[r][0]);
      a[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(w[r] + k + 8), x1, a[r][1]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    const __m256 x0 = _mm256_loadu_ps(x + k);
    for (int r = 0; r < R; ++r) a[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(w[r] + k), x0, a[r][0]);
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(_mm256_add_ps(a[r][0], a[r][1]));
    for (int64_t t = k; t < K; ++t) s += w[r][t] * x[t];
    y[n + r] = s;
  }
}

}  // namespace

void gemv_avx2(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) rows<4>(W, x, y, K, n);
  for (; n < n1; ++n) rows<1>(W, x, y, K, n);
}

}  // namespace tinylm::engine

// AVX-512 float32 GEMV: four rows at a time, 16-wide FMA, a masked load for the tail of
// K (so no scalar loop), two accumulators per row.
#include <immintrin.h>

#include "gemv_kernels.h"

namespace tinylm::engine {
namespace {

template <int R>
void rows(const float* W, const float* x, float* y, int64_t K, int64_t n) {
  __m512 a[R][2];
  const float* w[R];
  for (int r = 0; r < R; ++r) {
    a[r][0] = a[r][1] = _mm512_setzero_ps();
    w[r] = W + (n + r) * K;
  }
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
    for (int r = 0; r < R; ++r) {
      a[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(w[r] + k), x0, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(_mm512_loadu_ps(w[r] + k + 16), x1, a[r][1]);
    }
  }
  for (; k < K; k += 16) {
    const int64_t left = K - k;
    const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    const __m512 x0 = _mm512_maskz_loadu_ps(m, x + k);
    for (int r = 0; r < R; ++r)
      a[r][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w[r] + k), x0, a[r][0]);
  }
  for (int r = 0; r < R; ++r) y[n + r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1]));
}

}  // namespace

void gemv_avx512(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) rows<4>(W, x, y, K, n);
  for (; n < n1; ++n) rows<1>(W, x, y, K, n);
}

}  // namespace tinylm::engine

// AVX-512 float32 GEMV. Four rows at a time, one from each quarter of the range (rows n,
// n + q, n + 2q, n + 3q): each vector of x is loaded once for four rows, and the weights
// are read as four long sequential streams, which the hardware prefetchers follow (four
// adjacent rows at once, four short interleaved streams, was measured slower than one
// row at a time on a matrix larger than the caches; four quarters are 15-20% faster
// than one row at a time on the `small` and `medium` presets' matrices). Each row sums
// in the same order whether it is one of four or alone (two 16-wide accumulators, then
// the 16-wide tail, then the scalar tail), so its result does not depend on how the
// rows are split. Uses only intrinsics SIMDe implements, so the native test driver can
// check the logic on a CPU without AVX-512.
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "silu.h"

namespace tinylm::engine {
namespace {

inline float hsum(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256 s8 = _mm256_add_ps(lo, hi);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// A row's sum after its accumulators: the 16-wide tail, then the scalar tail.
inline float finish(__m512 a0, __m512 a1, const float* w, const float* x, int64_t k, int64_t K) {
  float s = hsum(_mm512_add_ps(a0, a1));
  for (; k + 16 <= K; k += 16) s += hsum(_mm512_mul_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k)));
  for (; k < K; ++k) s += w[k] * x[k];
  return s;
}

}  // namespace

void gemv_avx512(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1) {
  const int64_t q = (n1 - n0) / 4, whole = K / 32 * 32;
  const int64_t stride = q * K;  // from one quarter's row to the next's
  for (int64_t n = n0; n < n0 + q; ++n) {
    const float* w = W + n * K;
    __m512 a[4][2];
    for (auto& r : a) r[0] = r[1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < whole; k += 32) {
      const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
      for (int r = 0; r < 4; ++r) {
        a[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(w + r * stride + k), x0, a[r][0]);
        a[r][1] = _mm512_fmadd_ps(_mm512_loadu_ps(w + r * stride + k + 16), x1, a[r][1]);
      }
    }
    for (int r = 0; r < 4; ++r) y[n + r * q] = finish(a[r][0], a[r][1], w + r * stride, x, whole, K);
  }
  for (int64_t n = n0 + 4 * q; n < n1; ++n) {  // the rest one at a time
    const float* w = W + n * K;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    for (int64_t k = 0; k < whole; k += 32) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
    }
    y[n] = finish(a0, a1, w, x, whole, K);
  }
}

void silu_mul_avx512(float* g, const float* u, int64_t n) { silu_mul_loop(g, u, n); }

}  // namespace tinylm::engine

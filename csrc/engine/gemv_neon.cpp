// NEON float32 GEMV: four rows at a time, 4-wide fused multiply-adds, two accumulators
// per row. Works on aarch64 and 32-bit ARMv7 with NEON (vmlaq there, no FMA needed).
#include <arm_neon.h>

#include "gemv_kernels.h"
#include "silu.h"

namespace tinylm::engine {
namespace {

inline float32x4_t mla(float32x4_t a, float32x4_t b, float32x4_t c) {
#if defined(__aarch64__)
  return vfmaq_f32(a, b, c);
#else
  return vmlaq_f32(a, b, c);
#endif
}

inline float hsum(float32x4_t v) {
  const float32x2_t s = vadd_f32(vget_low_f32(v), vget_high_f32(v));
  return vget_lane_f32(vpadd_f32(s, s), 0);
}

template <int R>
void rows(const float* W, const float* x, float* y, int64_t K, int64_t n) {
  float32x4_t a[R][2];
  const float* w[R];
  for (int r = 0; r < R; ++r) {
    a[r][0] = a[r][1] = vdupq_n_f32(0.0f);
    w[r] = W + (n + r) * K;
  }
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const float32x4_t x0 = vld1q_f32(x + k), x1 = vld1q_f32(x + k + 4);
    for (int r = 0; r < R; ++r) {
      a[r][0] = mla(a[r][0], vld1q_f32(w[r] + k), x0);
      a[r][1] = mla(a[r][1], vld1q_f32(w[r] + k + 4), x1);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(vaddq_f32(a[r][0], a[r][1]));
    for (int64_t t = k; t < K; ++t) s += w[r][t] * x[t];
    y[n + r] = s;
  }
}

}  // namespace

void gemv_neon(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
               bool /*prefetch*/) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) rows<4>(W, x, y, K, n);
  for (; n < n1; ++n) rows<1>(W, x, y, K, n);
}

void silu_mul_neon(float* g, const float* u, int64_t n) { silu_mul_loop(g, u, n); }

}  // namespace tinylm::engine

// The scalar float32 GEMV: the reference for the SIMD kernels and the path for CPUs
// without one. Four partial sums (as a 4-wide SIMD lane set would keep) so that the
// compiler may pipeline it without reassociating.
#include "gemv_kernels.h"
#include "silu.h"

namespace tinylm::engine {

void gemv_ref(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
              bool /*prefetch*/) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* w = W + n * K;
    float s[4] = {0, 0, 0, 0};
    int64_t k = 0;
    for (; k + 4 <= K; k += 4)
      for (int j = 0; j < 4; ++j) s[j] += w[k + j] * x[k + j];
    float tail = 0;
    for (; k < K; ++k) tail += w[k] * x[k];
    y[n] = ((s[0] + s[1]) + (s[2] + s[3])) + tail;
  }
}

void silu_mul_ref(float* g, const float* u, int64_t n) { silu_mul_loop(g, u, n); }

}  // namespace tinylm::engine

// The scalar int8 GEMV: exact int32 dot products, the reference for the SIMD versions.
#include "gemv_kernels.h"

namespace tinylm::engine {

void gemv_i8_ref(const GemvI8& g, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = g.W + n * g.K;
    int32_t s = 0;
    for (int64_t k = 0; k < g.K; ++k) s += int32_t(w[k]) * int32_t(g.x[k]);
    g.c[n] = s;
  }
}

void rescale_ref(const int32_t* c, const float* scale, float x_scale, float* y, int64_t count) {
  for (int64_t n = 0; n < count; ++n) y[n] = float(c[n]) * (x_scale * scale[n]);
}

}  // namespace tinylm::engine

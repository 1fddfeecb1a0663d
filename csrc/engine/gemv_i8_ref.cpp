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

}  // namespace tinylm::engine

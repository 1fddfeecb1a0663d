// The scalar reference: the definition every SIMD kernel must match exactly, and the
// path used on CPUs without a SIMD kernel. Deliberately the plain triple loop.
#include "kernels.h"

namespace tinylm::int8 {

void gemm_ref(const Problem& p, int64_t n_begin, int64_t n_end) {
  for (int64_t m = 0; m < p.M; ++m) {
    const int8_t* x = p.x + m * p.x_stride;
    for (int64_t n = n_begin; n < n_end; ++n) {
      const int8_t* w = p.w + n * p.K;
      int32_t sum = 0;
      for (int64_t k = 0; k < p.K; ++k) sum += int32_t(x[k]) * int32_t(w[k]);
      write_row(p, m, n, &sum, 1, 0);
    }
  }
}

}  // namespace tinylm::int8

// The scalar int8 GEMV over panels (gemv_panels.h): exact int32 dot products, the
// reference for the SIMD versions.
#include <vector>

#include "gemv_kernels.h"

namespace tinylm::engine {
namespace {


// The exact sums c[n - n0] for the rows [n0, n1).
void sums(const int8_t* W, int64_t K, const int8_t* x, int64_t n0, int64_t n1, int32_t* c) {
  const int64_t groups = panel_groups(K);
  for (int64_t n = n0; n < n1; ++n) {
    // row n's four bytes of each group sit at the same place in every group of its panel
    const int8_t* w = W + n / kPanelRows * groups * kPanelBytesPerGroup + n % kPanelRows * 4;
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += int32_t(w[k / 4 * kPanelBytesPerGroup + k % 4]) * int32_t(x[k]);
    c[n - n0] = s;
  }
}

}  // namespace

void gemv_panels_ref(const PanelGemv& g, int64_t n0, int64_t n1) {
  std::vector<int32_t> c(static_cast<std::size_t>(n1 - n0));
  sums(g.W, g.K, g.x, n0, n1, c.data());
  for (int64_t n = n0; n < n1; ++n)
    g.y[n - n0] = float(c[std::size_t(n - n0)]) * (g.x_scale * g.scale[n]);
}

void gemm_panels_ref(const PanelGemm& g, int64_t n0, int64_t n1) {
  for (int64_t t = 0; t < g.T; ++t)
    gemv_panels_ref({g.W, g.K, g.scale, g.x + t * g.x_stride, 0, g.x_scale[t], g.y + t * g.y_stride},
                    n0, n1);
}

}  // namespace tinylm::engine

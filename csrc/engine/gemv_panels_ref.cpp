// The scalar int8 GEMV over panels (gemv_panels.h): exact int32 dot products, the
// reference for the SIMD versions.
#include <vector>

#include "gemv_kernels.h"

namespace tinylm::engine {

void gemv_panels_ref(const PanelGemv& g, int64_t n0, int64_t n1) {
  const int64_t groups = panel_groups(g.K);
  for (int64_t n = n0; n < n1; ++n) {
    // row n's four bytes of each group sit at the same place in every group of its panel
    const int8_t* w = g.W + n / kPanelRows * groups * kPanelBytesPerGroup + n % kPanelRows * 4;
    int32_t s = 0;
    for (int64_t k = 0; k < g.K; ++k)
      s += int32_t(w[k / 4 * kPanelBytesPerGroup + k % 4]) * int32_t(g.x[k]);
    g.c[n - n0] = s;
  }
}

void gemm_panels_ref(const PanelGemm& g, int64_t n0, int64_t n1) {
  std::vector<int32_t> c(static_cast<std::size_t>(n1 - n0));
  for (int64_t t = 0; t < g.T; ++t) {
    gemv_panels_ref({g.W, g.K, g.x + t * g.x_stride, 0, c.data()}, n0, n1);
    for (int64_t n = n0; n < n1; ++n)
      g.y[t * g.y_stride + n - n0] = float(c[std::size_t(n - n0)]) * (g.x_scale[t] * g.scale[n]);
  }
}

void rescale_ref(const int32_t* c, const float* scale, float x_scale, float* y, int64_t count) {
  for (int64_t n = 0; n < count; ++n) y[n] = float(c[n]) * (x_scale * scale[n]);
}

}  // namespace tinylm::engine

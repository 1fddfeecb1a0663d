// int8 GEMV over panels (gemv_panels.h), NEON dotprod (ARMv8.2 sdot: Raspberry Pi 5,
// Apple M, Neoverse): a group of a panel is four vectors, and one sdot adds four rows'
// four products into their four lanes. Signed by signed: no bias.
#include <arm_neon.h>

#include "gemv_kernels.h"
#include "gemv_panels.h"
#include "gemv_panels_neon.h"

namespace tinylm::engine {
namespace {

struct NeonDot {
  struct Acc {
    int32x4_t rows[4];  // rows 0-3, 4-7, 8-11, 12-15
  };
  using W = NeonGroup;
  using X = int8x16_t;
  static constexpr int kChains = 2;
#if defined(__aarch64__)
  static constexpr int kRows = 4;  // 16 accumulators + 4 w + x of 32 registers
#else
  static constexpr int kRows = 2;  // 8 + 4 + 1 of 16
#endif
  static constexpr int kPanels = 1;
  static constexpr int32_t kBias = 0;
  static Acc zero() {
    Acc a;
    for (auto& v : a.rows) v = vdupq_n_s32(0);
    return a;
  }
  static W load(const int8_t* w) { return load_group(w); }
  static X broadcast(const int8_t* x) { return vreinterpretq_s8_s32(broadcast4(x)); }
  static Acc dot(Acc acc, const W& w, X xv) {
    for (int q = 0; q < 4; ++q) acc.rows[q] = vdotq_s32(acc.rows[q], w.rows[q], xv);
    return acc;
  }
  static Acc add(Acc a, Acc b) {
    for (int q = 0; q < 4; ++q) a.rows[q] = vaddq_s32(a.rows[q], b.rows[q]);
    return a;
  }
  static void store(int32_t* out, Acc a) {
    for (int q = 0; q < 4; ++q) vst1q_s32(out + 4 * q, a.rows[q]);
  }
};

}  // namespace

void gemv_panels_neon_dotprod(const PanelGemv& g, int64_t n0, int64_t n1) {
  panels::gemv<NeonDot>(g, n0, n1);
}

void gemm_panels_neon_dotprod(const PanelGemm& g, int64_t n0, int64_t n1) {
  panels::gemm<NeonDot>(g, n0, n1);
}

}  // namespace tinylm::engine

// int8 GEMV over panels (gemv_panels.h), NEON without dotprod (ARMv8.0, the Raspberry Pi
// 3 and 4; and ARMv7): a group of a panel is four vectors of four rows' four bytes. smull
// multiplies two rows' bytes by x's four (int16 products, at most 127 * 127) and sadalp
// adds neighbouring pairs into 32-bit lanes, two a row; the two are added at the end.
#include <arm_neon.h>

#include "gemv_kernels.h"
#include "gemv_panels.h"
#include "gemv_panels_neon.h"

namespace tinylm::engine {
namespace {

struct Neon {
  struct Acc {
    int32x4_t pairs[8];  // per vector of four rows: rows 0-1, then 2-3, two lanes a row
  };
  using W = NeonGroup;
  using X = int8x8_t;
  static constexpr int kChains = 1;
#if defined(__aarch64__)
  static constexpr int kRows = 2;  // 16 accumulators + 4 w + x of 32 registers
#else
  static constexpr int kRows = 1;  // 8 + 4 + 1 of 16
#endif
  static constexpr int kPanels = 1;
  static constexpr int32_t kBias = 0;
  static Acc zero() {
    Acc a;
    for (auto& v : a.pairs) v = vdupq_n_s32(0);
    return a;
  }
  static W load(const int8_t* w) { return load_group(w); }
  static X broadcast(const int8_t* x) { return vget_low_s8(vreinterpretq_s8_s32(broadcast4(x))); }
  static Acc dot(Acc acc, const W& w, X xv) {
    for (int q = 0; q < 4; ++q) {
      acc.pairs[2 * q] = vpadalq_s16(acc.pairs[2 * q], vmull_s8(vget_low_s8(w.rows[q]), xv));
      acc.pairs[2 * q + 1] = vpadalq_s16(acc.pairs[2 * q + 1], vmull_s8(vget_high_s8(w.rows[q]), xv));
    }
    return acc;
  }
  static Acc add(Acc a, Acc b) {
    for (int i = 0; i < 8; ++i) a.pairs[i] = vaddq_s32(a.pairs[i], b.pairs[i]);
    return a;
  }
  static void store(int32_t* out, Acc a) {
    for (int q = 0; q < 4; ++q) {
      const int32x4_t lo = a.pairs[2 * q], hi = a.pairs[2 * q + 1];
      const int32x2_t rows01 = vpadd_s32(vget_low_s32(lo), vget_high_s32(lo));
      const int32x2_t rows23 = vpadd_s32(vget_low_s32(hi), vget_high_s32(hi));
      vst1q_s32(out + 4 * q, vcombine_s32(rows01, rows23));
    }
  }
};

}  // namespace

void gemv_panels_neon(const PanelGemv& g, int64_t n0, int64_t n1) { panels::gemv<Neon>(g, n0, n1); }

void gemm_panels_neon(const PanelGemm& g, int64_t n0, int64_t n1) { panels::gemm<Neon>(g, n0, n1); }

}  // namespace tinylm::engine

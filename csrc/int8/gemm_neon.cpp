// NEON int8 kernel for ARMv8.0 (Raspberry Pi 4) and 32-bit ARMv7 NEON.
//
// smull multiplies 8 signed byte pairs into int16, smlal adds the next 8 products onto
// them (two products of [-127, 127] values sum to at most 32258, so int16 holds them),
// and sadalp adds adjacent int16 pairs into the int32 accumulator. Written with
// intrinsics that exist on both AArch64 and AArch32 (vget_high_s8, not vmull_high_s8).
#include <arm_neon.h>

#include "kernels.h"
#include "tiles.h"

namespace tinylm::int8 {
namespace {

struct Neon {
  static constexpr int kWidth = 16;
#if defined(__aarch64__)
  static constexpr int kMR = 4, kNR = 4;  // 16 accumulators of 32 q registers
#else
  static constexpr int kMR = 2, kNR = 2;  // AArch32 has only 16 q registers
#endif
  static constexpr int32_t kBias = 0;
  using Acc = int32x4_t;
  using W = int8x16_t;
  using X = int8x16_t;

  static Acc zero() { return vdupq_n_s32(0); }
  static W load_w(const int8_t* p) { return vld1q_s8(p); }
  static W load_w_tail(const int8_t* p, int bytes) {
    tiles::Tail<Neon> t(p, bytes);
    return vld1q_s8(t.b);
  }
  static X load_x(const int8_t* p) { return vld1q_s8(p); }
  static Acc dot(Acc acc, X x, W w) {
    int16x8_t prod = vmull_s8(vget_low_s8(x), vget_low_s8(w));
    prod = vmlal_s8(prod, vget_high_s8(x), vget_high_s8(w));
    return vpadalq_s16(acc, prod);
  }
  template <int NR>
  static void reduce(const Acc* acc, int32_t* out) {
    for (int j = 0; j < NR; ++j) {
      int32x2_t s = vadd_s32(vget_low_s32(acc[j]), vget_high_s32(acc[j]));
      s = vpadd_s32(s, s);
      out[j] = vget_lane_s32(s, 0);
    }
  }
};

}  // namespace

void gemm_neon(const Problem& p, int64_t n_begin, int64_t n_end) {
  tiles::gemm<Neon>(p, n_begin, n_end);
}

}  // namespace tinylm::int8

// NEON dotprod int8 kernel (ARMv8.2 sdot: Raspberry Pi 5, Apple M, Neoverse): each sdot
// multiplies 16 signed byte pairs and adds groups of four into the four int32 lanes.
// Also builds for AArch32 with -march=armv8.2-a+dotprod.
#include <arm_neon.h>

#include <cstring>

#include "kernels.h"
#include "panels.h"
#include "tiles.h"

namespace tinylm::int8 {
namespace {

struct NeonDot {
  static constexpr int kWidth = 16;
#if defined(__aarch64__)
  static constexpr int kMR = 4, kNR = 4;
#else
  static constexpr int kMR = 2, kNR = 2;
#endif
  static constexpr int32_t kBias = 0;
  using Acc = int32x4_t;
  using W = int8x16_t;
  using X = int8x16_t;

  static Acc zero() { return vdupq_n_s32(0); }
  static W load_w(const int8_t* p) { return vld1q_s8(p); }
  static W load_w_tail(const int8_t* p, int bytes) {
    tiles::Tail<NeonDot> t(p, bytes);
    return vld1q_s8(t.b);
  }
  static X load_x(const int8_t* p) { return vld1q_s8(p); }
  static Acc dot(Acc acc, X x, W w) { return vdotq_s32(acc, x, w); }
  template <int NR>
  static void reduce(const Acc* acc, int32_t* out) {
    for (int j = 0; j < NR; ++j) {
      int32x2_t s = vadd_s32(vget_low_s32(acc[j]), vget_high_s32(acc[j]));
      s = vpadd_s32(s, s);
      out[j] = vget_lane_s32(s, 0);
    }
  }
};

// The packed form (panels.h): 4 output rows per vector, x broadcast four bytes at a time.
// sdot is signed x signed, so w needs no bias.
struct NeonDotPanels {
  static constexpr int kLanes = 4;
#if defined(__aarch64__)
  static constexpr int kMR = 6, kNR = 4;  // 24 accumulators + 4 w + x: 29 of 32 q registers
#else
  static constexpr int kMR = 3, kNR = 3;  // 9 + 3 + 1 of 16
#endif
  static constexpr int kPackGroups = 0;  // packed word by word
  static constexpr uint32_t kFlip = 0;
  static constexpr int32_t kBias = 0;
  using Acc = int32x4_t;
  using W = int8x16_t;
  using X = int8x16_t;

  static Acc zero() { return vdupq_n_s32(0); }
  static W load_w(const uint32_t* p) { return vreinterpretq_s8_u32(vld1q_u32(p)); }
  static X broadcast_x(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(v));
  }
  static Acc dot(Acc acc, W w, X x) { return vdotq_s32(acc, w, x); }
  static void store(int32_t* out, Acc acc) { vst1q_s32(out, acc); }
};

}  // namespace

void gemm_neon_dotprod(const Problem& p, int64_t n_begin, int64_t n_end) {
  if (p.M >= panels::kMinRows)
    panels::gemm<NeonDotPanels>(p, n_begin, n_end);
  else
    tiles::gemm<NeonDot>(p, n_begin, n_end);
}

}  // namespace tinylm::int8

// NEON tile kernels (ARMv8.0 AArch64, and 32-bit ARM with NEON + VFPv4 FMA): 4 floats per
// vector. AArch64 has 32 vector registers (6 x 16 blocks), 32-bit ARM 16 (4 x 8 blocks).
// Only intrinsics that exist on both are used outside `#if defined(__aarch64__)`.
#include <arm_neon.h>

#include "attention_tiled.h"

namespace tinylm::attention::detail {
namespace {

struct Neon {
  using V = float32x4_t;
  static constexpr int W = 4, TB = 4;  // TB: transpose_block's size
#if defined(__aarch64__)
  static constexpr int R = 6, NV = 4;
#else
  static constexpr int R = 4, NV = 2;
#endif

  static V zero() { return vdupq_n_f32(0.f); }
  static V set1(float x) { return vdupq_n_f32(x); }
  static V load(const float* p) { return vld1q_f32(p); }
  // 32-bit ARM: needs -mfp16-format=ieee (build_isa.py) and VFPv4's half conversions
  static V load_half(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static void store(float* p, V v) { vst1q_f32(p, v); }
  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V sub(V a, V b) { return vsubq_f32(a, b); }
  static V mul(V a, V b) { return vmulq_f32(a, b); }
  static V max(V a, V b) { return vmaxq_f32(a, b); }
  static V fma(V a, V b, V c) { return vfmaq_f32(c, a, b); }
  // Round to nearest for |x| < 128 without ARMv8-only rounding instructions: shift into
  // positive range, truncate, shift back.
  static V round(V x) {
    const int32x4_t t = vcvtq_s32_f32(vaddq_f32(x, vdupq_n_f32(128.5f)));
    return vcvtq_f32_s32(vsubq_s32(t, vdupq_n_s32(128)));
  }
  static V pow2(V n) {
    const int32x4_t e = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
    return vreinterpretq_f32_s32(vshlq_n_s32(e, 23));
  }
  // dst[c * ldd + r] = src[r * lds + c] for r, c in [0, 4).
  static void transpose_block(const float* src, int64_t lds, float* dst, int64_t ldd) {
    // vtrnq pairs up rows 0,1 and 2,3: .val[0] = a0 b0 a2 b2, .val[1] = a1 b1 a3 b3.
    const float32x4x2_t ab = vtrnq_f32(vld1q_f32(src), vld1q_f32(src + lds));
    const float32x4x2_t cd = vtrnq_f32(vld1q_f32(src + 2 * lds), vld1q_f32(src + 3 * lds));
    vst1q_f32(dst, vcombine_f32(vget_low_f32(ab.val[0]), vget_low_f32(cd.val[0])));
    vst1q_f32(dst + ldd, vcombine_f32(vget_low_f32(ab.val[1]), vget_low_f32(cd.val[1])));
    vst1q_f32(dst + 2 * ldd, vcombine_f32(vget_high_f32(ab.val[0]), vget_high_f32(cd.val[0])));
    vst1q_f32(dst + 3 * ldd, vcombine_f32(vget_high_f32(ab.val[1]), vget_high_f32(cd.val[1])));
  }
  static V zero_below(V v, V x, V lo) {
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), vcgeq_f32(x, lo)));
  }
  static float hsum(V v) {
#if defined(__aarch64__)
    return vaddvq_f32(v);
#else
    float32x2_t s = vadd_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(vpadd_f32(s, s), 0);
#endif
  }
  static void hsum4(V a, V b, V c, V d, float scale, float* out) {
#if defined(__aarch64__)  // pairwise adds: [a01 a23 b01 b23], [c.. d..], then [a b c d]
    const V s = vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d));
#else
    auto fold = [](V v) { return vadd_f32(vget_low_f32(v), vget_high_f32(v)); };
    const V s = vcombine_f32(vpadd_f32(fold(a), fold(b)), vpadd_f32(fold(c), fold(d)));
#endif
    vst1q_f32(out, vmulq_n_f32(s, scale));
  }
  static float hmax(V v) {
#if defined(__aarch64__)
    return vmaxvq_f32(v);
#else
    float32x2_t s = vmax_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(vpmax_f32(s, s), 0);
#endif
  }
};

}  // namespace

const TileKernels* neon_kernels() { return Tiled<Neon>::table("neon"); }

}  // namespace tinylm::attention::detail

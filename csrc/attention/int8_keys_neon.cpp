// Scores over int8 keys, NEON (AArch64 and ARMv7): a block's 64-byte rows each hold 4
// dimensions of its 16 positions, four vectors of 4 positions. The key bytes lose their
// bias (xor 0x80 turns k + 128 into k, signed); vmull_s8 multiplies 2 positions' 4
// dimensions by the query's 4 bytes at a time into int16 (at most 128 * 127), vpadalq
// adds them in pairs to int32 sums, and the pairs of sums are added at the end. The
// query's bias correction is not needed.
#include <arm_neon.h>

#include <cstring>

#include "kernels.h"

namespace tinylm::attention::detail {
namespace {

// [a0 + a1, a2 + a3, b0 + b1, b2 + b3]
inline int32x4_t pair_sums(int32x4_t a, int32x4_t b) {
#if defined(__aarch64__)
  return vpaddq_s32(a, b);
#else
  return vcombine_s32(vpadd_s32(vget_low_s32(a), vget_high_s32(a)),
                      vpadd_s32(vget_low_s32(b), vget_high_s32(b)));
#endif
}

}  // namespace

void int8_scores_neon(const Int8Scores& j) {
  const int64_t Dq = j.Dq, block_bytes = kKeyBlock * Dq * 4;
  const uint8x16_t bias = vdupq_n_u8(0x80);
  const float32x4_t q_scale = vdupq_n_f32(j.q_scale);
  for (int64_t b = 0; b < j.blocks; ++b) {
    const uint8_t* k = j.keys + b * block_bytes;
    if (j.ahead != nullptr)
      for (int64_t a = 0; a < j.ahead_bytes; a += 64) __builtin_prefetch(j.ahead + b * j.ahead_bytes + a);
    int32x4_t lo[4], hi[4];  // per 4 positions: dimensions' pair sums of the first two, last two
    for (int v = 0; v < 4; ++v) lo[v] = hi[v] = vdupq_n_s32(0);
    for (int64_t g = 0; g < Dq; ++g) {
      int32_t word;
      std::memcpy(&word, j.q + 4 * g, 4);
      const int8x16_t q = vreinterpretq_s8_s32(vdupq_n_s32(word));
      for (int v = 0; v < 4; ++v) {
        const int8x16_t key = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(k + g * 64 + v * 16), bias));
        lo[v] = vpadalq_s16(lo[v], vmull_s8(vget_low_s8(key), vget_low_s8(q)));
        hi[v] = vpadalq_s16(hi[v], vmull_s8(vget_high_s8(key), vget_high_s8(q)));
      }
    }
    for (int v = 0; v < 4; ++v) {
      const int64_t t = b * kKeyBlock + v * 4;
      const float32x4_t f = vcvtq_f32_s32(pair_sums(lo[v], hi[v]));
      vst1q_f32(j.s + t, vmulq_f32(vmulq_f32(f, q_scale), vld1q_f32(j.key_scales + t)));
    }
  }
}

}  // namespace tinylm::attention::detail

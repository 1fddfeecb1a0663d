// The NEON scores over int8 keys, shared by int8_keys_neon.cpp and
// int8_keys_neon_dotprod.cpp (each compiled with its own flags): a block's 64-byte rows
// each hold 4 dimensions of its 16 positions, four vectors of 4 positions. The key bytes
// lose their bias (xor 0x80 turns k + 128 into k, signed), so the query's bias
// correction is not needed. Dots is how a vector of 4 positions' 4 dimensions meets the
// query's 4 bytes: Dots::Sums holds a block's sums, Dots::add adds a vector into them,
// Dots::sums gives the int32 sums of positions 4v .. 4v + 3.
#pragma once

#include <arm_neon.h>

#include <cstring>

#include "kernels.h"

namespace tinylm::attention::detail {
namespace {

template <class Dots>
void neon_int8_scores(const Int8Scores& j) {
  const int64_t Dq = j.Dq, block_bytes = kKeyBlock * Dq * 4;
  const uint8x16_t bias = vdupq_n_u8(0x80);
  const float32x4_t q_scale = vdupq_n_f32(j.q_scale);
  for (int64_t b = 0; b < j.blocks; ++b) {
    const uint8_t* k = j.keys + b * block_bytes;
    if (j.ahead != nullptr) ask_for_ahead(j, b, 1);
    typename Dots::Sums sums;
    for (int64_t g = 0; g < Dq; ++g) {
      int32_t word;
      std::memcpy(&word, j.q + 4 * g, 4);
      const int8x16_t q = vreinterpretq_s8_s32(vdupq_n_s32(word));
      for (int v = 0; v < 4; ++v)
        Dots::add(sums, v, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(k + g * 64 + v * 16), bias)), q);
    }
    for (int v = 0; v < 4; ++v) {
      const int64_t t = b * kKeyBlock + v * 4;
      const float32x4_t f = vcvtq_f32_s32(Dots::sums(sums, v));
      vst1q_f32(j.s + t, vmulq_f32(vmulq_f32(f, q_scale), vld1q_f32(j.key_scales + t)));
    }
  }
}

}  // namespace
}  // namespace tinylm::attention::detail

// What the NEON panel kernels (gemv_panels.h) share: a group of weights as four vectors,
// rows 0-3, 4-7, 8-11 and 12-15, and x's four bytes broadcast. In an anonymous
// namespace, so that each kernel file compiles its own copy with its own flags.
#pragma once

#include <arm_neon.h>

#include <cstdint>
#include <cstring>

namespace tinylm::engine {
namespace {

struct NeonGroup {
  int8x16_t rows[4];
};

inline NeonGroup load_group(const int8_t* w) {
  NeonGroup v;
  for (int q = 0; q < 4; ++q) v.rows[q] = vld1q_s8(w + 16 * q);
  return v;
}

inline int32x4_t broadcast4(const int8_t* x) {
  int32_t x4;
  std::memcpy(&x4, x, 4);
  return vdupq_n_s32(x4);
}

}  // namespace
}  // namespace tinylm::engine

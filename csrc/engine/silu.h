// The MLP's SiLU, g = silu(g) * u = g / (1 + e^-g) * u, as a plain loop that the compiler
// vectorizes: a call to expf in it would not be, and on small models the d_ff
// exponentials per layer cost as much as the layer's int8 products. Each float32 kernel
// file (gemv_*.cpp) compiles this loop with its own instruction-set flags, so it runs
// 16 wide under AVX-512, 8 under AVX2 and 4 under SSE2 or NEON.
//
// e^x = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2 (ln 2 in two parts, so r is
// exact), e^r from Cephes' expf polynomial: within 2 ulp of expf where e^x is a normal
// float, x in [-87.3, 88.0]. Outside it, x / ln 2 is clamped to [-126, 127] and r to
// [-ln 2 / 2, ln 2 / 2], so e^x stays finite and positive (silu(g) of g < -87 is then
// about -g e^-87 * u instead of ~0; nothing else changes). The clamps are on values that
// depend on x, not on x itself: clamping x lets GCC split off the constant cases and
// vectorize three divisions per element instead of one. GCC vectorizes the clamps only
// with -fno-trapping-math, which setup.py passes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace tinylm::engine {
// Internal linkage: each file that includes this compiles its own copy with its own
// instruction-set flags, and the linker must not merge them into one.
namespace {

inline float exp_poly(float x) {
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float y = std::min(std::max(x * 1.44269504088896341f, -126.0f), 127.0f);
  const float t = y + shifter;
  const float n = t - shifter;
  float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  r = std::min(std::max(r, -0.34657359f), 0.34657359f);
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;  // t's low mantissa bits hold n + 2^22
  std::memcpy(&bits, &t, 4);
  const int32_t scale_bits = ((bits - 0x4B400000) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &scale_bits, 4);
  return p * scale;
}

inline void silu_mul_loop(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + exp_poly(-g[i])) * u[i];
}

}  // namespace
}  // namespace tinylm::engine

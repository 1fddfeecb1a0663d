// IEEE 754 half precision (binary16, numpy's float16) to and from float, in portable
// C++: the key/value cache of int8 models is stored as halves (tinylm/engine.py), written
// by numpy in prefill and by the native engine in decode, so the two must round alike.
// float_to_half rounds to nearest, ties to even, as numpy's astype(np.float16) does:
// above the largest half (65504) to infinity, below the smallest subnormal to zero.
#pragma once

#include <cstdint>
#include <cstring>

namespace tinylm {

// Without branches, so that a loop over it vectorizes (the decode step converts every
// layer's new keys and values).
inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = x >> 16 & 0x8000;
  x &= 0x7fffffff;
  // >= 2^-14, a normal half: rebias the exponent from 127 to 15 and round the 13 bits
  // shifted out to nearest, ties to even (adding 0xfff and the kept lowest bit carries
  // exactly when the rest is above half, or half with an odd result; a carry out of the
  // mantissa steps the exponent up, as rounding should)
  const uint32_t normal = (x - 0x38000000 + 0xfff + (x >> 13 & 1)) >> 13;
  // below 2^-14, a subnormal half counts units of 2^-24: adding 0.5f, whose last bit is
  // worth 2^-24, leaves the value rounded (by the FPU: to nearest, ties to even) in the
  // low bits of the sum
  float sum = 0;
  std::memcpy(&sum, &x, 4);
  sum += 0.5f;
  uint32_t sum_bits;
  std::memcpy(&sum_bits, &sum, 4);
  const uint32_t subnormal = sum_bits - 0x3f000000;
  uint32_t h = x < 0x38800000 ? subnormal : normal;
  if (x >= 0x477ff000) h = x > 0x7f800000 ? 0x7e00 : 0x7c00;  // >= 65520: infinity; NaN
  return uint16_t(sign | h);
}

// Also without branches. The half's exponent and mantissa, shifted into a float's
// places, read as a float 2^112 times too small (a subnormal half as a subnormal float):
// one exact multiplication rebiases it. Only infinity and NaN need their exponent set.
inline float half_to_float(uint16_t h) {
  const uint32_t shifted = uint32_t(h & 0x7fff) << 13;
  float f;
  std::memcpy(&f, &shifted, 4);
  f *= 0x1p112f;
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if (shifted >= 0x0f800000) x = shifted | 0x7f800000;  // exponent 31: infinity, NaN
  x |= uint32_t(h & 0x8000) << 16;
  std::memcpy(&f, &x, 4);
  return f;
}

// Arrays of them: loops the compiler vectorizes.
inline void floats_to_halves(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}

inline void halves_to_floats(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

}  // namespace tinylm

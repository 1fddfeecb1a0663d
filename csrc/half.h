// IEEE 754 half precision (binary16, numpy's float16) to and from float, in portable
// C++: the key/value cache of int8 models is stored as halves (tinylm/engine.py), written
// by numpy's astype in the reference engine and by these functions in the native one, so
// the two must round alike. float_to_half rounds to nearest, ties to even, as numpy does:
// from 65520 up to infinity, at or below 2^-25 to zero (NaN payloads aside: any NaN
// becomes the quiet NaN 0x7e00, with its sign).
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

// Also without branches, and with no subnormal float anywhere, so that the result does
// not depend on the FPU flushing them (DAZ/FTZ, -ffast-math, 32-bit NEON): a normal
// half moves into a float's places with its exponent rebiased by 112; a subnormal one
// counts units of 2^-24 (an exact product of normal floats); exponent 31 is infinity/NaN.
inline float half_to_float(uint16_t h) {
  const uint32_t m = h & 0x3ff, e = h >> 10 & 0x1f;
  const uint32_t shifted = uint32_t(h & 0x7fff) << 13;
  uint32_t x = e == 0x1f ? shifted | 0x7f800000 : shifted + (112u << 23);
  const float sub = float(m) * 0x1p-24f;
  uint32_t sub_bits;
  std::memcpy(&sub_bits, &sub, 4);
  if (e == 0) x = sub_bits;
  x |= uint32_t(h & 0x8000) << 16;
  float f;
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

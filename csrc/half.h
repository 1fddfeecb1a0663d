// IEEE 754 half precision (binary16, numpy's float16) to and from float, in portable
// C++: the key/value cache of int8 models is stored as halves (tinylm/engine.py), written
// by numpy in prefill and by the native engine in decode, so the two must round alike.
// float_to_half rounds to nearest, ties to even, as numpy's astype(np.float16) does:
// above the largest half (65504) to infinity, below the smallest subnormal to zero.
#pragma once

#include <cstdint>
#include <cstring>

namespace tinylm {

inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t(x >> 16 & 0x8000);
  x &= 0x7fffffff;
  if (x > 0x7f800000) return sign | 0x7e00;       // NaN (quiet)
  if (x >= 0x477ff000) return sign | 0x7c00;      // >= 65520 rounds to infinity
  uint32_t h, rest, half_ulp;                      // h: the result truncated
  if (x >= 0x38800000) {                           // >= 2^-14: a normal half
    h = (x - 0x38000000) >> 13;                    // exponent rebiased from 127 to 15
    rest = x & 0x1fff, half_ulp = 0x1000;
  } else {                                         // a subnormal half: units of 2^-24
    const uint32_t shift = 126 - (x >> 23);        // >= 14
    if (shift > 24) return sign;                   // below 2^-25 (or exactly): zero
    const uint32_t mant = (x & 0x7fffff) | 0x800000;
    h = mant >> shift;
    rest = mant & ((1u << shift) - 1), half_ulp = 1u << (shift - 1);
  }
  if (rest > half_ulp || (rest == half_ulp && (h & 1))) ++h;  // may carry into the exponent
  return uint16_t(sign | h);
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, e = h >> 10 & 0x1f, m = h & 0x3ff;
  if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
    const float v = float(m) * (1.f / 16777216.f);
    return sign ? -v : v;
  }
  const uint32_t x = sign | (e == 0x1f ? 0x7f800000 | m << 13 : (e + 112) << 23 | m << 13);
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

}  // namespace tinylm

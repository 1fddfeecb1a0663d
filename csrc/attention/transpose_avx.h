// An 8 x 8 float transpose in AVX registers, shared by the AVX2 and AVX-512 attention
// files. Internal linkage, so each file keeps its own copy compiled with its own flags.
#pragma once

#include <cstdint>

#include "../simd_x86.h"

namespace tinylm::attention::detail {
namespace {

// dst[c * ldd + r] = src[r * lds + c] for r, c in [0, 8).
inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  // Interleave pairs of rows: t[2i] = r[2i][0] r[2i+1][0] r[2i][1] r[2i+1][1] | [4..5].
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  // Then pairs of pairs: each 128-bit half now holds one column of four rows.
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  // Rows 0-3 give the low half of each column, rows 4-7 the high half.
  for (int c = 0; c < 4; ++c) {
    _mm256_storeu_ps(dst + c * ldd, _mm256_permute2f128_ps(r[c], r[c + 4], 0x20));
    _mm256_storeu_ps(dst + (c + 4) * ldd, _mm256_permute2f128_ps(r[c], r[c + 4], 0x31));
  }
}

}  // namespace
}  // namespace tinylm::attention::detail

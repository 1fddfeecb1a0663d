// Horizontal sums of up to four int32 accumulators at once, for the x86 kernels.
// Everything here is in an anonymous namespace, so each kernel file gets its own copy
// compiled with its own flags (a shared inline function could be the AVX-512 build).
#pragma once

#include <cstdint>

#include "../simd_x86.h"

namespace tinylm::int8 {
namespace {

// Per 128-bit lane, two unpack+add rounds turn [a0..a3], [b..], [c..], [d..] into
// [sum a, sum b, sum c, sum d]; then the lanes are added.
template <class V>
inline __m128i lane_sums4(V a, V b, V c, V d);

template <>
inline __m128i lane_sums4<__m256i>(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
  const __m256i cd = _mm256_add_epi32(_mm256_unpacklo_epi32(c, d), _mm256_unpackhi_epi32(c, d));
  const __m256i s = _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd));
  return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

#if defined(__AVX512F__) || defined(TINYLM_SIMDE)
template <>
inline __m128i lane_sums4<__m512i>(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
  const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
  const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
#endif

template <int NR, class V>
inline void reduce4(const V* acc, int32_t* out) {
  const V zero = V{};
  const __m128i s = lane_sums4<V>(acc[0], NR > 1 ? acc[1] : zero, NR > 2 ? acc[2] : zero,
                                  NR > 3 ? acc[3] : zero);
  alignas(16) int32_t v[4];
  _mm_store_si128((__m128i*)v, s);
  for (int j = 0; j < NR; ++j) out[j] = v[j];
}

}  // namespace
}  // namespace tinylm::int8

// int8 GEMV for the decode step, AVX2: one row at a time, 32 bytes per step with the
// sign trick (vpmaddubsw needs an unsigned operand: take |x| and move x's sign onto w;
// with values in [-127, 127] a pair sum is at most 2 * 127 * 127 and never saturates),
// then vpmaddwd with ones into int32. As in gemv_i8_avx512vnni.cpp, a row reads on into
// the following rows against x's zero padding, and only the rows within a vector of the
// matrix's end take their tail from a zeroed buffer.
#include <algorithm>
#include <cstring>

#include "../simd_x86.h"
#include "gemv_kernels.h"

namespace tinylm::engine {
namespace {

inline __m256i dot32(__m256i acc, __m256i w, __m256i x, __m256i ones) {
  const __m256i prod16 = _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(w, x));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(prod16, ones));
}

inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

}  // namespace

void gemv_i8_avx2(const GemvI8& g, int64_t n0, int64_t n1) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t K = g.K, vectors = (K + 31) / 32;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = g.W + n * K;
    alignas(32) int8_t last[32];
    // whole vectors that lie inside the matrix (reading on into the following rows)
    const int64_t safe = std::min(vectors, (g.N - n) * K / 32);
    if (safe < vectors) {  // only near the matrix's end: the tail (< 32 bytes) from a buffer
      std::memset(last, 0, sizeof last);
      std::memcpy(last, w + safe * 32, size_t(K % 32));
    }
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t v = 0;
    for (; v + 4 <= safe; v += 4) {
      const int8_t* p = w + v * 32;
      const int8_t* q = g.x + v * 32;
      a0 = dot32(a0, _mm256_loadu_si256((const __m256i*)p), _mm256_loadu_si256((const __m256i*)q), ones);
      a1 = dot32(a1, _mm256_loadu_si256((const __m256i*)(p + 32)), _mm256_loadu_si256((const __m256i*)(q + 32)), ones);
      a2 = dot32(a2, _mm256_loadu_si256((const __m256i*)(p + 64)), _mm256_loadu_si256((const __m256i*)(q + 64)), ones);
      a3 = dot32(a3, _mm256_loadu_si256((const __m256i*)(p + 96)), _mm256_loadu_si256((const __m256i*)(q + 96)), ones);
    }
    for (; v < vectors; ++v) {
      const int8_t* p = v < safe ? w + v * 32 : last;
      a0 = dot32(a0, _mm256_loadu_si256((const __m256i*)p),
                 _mm256_loadu_si256((const __m256i*)(g.x + v * 32)), ones);
    }
    g.c[n] = hsum(_mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)));
  }
}

}  // namespace tinylm::engine

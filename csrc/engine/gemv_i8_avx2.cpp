// int8 GEMV for the decode step, AVX2: 32 bytes per step with the sign trick
// (vpmaddubsw needs an unsigned operand: take |x| and move x's sign onto w; with values
// in [-127, 127] a pair sum is at most 2 * 127 * 127 and never saturates), then vpmaddwd
// with ones into int32.
//
// As in gemv_i8_avx512vnni.cpp: four rows at a time, one from each quarter of the range,
// so |x| is computed once for four rows, the four horizontal sums are done together and
// the weights are read as four long sequential streams; a row reads on into the
// following rows against x's zero padding, and only the rows within a vector of the
// matrix's end take their tail from a zeroed buffer.
#include <algorithm>
#include <cstring>

#include "../simd_x86.h"
#include "gemv_kernels.h"

namespace tinylm::engine {
namespace {

// acc + the pairwise products of w and x, where ax = |x|.
inline __m256i dot32(__m256i acc, __m256i w, __m256i x, __m256i ax, __m256i ones) {
  const __m256i prod16 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w, x));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(prod16, ones));
}

// The lane sums of a0, a1, a2, a3, in that order.
inline __m128i hsum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
  const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
  return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

inline __m256i load(const int8_t* p) { return _mm256_loadu_si256((const __m256i*)p); }

}  // namespace

void gemv_i8_avx2(const GemvI8& g, int64_t n0, int64_t n1) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t K = g.K, vectors = (K + 31) / 32;
  // rows [n0, n0 + 4q) four at a time; the last of them must have its whole vectors
  // inside the matrix (reading on into the following rows)
  int64_t q = (n1 - n0) / 4;
  while (q > 0 && (g.N - (n0 + 4 * q - 1)) * K < vectors * 32) --q;
  const int64_t stride = q * K;  // from one quarter's row to the next's
  for (int64_t n = n0; n < n0 + q; ++n) {
    const int8_t* w = g.W + n * K;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t v = 0; v < vectors; ++v) {
      const __m256i x = load(g.x + v * 32), ax = _mm256_abs_epi8(x);
      const int8_t* p = w + v * 32;
      a0 = dot32(a0, load(p), x, ax, ones);
      a1 = dot32(a1, load(p + stride), x, ax, ones);
      a2 = dot32(a2, load(p + 2 * stride), x, ax, ones);
      a3 = dot32(a3, load(p + 3 * stride), x, ax, ones);
    }
    alignas(16) int32_t sums[4];
    _mm_store_si128((__m128i*)sums, hsum4(a0, a1, a2, a3));
    for (int j = 0; j < 4; ++j) g.c[n + j * q] = sums[j];
  }
  // the rest one at a time
  for (int64_t n = n0 + 4 * q; n < n1; ++n) {
    const int8_t* w = g.W + n * K;
    alignas(32) int8_t last[32];
    const int64_t safe = std::min(vectors, (g.N - n) * K / 32);  // whole vectors inside
    if (safe < vectors) {  // only near the matrix's end: the tail (< 32 bytes) from a buffer
      std::memset(last, 0, sizeof last);
      std::memcpy(last, w + safe * 32, size_t(K % 32));
    }
    __m256i a = _mm256_setzero_si256();
    for (int64_t v = 0; v < vectors; ++v) {
      const __m256i x = load(g.x + v * 32);
      a = dot32(a, load(v < safe ? w + v * 32 : last), x, _mm256_abs_epi8(x), ones);
    }
    const __m256i zero = _mm256_setzero_si256();
    g.c[n] = _mm_cvtsi128_si32(hsum4(a, zero, zero, zero));
  }
}

}  // namespace tinylm::engine

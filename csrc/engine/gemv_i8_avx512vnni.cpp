// int8 GEMV for the decode step, AVX-512 VNNI. vpdpbusd multiplies unsigned by signed
// bytes, so w is biased to unsigned (w ^ 0x80 = w + 128) and 128 * sum(x) is taken off
// at the end.
//
// Four rows at a time, one from each quarter of the range (rows n, n + q, n + 2q,
// n + 3q): each 64-byte vector of x is loaded once for four rows, the four horizontal
// sums are done together (with the small K of tiny models a row is only a few vectors
// long, so a reduction per row costs as much as its products), and the weights are read
// as four long sequential streams, which the hardware prefetchers follow (four adjacent
// rows at once were measured 2x slower than one row at a time on a matrix larger than
// the caches: four short interleaved streams defeat them).
//
// Why not the int8 family's GEMM with M = 1: it copies the last partial vector of every
// weight row into a buffer, which for K = 288 (the `small` preset) costs as much as the
// products. Here x is zero-padded to whole vectors and a row simply reads on into the
// following rows: those bytes meet x's zeros and add nothing. Only the rows within a
// vector of the matrix's end, where that would read past it, take their tail through a
// zeroed buffer (one row at a time).
#include <algorithm>
#include <cstring>

#include "../simd_x86.h"
#include "gemv_kernels.h"

namespace tinylm::engine {
namespace {

inline __m256i fold(__m512i v) {
  return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// The lane sums of a0, a1, a2, a3, in that order.
inline __m128i hsum4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  const __m256i s01 = _mm256_hadd_epi32(fold(a0), fold(a1));  // per 128-bit half: a0 a0 a1 a1
  const __m256i s23 = _mm256_hadd_epi32(fold(a2), fold(a3));
  const __m256i s = _mm256_hadd_epi32(s01, s23);              // per half: a0 a1 a2 a3
  return _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
}

inline __m512i load_biased(const int8_t* p, __m512i flip) {
  return _mm512_xor_si512(_mm512_loadu_si512((const void*)p), flip);
}

inline __m512i load_x(const int8_t* p) { return _mm512_loadu_si512((const void*)p); }

}  // namespace

void gemv_i8_avx512vnni(const GemvI8& g, int64_t n0, int64_t n1) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const int64_t K = g.K, vectors = (K + 63) / 64;
  // wrapping arithmetic: the biased sums may exceed int32, the differences are exact
  const int32_t bias = int32_t(128u * uint32_t(g.x_sum));
  // rows [n0, n0 + 4q) four at a time; the last of them must have its whole vectors
  // inside the matrix (reading on into the following rows)
  int64_t q = (n1 - n0) / 4;
  while (q > 0 && (g.N - (n0 + 4 * q - 1)) * K < vectors * 64) --q;
  const int64_t stride = q * K;  // from one quarter's row to the next's
  for (int64_t n = n0; n < n0 + q; ++n) {
    const int8_t* w = g.W + n * K;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t v = 0; v < vectors; ++v) {
      const __m512i x = load_x(g.x + v * 64);
      const int8_t* p = w + v * 64;
      a0 = _mm512_dpbusd_epi32(a0, load_biased(p, flip), x);
      a1 = _mm512_dpbusd_epi32(a1, load_biased(p + stride, flip), x);
      a2 = _mm512_dpbusd_epi32(a2, load_biased(p + 2 * stride, flip), x);
      a3 = _mm512_dpbusd_epi32(a3, load_biased(p + 3 * stride, flip), x);
    }
    alignas(16) int32_t sums[4];
    _mm_store_si128((__m128i*)sums, hsum4(a0, a1, a2, a3));
    for (int j = 0; j < 4; ++j) g.c[n + j * q] = int32_t(uint32_t(sums[j]) - uint32_t(bias));
  }
  // the rest one at a time
  for (int64_t n = n0 + 4 * q; n < n1; ++n) {
    const int8_t* w = g.W + n * K;
    alignas(64) int8_t last[64];
    const int64_t safe = std::min(vectors, (g.N - n) * K / 64);  // whole vectors inside
    if (safe < vectors) {  // only near the matrix's end: the tail (< 64 bytes) from a buffer
      std::memset(last, 0, sizeof last);
      std::memcpy(last, w + safe * 64, size_t(K % 64));
    }
    __m512i a = _mm512_setzero_si512();
    for (int64_t v = 0; v < vectors; ++v)
      a = _mm512_dpbusd_epi32(a, load_biased(v < safe ? w + v * 64 : last, flip), load_x(g.x + v * 64));
    const __m512i zero = _mm512_setzero_si512();
    g.c[n] = int32_t(uint32_t(_mm_cvtsi128_si32(hsum4(a, zero, zero, zero))) - uint32_t(bias));
  }
}

}  // namespace tinylm::engine

// int8 GEMV for the decode step, AVX-512 VNNI: one row at a time (one sequential stream),
// four 64-byte vpdpbusd accumulators. vpdpbusd multiplies unsigned by signed bytes, so
// w is biased to unsigned (w ^ 0x80 = w + 128) and 128 * sum(x) is taken off at the end.
//
// Why not the int8 family's GEMM with M = 1: it copies the last partial vector of every
// weight row into a buffer, which for K = 288 (the `small` preset) costs as much as the
// products. Here x is zero-padded to whole vectors and a row simply reads on into the
// following rows: those bytes meet x's zeros and add nothing. Only the rows within a
// vector of the matrix's end, where that would read past it, take their tail through a
// zeroed buffer.
#include <algorithm>
#include <cstring>

#include "../simd_x86.h"
#include "gemv_kernels.h"

namespace tinylm::engine {
namespace {

inline int32_t hsum(__m512i v) {
  const __m256i s8 = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

}  // namespace

void gemv_i8_avx512vnni(const GemvI8& g, int64_t n0, int64_t n1) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const int64_t K = g.K, vectors = (K + 63) / 64;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = g.W + n * K;
    alignas(64) int8_t last[64];
    // whole vectors that lie inside the matrix (reading on into the following rows)
    const int64_t safe = std::min(vectors, (g.N - n) * K / 64);
    if (safe < vectors) {  // only near the matrix's end: the tail (< 64 bytes) from a buffer
      std::memset(last, 0, sizeof last);
      std::memcpy(last, w + safe * 64, size_t(K % 64));
    }
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int64_t v = 0;
    for (; v + 4 <= safe; v += 4) {
      const int8_t* p = w + v * 64;
      const int8_t* q = g.x + v * 64;
      a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_loadu_si512((const void*)p), flip), _mm512_loadu_si512((const void*)q));
      a1 = _mm512_dpbusd_epi32(a1, _mm512_xor_si512(_mm512_loadu_si512((const void*)(p + 64)), flip), _mm512_loadu_si512((const void*)(q + 64)));
      a2 = _mm512_dpbusd_epi32(a2, _mm512_xor_si512(_mm512_loadu_si512((const void*)(p + 128)), flip), _mm512_loadu_si512((const void*)(q + 128)));
      a3 = _mm512_dpbusd_epi32(a3, _mm512_xor_si512(_mm512_loadu_si512((const void*)(p + 192)), flip), _mm512_loadu_si512((const void*)(q + 192)));
    }
    for (; v < vectors; ++v) {
      const int8_t* p = v < safe ? w + v * 64 : last;
      a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_loadu_si512((const void*)p), flip),
                               _mm512_loadu_si512((const void*)(g.x + v * 64)));
    }
    const __m512i s = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
    // wrapping arithmetic: the biased sum may exceed int32, the difference is exact
    g.c[n] = int32_t(uint32_t(hsum(s)) - 128u * uint32_t(g.x_sum));
  }
}

}  // namespace tinylm::engine

// Scores over int8 keys, AVX2: a block's 64-byte rows each hold 4 dimensions of its 16
// positions, two vectors of 8 positions. The key bytes lose their bias (xor 0x80 turns
// k + 128 into k, signed), take the sign of the query byte they meet (vpsignb), and
// vpmaddubsw multiplies them by the query's magnitudes: pairs of products of at most
// 127 * 127, whose sums fit in int16 (keys and queries never hold -128). vpmaddwd adds
// the pairs into one int32 a position. The query's bias correction is not needed.
#include <cstring>

#include "../simd_x86.h"
#include "kernels.h"

namespace tinylm::attention::detail {
namespace {

// sum += the 4-dimension dot products of 8 positions' key bytes with the query's word.
inline __m256i add_dots(__m256i sum, const uint8_t* keys, __m256i q, __m256i q_abs) {
  const __m256i k = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)keys),
                                     _mm256_set1_epi8(char(0x80)));
  const __m256i pairs = _mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(k, q));
  return _mm256_add_epi32(sum, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

inline void finish(const Int8Scores& j, int64_t t, __m256i sum) {
  const __m256 f = _mm256_cvtepi32_ps(sum);
  _mm256_storeu_ps(j.s + t, _mm256_mul_ps(_mm256_mul_ps(f, _mm256_set1_ps(j.q_scale)),
                                          _mm256_loadu_ps(j.key_scales + t)));
}

}  // namespace

void int8_scores_avx2(const Int8Scores& j) {
  const int64_t Dq = j.Dq, block_bytes = kKeyBlock * Dq * 4;
  for (int64_t b = 0; b < j.blocks; ++b) {
    const uint8_t* k = j.keys + b * block_bytes;
    if (j.ahead != nullptr) ask_for_ahead(j, b, 1);
    __m256i lo = _mm256_setzero_si256(), hi = lo;  // positions 0-7, 8-15
    for (int64_t g = 0; g < Dq; ++g) {
      int32_t word;
      std::memcpy(&word, j.q + 4 * g, 4);
      const __m256i q = _mm256_set1_epi32(word), q_abs = _mm256_abs_epi8(q);
      lo = add_dots(lo, k + g * 64, q, q_abs);
      hi = add_dots(hi, k + g * 64 + 32, q, q_abs);
    }
    finish(j, b * kKeyBlock, lo);
    finish(j, b * kKeyBlock + 8, hi);
  }
}

}  // namespace tinylm::attention::detail

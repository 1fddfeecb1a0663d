// AVX2 int8 kernel: vpmaddubsw + vpmaddwd with the sign trick.
//
// vpmaddubsw multiplies unsigned by signed bytes and adds adjacent pairs into int16 with
// saturation. Feeding it |x| (unsigned) and w with x's sign moved onto it (vpsignb)
// gives x*w exactly; with both in [-127, 127] a pair sum is at most 2*127*127 = 32258,
// so it never saturates. vpmaddwd with ones then widens the pairs into int32.
#include <cstring>

#include "../simd_x86.h"
#include "kernels.h"
#include "tiles.h"
#include "x86_reduce.h"

namespace tinylm::int8 {
namespace {

struct Avx2 {
  static constexpr int kWidth = 32;
  static constexpr int kMR = 2, kNR = 4;  // 8 accumulators + 4 w + 2 x + ones: 16 ymm
  static constexpr int32_t kBias = 0;
  using Acc = __m256i;
  using W = __m256i;
  struct X {
    __m256i abs, sign;
  };

  static Acc zero() { return _mm256_setzero_si256(); }
  static W load_w(const int8_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static W load_w_tail(const int8_t* p, int bytes) {
    tiles::Tail<Avx2> t(p, bytes);
    return load_w(t.b);
  }
  static X load_x(const int8_t* p) {
    const __m256i x = _mm256_loadu_si256((const __m256i*)p);
    return {_mm256_abs_epi8(x), x};
  }
  static Acc dot(Acc acc, const X& x, W w) {
    const __m256i pairs = _mm256_maddubs_epi16(x.abs, _mm256_sign_epi8(w, x.sign));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  template <int NR>
  static void reduce(const Acc* acc, int32_t* out) { reduce4<NR>(acc, out); }
};

}  // namespace

void gemm_avx2(const Problem& p, int64_t n_begin, int64_t n_end) {
  tiles::gemm<Avx2>(p, n_begin, n_end);
}

// The per-row quantizer of gemm.cpp with 8 floats at a time, bit for bit the same:
// max |x| taken on the bit patterns as there, x * inv the same single multiply, and
// vroundps rounds half to even like the portable code. Returns false if the row holds
// NaN or inf, or is all but zero (the caller handles that row).
bool quantize_row_avx2(const float* x, int64_t K, int8_t* q, float* scale, int32_t* sum) {
  // two running maxima, so that each waits on the one two vectors back
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  auto abs_bits = [&](int64_t k) {
    return _mm256_and_si256(_mm256_loadu_si256((const __m256i*)(x + k)), abs_mask);
  };
  __m256i m0 = _mm256_setzero_si256(), m1 = m0;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    m0 = _mm256_max_epi32(m0, abs_bits(k));
    m1 = _mm256_max_epi32(m1, abs_bits(k + 8));
  }
  if (k + 8 <= K) m0 = _mm256_max_epi32(m0, abs_bits(k)), k += 8;
  const __m256i m = _mm256_max_epi32(m0, m1);
  __m128i h = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0x4e));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0xb1));
  int32_t amax_bits = _mm_cvtsi128_si32(h);
  for (; k < K; ++k) {
    int32_t bits;
    std::memcpy(&bits, x + k, 4);
    bits &= 0x7fffffff;
    amax_bits = bits > amax_bits ? bits : amax_bits;
  }
  float amax;
  std::memcpy(&amax, &amax_bits, 4);
  if (amax_bits >= 0x7f800000 || !(amax >= kMinAmax)) return false;
  *scale = amax / 127.0f;
  const float inv = 127.0f / amax;
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
  auto quantize8 = [&](int64_t k) {  // 8 int32 in [-127, 127]
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + k), vinv);
    v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(v, hi), lo));
  };
  __m256i sums = _mm256_setzero_si256();  // of the int32 values, as they go by
  auto counted = [&](__m256i i32) {
    sums = _mm256_add_epi32(sums, i32);
    return i32;
  };
  k = 0;
  for (; k + 32 <= K; k += 32) {
    // packs work within 128-bit lanes; the permute restores the element order
    const __m256i i16a = _mm256_packs_epi32(counted(quantize8(k)), counted(quantize8(k + 8)));
    const __m256i i16b = _mm256_packs_epi32(counted(quantize8(k + 16)), counted(quantize8(k + 24)));
    const __m256i i8 = _mm256_packs_epi16(i16a, i16b);
    const __m256i ordered = _mm256_permutevar8x32_epi32(i8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i*)(q + k), ordered);
  }
  for (; k + 8 <= K; k += 8) {  // (a scalar tail of up to 31 was as long as the rest at K = 344)
    const __m256i i32 = counted(quantize8(k));
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64((__m128i*)(q + k), _mm_packs_epi16(i16, i16));
  }
  int32_t tail = 0;
  for (; k < K; ++k) {
    float v = x[k] * inv;
    v = _mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    v = v < 127.0f ? v : 127.0f;
    v = v > -127.0f ? v : -127.0f;
    q[k] = int8_t(int32_t(v));
    tail += q[k];
  }
  const __m256i zero = _mm256_setzero_si256();
  *sum = _mm_cvtsi128_si32(lane_sums4(sums, zero, zero, zero)) + tail;
  return true;
}

}  // namespace tinylm::int8

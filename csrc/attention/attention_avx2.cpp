// AVX2 + FMA tile kernels: 8 floats per vector, 6 x 16 register blocks.
#include "../simd_x86.h"
#include "attention_tiled.h"
#include "transpose_avx.h"

namespace tinylm::attention::detail {
namespace {

struct Avx2 {
  using V = __m256;
  static constexpr int W = 8, R = 6, NV = 2;  // 12 accumulators of 16 registers
  static constexpr int TB = 8;                 // transpose_block's size

  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_half(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }  // F16C
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V round(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V pow2(V n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static void transpose_block(const float* src, int64_t lds, float* dst, int64_t ldd) {
    transpose8x8(src, lds, dst, ldd);
  }
  static V zero_below(V v, V x, V lo) { return _mm256_and_ps(v, _mm256_cmp_ps(x, lo, _CMP_GE_OQ)); }
  static float hsum(V v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 0x55));
    return _mm_cvtss_f32(x);
  }
  // Per 128-bit lane, unpack+add twice turns a, b, c, d into [a, b, c, d] partial sums;
  // then the two lanes are added.
  static void hsum4(V a, V b, V c, V d, float scale, float* out) {
    const V ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    const V cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    const __m256d abd = _mm256_castps_pd(ab), cdd = _mm256_castps_pd(cd);
    const V s = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(abd, cdd)),
                              _mm256_castpd_ps(_mm256_unpackhi_pd(abd, cdd)));
    const __m128 x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    _mm_storeu_ps(out, _mm_mul_ps(x, _mm_set1_ps(scale)));
  }
  static float hmax(V v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 0x55));
    return _mm_cvtss_f32(x);
  }
};

}  // namespace

const TileKernels* avx2_kernels() { return Tiled<Avx2>::table("avx2"); }

}  // namespace tinylm::attention::detail

// AVX-512F tile kernels: 16 floats per vector, 6 x 64 register blocks.
// Includes intrinsics only through simd_x86.h, so CI can compile this file against SIMDe
// and check its logic on a CPU without AVX-512.
#include "../simd_x86.h"
#include "attention_tiled.h"
#include "transpose_avx.h"

// GCC 12 warns inside its own avx512fintrin.h (the self-initialized "undefined" vectors
// behind _mm512_cvtps_epi32 and friends); the warning is about the header, not this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace tinylm::attention::detail {
namespace {

struct Avx512 {
  using V = __m512;
  static constexpr int W = 16, R = 6, NV = 4;  // 24 accumulators of 32 registers
  static constexpr int TB = 8;                  // transpose_block's size (AVX registers)

  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_half(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256((const __m256i*)p);
#if defined(TINYLM_SIMDE)  // SIMDe has no _mm512_cvtph_ps: two F16C conversions
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_cvtph_ps(_mm256_castsi256_si128(h))),
                              _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), 1);
#else
    return _mm512_cvtph_ps(h);
#endif
  }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V round(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V pow2(V n) { return _mm512_scalef_ps(_mm512_set1_ps(1.f), n); }  // 1 * 2^n
  static void transpose_block(const float* src, int64_t lds, float* dst, int64_t ldd) {
    transpose8x8(src, lds, dst, ldd);
  }
  static V zero_below(V v, V x, V lo) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ), v);
  }
  static __m256 high(V v) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  }
  static __m256 halves_add(V v) { return _mm256_add_ps(_mm512_castps512_ps256(v), high(v)); }
  static __m256 halves_max(V v) { return _mm256_max_ps(_mm512_castps512_ps256(v), high(v)); }
  static float hsum(V v) {
    const __m256 a = halves_add(v);
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 0x55));
    return _mm_cvtss_f32(x);
  }
  // Per 128-bit lane, unpack+add twice turns a, b, c, d into [a, b, c, d] partial sums;
  // then the four lanes are added.
  static void hsum4(V a, V b, V c, V d, float scale, float* out) {
    const V ab = add(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const V cd = add(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const __m512d abd = _mm512_castps_pd(ab), cdd = _mm512_castps_pd(cd);
    const V s = add(_mm512_castpd_ps(_mm512_unpacklo_pd(abd, cdd)),
                    _mm512_castpd_ps(_mm512_unpackhi_pd(abd, cdd)));
    const __m256 h = halves_add(s);
    const __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    _mm_storeu_ps(out, _mm_mul_ps(x, _mm_set1_ps(scale)));
  }
  static float hmax(V v) {
    const __m256 a = halves_max(v);
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 0x55));
    return _mm_cvtss_f32(x);
  }
};

}  // namespace

const TileKernels* avx512_kernels() { return Tiled<Avx512>::table("avx512"); }

}  // namespace tinylm::attention::detail

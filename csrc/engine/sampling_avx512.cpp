// The sampler's weights and scan (weigh_simd.h) eight doubles at a time. -mfma is on for this
// file: contraction off. Uses only intrinsics SIMDe implements, so the native test driver
// can check it on a CPU without AVX-512.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "weigh_simd.h"

namespace tinylm::engine {
namespace {

struct Avx512 {
  using D = __m512d;
  using I = __m512i;
  using Mask = __mmask8;
  static constexpr int kLanes = 8;
  static D set1(double d) { return _mm512_set1_pd(d); }
  static I set1_int(int64_t i) { return _mm512_set1_epi64(i); }
  static D load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(uint64_t* p, I v) { _mm512_storeu_si512(p, v); }
  static D add(D a, D b) { return _mm512_add_pd(a, b); }
  static D sub(D a, D b) { return _mm512_sub_pd(a, b); }
  static D mul(D a, D b) { return _mm512_mul_pd(a, b); }
  static I add_int(I a, I b) { return _mm512_add_epi64(a, b); }
  static I sub_int(I a, I b) { return _mm512_sub_epi64(a, b); }
  static I shift52(I v) { return _mm512_slli_epi64(v, 52); }
  static D as_double(I v) { return _mm512_castsi512_pd(v); }
  static I as_int(D v) { return _mm512_castpd_si512(v); }
  static D truncate(D v) { return _mm512_roundscale_pd(v, _MM_FROUND_TO_ZERO); }
  static Mask at_least(D v, double d) { return _mm512_cmp_pd_mask(v, _mm512_set1_pd(d), _CMP_GE_OQ); }
  static D zero_unless(D v, Mask m) { return _mm512_maskz_mov_pd(m, v); }
  static void store(double* p, D v) { _mm512_storeu_pd(p, v); }
  static D max(D a, D b) { return _mm512_max_pd(a, b); }
  static D min(D a, D b) { return _mm512_min_pd(a, b); }
  static D above_or(D v, double d, double r) {
    const __mmask8 above = _mm512_cmp_pd_mask(v, _mm512_set1_pd(d), _CMP_GT_OQ);
    return _mm512_mask_mov_pd(_mm512_set1_pd(r), above, v);
  }
  static D nan_bits(D v) {
    return _mm512_castsi512_pd(_mm512_maskz_set1_epi64(_mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q), -1));
  }
  static D bit_or(D a, D b) {
    return _mm512_castsi512_pd(_mm512_or_si512(_mm512_castpd_si512(a), _mm512_castpd_si512(b)));
  }
};

}  // namespace

Extremes extremes_avx512(const double* x, int64_t n) { return weigh_simd::extremes<Avx512>(x, n); }

uint64_t weigh_avx512(const double* x, int64_t n, double top, double inverse_temperature,
                      double unit, uint64_t* w) {
  return weigh_simd::weigh<Avx512>(x, n, top, inverse_temperature, unit, w);
}

}  // namespace tinylm::engine

// The sampler's weights and scan (weigh_simd.h) four doubles at a time. The avx2 level
// used to run weigh_ref as the baseline build compiles it, two doubles a vector; built
// with -mavx2, GCC 12 does not vectorize that loop at all, for its two conversions (k
// through int32 and back, 2^-k's bits through int64). -mfma is on for this file:
// contraction off.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "weigh_simd.h"

namespace tinylm::engine {
namespace {

struct Avx2 {
  using D = __m256d;
  using I = __m256i;
  using Mask = __m256d;  // all ones in the lanes that hold
  static constexpr int kLanes = 4;
  static D set1(double d) { return _mm256_set1_pd(d); }
  static I set1_int(int64_t i) { return _mm256_set1_epi64x(i); }
  static D load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(uint64_t* p, I v) { _mm256_storeu_si256((__m256i*)p, v); }
  static D add(D a, D b) { return _mm256_add_pd(a, b); }
  static D sub(D a, D b) { return _mm256_sub_pd(a, b); }
  static D mul(D a, D b) { return _mm256_mul_pd(a, b); }
  static I add_int(I a, I b) { return _mm256_add_epi64(a, b); }
  static I sub_int(I a, I b) { return _mm256_sub_epi64(a, b); }
  static I shift52(I v) { return _mm256_slli_epi64(v, 52); }
  static D as_double(I v) { return _mm256_castsi256_pd(v); }
  static I as_int(D v) { return _mm256_castpd_si256(v); }
  static D truncate(D v) { return _mm256_round_pd(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC); }
  static Mask at_least(D v, double d) { return _mm256_cmp_pd(v, _mm256_set1_pd(d), _CMP_GE_OQ); }
  static D zero_unless(D v, Mask m) { return _mm256_and_pd(v, m); }
  static void store(double* p, D v) { _mm256_storeu_pd(p, v); }
  static D max(D a, D b) { return _mm256_max_pd(a, b); }
  static D min(D a, D b) { return _mm256_min_pd(a, b); }
  static D above_or(D v, double d, double r) {
    return _mm256_blendv_pd(_mm256_set1_pd(r), v, _mm256_cmp_pd(v, _mm256_set1_pd(d), _CMP_GT_OQ));
  }
  static D nan_bits(D v) { return _mm256_cmp_pd(v, v, _CMP_UNORD_Q); }
  static D bit_or(D a, D b) { return _mm256_or_pd(a, b); }
};

}  // namespace

Extremes extremes_avx2(const double* x, int64_t n) { return weigh_simd::extremes<Avx2>(x, n); }

uint64_t weigh_avx2(const double* x, int64_t n, double top, double inverse_temperature,
                    double unit, uint64_t* w) {
  return weigh_simd::weigh<Avx2>(x, n, top, inverse_temperature, unit, w);
}

}  // namespace tinylm::engine

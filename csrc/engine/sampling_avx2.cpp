// The sampler's weights (sampling.cpp's weigh_ref: e^x by exp_step_by_step, as
// tinylm.sampling.weight_exp, scaled to whole units) four doubles at a time: the same
// IEEE operations in the same order as weigh_ref and sampling_avx512.cpp, so the same
// bits. (The avx2 level used to run weigh_ref as the baseline build compiles it, two
// doubles a vector; built with -mavx2, GCC 12 does not vectorize it at all, for its two
// conversions: k through int32 and back, 2^-k's bits through int64.) The compiler must
// not fuse a multiply and the add after it into one FMA (-mfma is on for this file, and
// GCC fuses intrinsics too): hence fp-contract off for the whole file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <algorithm>
#include <cmath>

#include "../simd_x86.h"
#include "gemv_kernels.h"

namespace tinylm::engine {

namespace {

// The whole numbers 0 to 2^52 (as doubles) as integers: the low bits of v + 2^52, exact in
// that range.
__m256i whole_to_int(__m256d v) {
  const __m256d two52 = _mm256_set1_pd(4503599627370496.0);
  return _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(v, two52)), _mm256_castpd_si256(two52));
}

__m256d truncate(__m256d v) { return _mm256_round_pd(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC); }

__m256d weight_exp4(__m256d v) {
  using namespace weight_exp_constants;
  const __m256d ln2_hi = _mm256_set1_pd(kLn2Hi), ln2_lo = _mm256_set1_pd(kLn2Lo);
  const __m256d minus_log2e = _mm256_set1_pd(-kLog2e);
  // below -40 (or NaN): weight 0, computed on 0 so that every step stays finite
  const __m256d big = _mm256_cmp_pd(v, _mm256_set1_pd(-40.0), _CMP_GE_OQ);
  v = _mm256_and_pd(v, big);
  // k = trunc(-x log2(e) + 0.5) (x * -log2e is -x * log2e exactly: rounding is symmetric)
  const __m256d k = truncate(_mm256_add_pd(_mm256_mul_pd(v, minus_log2e), _mm256_set1_pd(0.5)));
  const __m256d r = _mm256_add_pd(_mm256_add_pd(v, _mm256_mul_pd(k, ln2_hi)), _mm256_mul_pd(k, ln2_lo));
  __m256d p = _mm256_set1_pd(kTaylor[0]);
  for (int c = 1; c < 11; ++c) p = _mm256_add_pd(_mm256_mul_pd(p, r), _mm256_set1_pd(kTaylor[c]));
  // 2^-k (k is 0 to 58)
  const __m256i exponent = _mm256_sub_epi64(_mm256_set1_epi64x(1023), whole_to_int(k));
  const __m256i bits = _mm256_slli_epi64(exponent, 52);
  return _mm256_and_pd(_mm256_mul_pd(p, _mm256_castsi256_pd(bits)), big);
}

// four weights: floor(e^((x - top) * inverse_temperature) * unit + 0.5), at most unit
// (<= 2^52)
__m256i weights4(__m256d x, __m256d top, __m256d inverse_temperature, __m256d unit) {
  const __m256d e = weight_exp4(_mm256_mul_pd(_mm256_sub_pd(x, top), inverse_temperature));
  const __m256d y = _mm256_add_pd(_mm256_mul_pd(e, unit), _mm256_set1_pd(0.5));
  return whole_to_int(truncate(y));
}

}  // namespace

uint64_t weigh_avx2(const double* x, int64_t n, double top, double inverse_temperature,
                    double unit, uint64_t* w) {
  const __m256d t = _mm256_set1_pd(top), it = _mm256_set1_pd(inverse_temperature),
                u = _mm256_set1_pd(unit);
  __m256i total = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256i w4 = weights4(_mm256_loadu_pd(x + i), t, it, u);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + i), w4);
    total = _mm256_add_epi64(total, w4);
  }
  if (i < n) {  // the last few through a buffer padded with -inf (weight 0)
    alignas(32) double tail[4];
    std::fill(tail, tail + 4, -HUGE_VAL);
    std::copy(x + i, x + n, tail);
    alignas(32) uint64_t out[4];
    const __m256i w4 = weights4(_mm256_load_pd(tail), t, it, u);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), w4);
    total = _mm256_add_epi64(total, w4);
    std::copy(out, out + (n - i), w + i);
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), total);
  uint64_t sum = 0;
  for (uint64_t lane : lanes) sum += lane;
  return sum;
}

}  // namespace tinylm::engine

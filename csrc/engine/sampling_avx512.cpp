// The sampler's weights (sampling.cpp's weigh_ref: e^x by exp_step_by_step, as
// tinylm.sampling.weight_exp, scaled to whole units) eight doubles at a time: the same
// IEEE operations in the same order, so the same bits. The compiler must not fuse a
// multiply and the add after it into one FMA (-mfma is on for this file, and GCC fuses
// intrinsics too): hence fp-contract off for the whole file.
// Uses only intrinsics SIMDe implements, so the native test driver can check it on a CPU
// without AVX-512.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <algorithm>
#include <cmath>

#include "../simd_x86.h"
#include "gemv_kernels.h"

namespace tinylm::engine {

namespace {

// The whole numbers 0 to 2^52 (as doubles) as integers: the low bits of v + 2^52, exact in
// that range. (SIMDe has no _mm512_cvttpd_epi64.)
__m512i whole_to_int(__m512d v) {
  const __m512d two52 = _mm512_set1_pd(4503599627370496.0);
  return _mm512_sub_epi64(_mm512_castpd_si512(_mm512_add_pd(v, two52)), _mm512_castpd_si512(two52));
}

__m512d weight_exp8(__m512d v) {
  using namespace weight_exp_constants;
  const __m512d ln2_hi = _mm512_set1_pd(kLn2Hi), ln2_lo = _mm512_set1_pd(kLn2Lo);
  const __m512d minus_log2e = _mm512_set1_pd(-kLog2e);
  // below -40 (or NaN): weight 0, computed on 0 so that every step stays finite
  const __mmask8 big = _mm512_cmp_pd_mask(v, _mm512_set1_pd(-40.0), _CMP_GE_OQ);
  v = _mm512_maskz_mov_pd(big, v);
  // k = trunc(-x log2(e) + 0.5) (x * -log2e is -x * log2e exactly: rounding is symmetric)
  const __m512d k = _mm512_roundscale_pd(_mm512_add_pd(_mm512_mul_pd(v, minus_log2e), _mm512_set1_pd(0.5)),
                                         _MM_FROUND_TO_ZERO);
  const __m512d r = _mm512_add_pd(_mm512_add_pd(v, _mm512_mul_pd(k, ln2_hi)), _mm512_mul_pd(k, ln2_lo));
  __m512d p = _mm512_set1_pd(kTaylor[0]);
  for (int c = 1; c < 11; ++c) p = _mm512_add_pd(_mm512_mul_pd(p, r), _mm512_set1_pd(kTaylor[c]));
  // 2^-k (k is 0 to 58)
  const __m512i exponent = _mm512_sub_epi64(_mm512_set1_epi64(1023), whole_to_int(k));
  const __m512i bits = _mm512_slli_epi64(exponent, 52);
  return _mm512_maskz_mul_pd(big, p, _mm512_castsi512_pd(bits));
}

// eight weights: floor(e^((x - top) * inverse_temperature) * unit + 0.5), at most unit
// (<= 2^52)
__m512i weights8(__m512d x, __m512d top, __m512d inverse_temperature, __m512d unit) {
  const __m512d e = weight_exp8(_mm512_mul_pd(_mm512_sub_pd(x, top), inverse_temperature));
  const __m512d y = _mm512_add_pd(_mm512_mul_pd(e, unit), _mm512_set1_pd(0.5));
  return whole_to_int(_mm512_roundscale_pd(y, _MM_FROUND_TO_ZERO));
}

}  // namespace

uint64_t weigh_avx512(const double* x, int64_t n, double top, double inverse_temperature,
                      double unit, uint64_t* w) {
  const __m512d t = _mm512_set1_pd(top), it = _mm512_set1_pd(inverse_temperature),
                u = _mm512_set1_pd(unit);
  __m512i total = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m512i w8 = weights8(_mm512_loadu_pd(x + i), t, it, u);
    _mm512_storeu_si512(w + i, w8);
    total = _mm512_add_epi64(total, w8);
  }
  if (i < n) {  // the last few through a buffer padded with -inf (weight 0)
    alignas(64) double tail[8];
    std::fill(tail, tail + 8, -HUGE_VAL);
    std::copy(x + i, x + n, tail);
    alignas(64) uint64_t out[8];
    const __m512i w8 = weights8(_mm512_load_pd(tail), t, it, u);
    _mm512_store_si512(out, w8);
    total = _mm512_add_epi64(total, w8);
    std::copy(out, out + (n - i), w + i);
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, total);
  uint64_t sum = 0;
  for (uint64_t lane : lanes) sum += lane;
  return sum;
}

}  // namespace tinylm::engine

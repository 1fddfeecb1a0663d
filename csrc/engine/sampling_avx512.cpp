// The sampler's e^x (sampling.cpp's exp_step_by_step, tinylm.sampling.weight_exp) eight
// doubles at a time: the same IEEE operations in the same order, so the same bits. The
// compiler must not fuse a multiply and the add after it into one FMA (-mfma is on for
// this file, and GCC fuses intrinsics too): hence fp-contract off for the whole file.
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

#include "../simd_x86.h"
#include "gemv_kernels.h"

namespace tinylm::engine {

namespace {

__m512d weight_exp8(__m512d v) {
  using namespace weight_exp_constants;
  const __m512d ln2_hi = _mm512_set1_pd(kLn2Hi), ln2_lo = _mm512_set1_pd(kLn2Lo);
  const __m512d minus_log2e = _mm512_set1_pd(-kLog2e);
  const __m512d two52 = _mm512_set1_pd(4503599627370496.0);
  // below -40 (or NaN): weight 0, computed on 0 so that every step stays finite
  const __mmask8 big = _mm512_cmp_pd_mask(v, _mm512_set1_pd(-40.0), _CMP_GE_OQ);
  v = _mm512_maskz_mov_pd(big, v);
  // k = trunc(-x log2(e) + 0.5) (x * -log2e is -x * log2e exactly: rounding is symmetric)
  const __m512d k = _mm512_roundscale_pd(_mm512_add_pd(_mm512_mul_pd(v, minus_log2e), _mm512_set1_pd(0.5)),
                                         _MM_FROUND_TO_ZERO);
  const __m512d r = _mm512_add_pd(_mm512_add_pd(v, _mm512_mul_pd(k, ln2_hi)), _mm512_mul_pd(k, ln2_lo));
  __m512d p = _mm512_set1_pd(kTaylor[0]);
  for (int c = 1; c < 11; ++c) p = _mm512_add_pd(_mm512_mul_pd(p, r), _mm512_set1_pd(kTaylor[c]));
  // 2^-k: k (0 to 58) is the low bits of k + 2^52
  const __m512i k_int = _mm512_sub_epi64(_mm512_castpd_si512(_mm512_add_pd(k, two52)), _mm512_castpd_si512(two52));
  const __m512i bits = _mm512_slli_epi64(_mm512_sub_epi64(_mm512_set1_epi64(1023), k_int), 52);
  return _mm512_maskz_mul_pd(big, p, _mm512_castsi512_pd(bits));
}

}  // namespace

void weight_exps_avx512(const double* x, double* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm512_storeu_pd(y + i, weight_exp8(_mm512_loadu_pd(x + i)));
  if (i < n) {  // the last few through a buffer
    double tail[8] = {};
    std::copy(x + i, x + n, tail);
    _mm512_storeu_pd(tail, weight_exp8(_mm512_loadu_pd(tail)));
    std::copy(tail, tail + (n - i), y + i);
  }
}

}  // namespace tinylm::engine

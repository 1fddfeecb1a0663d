// int8 GEMV for the decode step, AVX2: the four-stream loop of gemv_streams.h with 32
// bytes per step and the sign trick (vpmaddubsw needs an unsigned operand: take |x| and
// move x's sign onto w; with values in [-127, 127] a pair sum is at most 2 * 127 * 127
// and never saturates), then vpmaddwd with ones into int32.
#include "../int8/x86_reduce.h"
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "gemv_streams.h"

namespace tinylm::engine {
namespace {

struct Avx2I8 {
  using Acc = __m256i;
  struct X {
    __m256i x, ax;  // x and |x|, computed once for the four rows
  };
  static constexpr int64_t kWidth = 32;
  static constexpr int32_t kBias = 0;
  static Acc zero() { return _mm256_setzero_si256(); }
  static __m256i load_w(const int8_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static X prepare_x(const int8_t* p) {
    const __m256i x = _mm256_loadu_si256((const __m256i*)p);
    return {x, _mm256_abs_epi8(x)};
  }
  static Acc dot(Acc acc, __m256i w, const X& x) {
    const __m256i prod16 = _mm256_maddubs_epi16(x.ax, _mm256_sign_epi8(w, x.x));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(prod16, _mm256_set1_epi16(1)));
  }
  static __m128i hsum4(Acc a0, Acc a1, Acc a2, Acc a3) { return int8::lane_sums4(a0, a1, a2, a3); }
};

}  // namespace

void gemv_i8_avx2(const GemvI8& g, int64_t n0, int64_t n1) { streams::gemv_i8<Avx2I8>(g, n0, n1); }

void rescale_avx2(const int32_t* c, const float* scale, float x_scale, float* y, int64_t count) {
  const __m256 xs = _mm256_set1_ps(x_scale);
  int64_t n = 0;
  for (; n + 8 <= count; n += 8) {
    const __m256 s = _mm256_mul_ps(xs, _mm256_loadu_ps(scale + n));
    const __m256 v = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)(c + n)));
    _mm256_storeu_ps(y + n, _mm256_mul_ps(v, s));
  }
  rescale_ref(c + n, scale + n, x_scale, y + n, count - n);
}

}  // namespace tinylm::engine

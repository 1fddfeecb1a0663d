// AVX2 int8 kernel: vpmaddubsw + vpmaddwd with the sign trick.
//
// vpmaddubsw multiplies unsigned by signed bytes and adds adjacent pairs into int16 with
// saturation. Feeding it |x| (unsigned) and w with x's sign moved onto it (vpsignb)
// gives x*w exactly; with both in [-127, 127] a pair sum is at most 2*127*127 = 32258,
// so it never saturates. vpmaddwd with ones then widens the pairs into int32.
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

}  // namespace tinylm::int8

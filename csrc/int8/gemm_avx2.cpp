// AVX2 int8 kernel: vpmaddubsw + vpmaddwd with the sign trick.
//
// vpmaddubsw multiplies unsigned by signed bytes and adds adjacent pairs into int16 with
// saturation. Feeding it |x| (unsigned) and w with x's sign moved onto it (vpsignb)
// gives x*w exactly; with both in [-127, 127] a pair sum is at most 2*127*127 = 32258,
// so it never saturates. vpmaddwd with ones then widens the pairs into int32.
#include "../simd_x86.h"
#include "kernels.h"
#include "tiles.h"

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
  // out[j] = sum of acc[j]'s 8 lanes: two rounds of hadd give per-128-bit-lane sums of
  // four accumulators at once, then the two lanes are added.
  template <int NR>
  static void reduce(const Acc* acc, int32_t* out) {
    __m256i a[4];
    for (int j = 0; j < 4; ++j) a[j] = j < NR ? acc[j] : _mm256_setzero_si256();
    const __m256i s = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]),
                                        _mm256_hadd_epi32(a[2], a[3]));
    const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    alignas(16) int32_t v[4];
    _mm_store_si128((__m128i*)v, t);
    for (int j = 0; j < NR; ++j) out[j] = v[j];
  }
};

}  // namespace

void gemm_avx2(const Problem& p, int64_t n_begin, int64_t n_end) {
  tiles::gemm<Avx2>(p, n_begin, n_end);
}

}  // namespace tinylm::int8

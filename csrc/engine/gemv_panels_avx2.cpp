// int8 GEMV over panels (gemv_panels.h), AVX2: a group of a panel is two vectors, rows
// 0-7 and 8-15, each four instructions: the sign trick (vpmaddubsw needs an unsigned
// operand: take |x| and move x's sign onto w; with values in [-127, 127] a pair sum is at
// most 2 * 127 * 127 and never saturates), then vpmaddwd with ones adds each row's two
// pairs into its 32-bit lane.
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "gemv_panels.h"
#include "gemv_panels_ymm.h"

namespace tinylm::engine {
namespace {

struct Avx2 : Ymm2Ops {
  struct X {
    __m256i x, ax;  // x's four bytes broadcast, and their absolute values
  };
  static constexpr int kChains = 2, kRows = 4, kPanels = 1;
  static constexpr int32_t kBias = 0;
  static W load(const int8_t* w) { return load_group(w); }
  static __m256i dot_half(__m256i acc, __m256i w, __m256i x, __m256i ax) {
    const __m256i prod16 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w, x));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(prod16, _mm256_set1_epi16(1)));
  }
  static X broadcast(const int8_t* x) {
    int32_t x4;
    std::memcpy(&x4, x, 4);
    const __m256i xv = _mm256_set1_epi32(x4);
    return {xv, _mm256_abs_epi8(xv)};
  }
  static Acc dot(Acc acc, W w, const X& x) {
    return {dot_half(acc.lo, w.lo, x.x, x.ax), dot_half(acc.hi, w.hi, x.x, x.ax)};
  }
};

}  // namespace

void gemv_panels_avx2(const PanelGemv& g, int64_t n0, int64_t n1) { panels::gemv<Avx2>(g, n0, n1); }

void gemm_panels_avx2(const PanelGemm& g, int64_t n0, int64_t n1) { panels::gemm<Avx2>(g, n0, n1); }
}  // namespace tinylm::engine

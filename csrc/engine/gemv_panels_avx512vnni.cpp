// int8 GEMV over panels (gemv_panels.h), AVX-512 VNNI: a group of a panel is one vector,
// one vpdpbusd adds its 64 products into the 16 rows' sums. vpdpbusd multiplies unsigned
// by signed bytes, so w is biased to unsigned (w ^ 0x80 = w + 128) and 128 * sum(x) is
// taken off at the end.
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "gemv_panels.h"

namespace tinylm::engine {
namespace {

struct Avx512Vnni {
  using Acc = __m512i;
  using W = __m512i;
  using X = __m512i;
  static constexpr int kChains = 4, kRows = 6, kPanels = 4;
  static constexpr int32_t kBias = 128;
  static Acc zero() { return _mm512_setzero_si512(); }
  static W load(const int8_t* w) {
    return _mm512_xor_si512(_mm512_loadu_si512((const void*)w), _mm512_set1_epi8(char(0x80)));
  }
  static X broadcast(const int8_t* x) {
    int32_t x4;
    std::memcpy(&x4, x, 4);
    return _mm512_set1_epi32(x4);
  }
  static Acc dot(Acc acc, W w, X x) { return _mm512_dpbusd_epi32(acc, w, x); }
  static Acc add(Acc a, Acc b) { return _mm512_add_epi32(a, b); }
  static void store(int32_t* out, Acc a) { _mm512_storeu_si512((void*)out, a); }
};

}  // namespace

void gemv_panels_avx512vnni(const PanelGemv& g, int64_t n0, int64_t n1) {
  panels::gemv<Avx512Vnni>(g, n0, n1);
}

void gemm_panels_avx512vnni(const PanelGemm& g, int64_t n0, int64_t n1) {
  panels::gemm<Avx512Vnni>(g, n0, n1);
}

}  // namespace tinylm::engine

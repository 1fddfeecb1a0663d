// int8 GEMV over panels (gemv_panels.h), AVX-VNNI (the VEX-encoded 256-bit vpdpbusd of
// Intel's client cores from Alder Lake on, which have no AVX-512): a group of a panel is
// two vectors, rows 0-7 and 8-15, one instruction each (and an XOR) where the AVX2 kernel
// needs four. vpdpbusd multiplies unsigned by signed bytes, so w is biased to unsigned
// (w ^ 0x80 = w + 128) and 128 * sum(x) is taken off at the end. (Under SIMDe,
// simd_x86.h has the AVX-512VL form of the instruction stand in: the same result.)
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "gemv_panels.h"
#include "gemv_panels_ymm.h"

namespace tinylm::engine {
namespace {

struct AvxVnni : Ymm2Ops {
  using X = __m256i;
  static constexpr int kChains = 2, kRows = 4, kPanels = 1;
  static constexpr int32_t kBias = 128;
  static W load(const int8_t* w) {
    const __m256i flip = _mm256_set1_epi8(char(0x80));
    const Ymm2 v = load_group(w);
    return {_mm256_xor_si256(v.lo, flip), _mm256_xor_si256(v.hi, flip)};
  }
  static X broadcast(const int8_t* x) {
    int32_t x4;
    std::memcpy(&x4, x, 4);
    return _mm256_set1_epi32(x4);
  }
  static Acc dot(Acc acc, W w, X x) {
    return {_mm256_dpbusd_avx_epi32(acc.lo, w.lo, x), _mm256_dpbusd_avx_epi32(acc.hi, w.hi, x)};
  }
};

}  // namespace

void gemv_panels_avxvnni(const PanelGemv& g, int64_t n0, int64_t n1) {
  panels::gemv<AvxVnni>(g, n0, n1);
}

void gemm_panels_avxvnni(const PanelGemm& g, int64_t n0, int64_t n1) {
  panels::gemm<AvxVnni>(g, n0, n1);
}

}  // namespace tinylm::engine

// int8 GEMV for the decode step, AVX-VNNI (the VEX-encoded 256-bit vpdpbusd of Intel's
// client cores from Alder Lake on, which have no AVX-512): the four-stream loop of
// gemv_streams.h with 32 bytes per step, as gemv_i8_avx512vnni.cpp does with 64. One
// instruction a product of 32 bytes (and an XOR) where the AVX2 kernel needs four.
// vpdpbusd multiplies unsigned by signed bytes, so w is biased to unsigned
// (w ^ 0x80 = w + 128) and 128 * sum(x) is taken off at the end. (Under SIMDe,
// simd_x86.h has the AVX-512VL form of the instruction stand in: the same result.)
#include "../int8/x86_reduce.h"
#include "../simd_x86.h"
#include "gemv_kernels.h"
#include "gemv_streams.h"

namespace tinylm::engine {
namespace {

struct AvxVnniI8 {
  using Acc = __m256i;
  using X = __m256i;
  static constexpr int64_t kWidth = 32;
  static constexpr int32_t kBias = 128;
  static Acc zero() { return _mm256_setzero_si256(); }
  static __m256i load_w(const int8_t* p) {
    return _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)p), _mm256_set1_epi8(char(0x80)));
  }
  static X prepare_x(const int8_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static Acc dot(Acc acc, __m256i w, X x) { return _mm256_dpbusd_avx_epi32(acc, w, x); }
  static __m128i hsum4(Acc a0, Acc a1, Acc a2, Acc a3) { return int8::lane_sums4(a0, a1, a2, a3); }
};

}  // namespace

void gemv_i8_avxvnni(const GemvI8& g, int64_t n0, int64_t n1) {
  streams::gemv_i8<AvxVnniI8>(g, n0, n1);
}

}  // namespace tinylm::engine

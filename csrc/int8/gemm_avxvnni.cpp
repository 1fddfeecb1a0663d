// AVX-VNNI int8 kernel (Alder Lake and later, Zen 5): the VEX-encoded 256-bit vpdpbusd.
// Same scheme as the AVX-512 VNNI kernel (w biased to unsigned, bias removed via
// sum x), on 32-byte vectors. Under SIMDe (TINYLM_SIMDE) the AVX-512VL form of the
// same instruction stands in, which computes the identical result.
#include "../simd_x86.h"
#include <cstring>

#include "kernels.h"
#include "panels.h"
#include "tiles.h"
#include "x86_reduce.h"

#if defined(TINYLM_SIMDE)
#define TINYLM_DPBUSD256(acc, a, b) _mm256_dpbusd_epi32(acc, a, b)
#else
#define TINYLM_DPBUSD256(acc, a, b) _mm256_dpbusd_avx_epi32(acc, a, b)
#endif

namespace tinylm::int8 {
namespace {

struct AvxVnni {
  static constexpr int kWidth = 32;
  static constexpr int kMR = 2, kNR = 4;  // 8 accumulators + 4 w + x + bias: 14 of 16 ymm
  static constexpr int32_t kBias = 128;
  using Acc = __m256i;
  using W = __m256i;
  using X = __m256i;

  static Acc zero() { return _mm256_setzero_si256(); }
  static W load_w(const int8_t* p) {
    return _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)p), _mm256_set1_epi8(char(0x80)));
  }
  static W load_w_tail(const int8_t* p, int bytes) {
    tiles::Tail<AvxVnni> t(p, bytes);
    return load_w(t.b);
  }
  static X load_x(const int8_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static Acc dot(Acc acc, X x, W w) { return TINYLM_DPBUSD256(acc, w, x); }
  template <int NR>
  static void reduce(const Acc* acc, int32_t* out) { reduce4<NR>(acc, out); }
};

// The packed form (panels.h): 8 output rows per vector, x broadcast four bytes at a time.
struct AvxVnniPanels {
  static constexpr int kLanes = 8;
  static constexpr int kMR = 6, kNR = 2;  // 12 accumulators + 2 w + x: 15 of 16 ymm
  static constexpr int kPackGroups = 0;  // packed word by word
  static constexpr uint32_t kFlip = 0x80808080u;
  static constexpr int32_t kBias = 128;
  using Acc = __m256i;
  using W = __m256i;
  using X = __m256i;

  static Acc zero() { return _mm256_setzero_si256(); }
  static W load_w(const uint32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static X broadcast_x(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
  }
  static Acc dot(Acc acc, W w, X x) { return TINYLM_DPBUSD256(acc, w, x); }
  static void store(int32_t* out, Acc acc) { _mm256_storeu_si256((__m256i*)out, acc); }
};

}  // namespace

void gemm_avxvnni(const Problem& p, int64_t n_begin, int64_t n_end) {
  if (p.M >= panels::kMinRows)
    panels::gemm<AvxVnniPanels>(p, n_begin, n_end);
  else
    tiles::gemm<AvxVnni>(p, n_begin, n_end);
}

}  // namespace tinylm::int8

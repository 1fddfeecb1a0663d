// AVX-512 VNNI int8 kernel: vpdpbusd on 64-byte vectors.
//
// vpdpbusd multiplies unsigned by signed bytes and adds groups of four straight into
// int32 (no int16 step, no saturation). Both our operands are signed, so w is biased to
// unsigned by flipping its top bit (w + 128, one vpxord per w vector, shared by the
// whole tile) and the bias is removed at the end: sum (w+128)*x = sum w*x + 128*sum x,
// with sum x per row computed once when x is quantized (Problem::x_sum).
// Uses only intrinsics SIMDe implements, so the logic can be tested without VNNI.
// GCC 12's own AVX-512 headers trip -Wuninitialized (_mm256_undefined_si256 inside
// _mm512_castsi512_si256 / _mm512_extracti64x4_epi64); the warning is not about our code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "../simd_x86.h"
#include "kernels.h"
#include "panels.h"
#include "tiles.h"
#include "x86_reduce.h"

namespace tinylm::int8 {
namespace {

struct Avx512Vnni {
  static constexpr int kWidth = 64;
  static constexpr int kMR = 4, kNR = 4;  // 16 accumulators + 4 w + x: 21 of 32 zmm
  static constexpr int32_t kBias = 128;
  using Acc = __m512i;
  using W = __m512i;
  using X = __m512i;

  static Acc zero() { return _mm512_setzero_si512(); }
  static W load_w(const int8_t* p) {
    return _mm512_xor_si512(_mm512_loadu_si512((const void*)p), _mm512_set1_epi8(char(0x80)));
  }
  static W load_w_tail(const int8_t* p, int bytes) {
    tiles::Tail<Avx512Vnni> t(p, bytes);
    return load_w(t.b);
  }
  static X load_x(const int8_t* p) { return _mm512_loadu_si512((const void*)p); }
  static Acc dot(Acc acc, X x, W w) { return _mm512_dpbusd_epi32(acc, w, x); }
  template <int NR>
  static void reduce(const Acc* acc, int32_t* out) { reduce4<NR>(acc, out); }
};

// The packed form (panels.h): 16 output rows per vector, x broadcast four bytes at a time.
struct Avx512VnniPanels {
  static constexpr int kLanes = 16;
  static constexpr int kMR = 6, kNR = 4;  // 24 accumulators + 4 w + x: 29 of 32 zmm
  static constexpr uint32_t kFlip = 0x80808080u;
  static constexpr int32_t kBias = 128;
  using Acc = __m512i;
  using W = __m512i;
  using X = __m512i;

  static Acc zero() { return _mm512_setzero_si512(); }
  static W load_w(const uint32_t* p) { return _mm512_loadu_si512((const void*)p); }
  static X broadcast_x(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  static Acc dot(Acc acc, W w, X x) { return _mm512_dpbusd_epi32(acc, w, x); }
  static void store(int32_t* out, Acc acc) { _mm512_storeu_si512((void*)out, acc); }

  // 16 rows x 64 bytes -> 16 groups of 16 words: a 16 x 16 transpose of 32-bit words.
  static constexpr int kPackGroups = 16;
  static void pack_groups(const int8_t* const* rows, int64_t k, uint32_t* out) {
    __m512i r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512((const void*)(rows[i] + k));
    for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: pairs of rows interleaved
      t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // lane q of r[i + j]: column 4q + j of rows i..i+3
      r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
      r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
      r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
      r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    const __m512i flip = _mm512_set1_epi32(int32_t(kFlip));
    for (int j = 0; j < 4; ++j) {  // gather lane q of r[j], r[4+j], r[8+j], r[12+j]
      const __m512i ab_lo = _mm512_shuffle_i32x4(r[j], r[4 + j], _MM_SHUFFLE(1, 0, 1, 0));
      const __m512i ab_hi = _mm512_shuffle_i32x4(r[j], r[4 + j], _MM_SHUFFLE(3, 2, 3, 2));
      const __m512i cd_lo = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], _MM_SHUFFLE(1, 0, 1, 0));
      const __m512i cd_hi = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], _MM_SHUFFLE(3, 2, 3, 2));
      const __m512i col[4] = {_mm512_shuffle_i32x4(ab_lo, cd_lo, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_i32x4(ab_lo, cd_lo, _MM_SHUFFLE(3, 1, 3, 1)),
                              _mm512_shuffle_i32x4(ab_hi, cd_hi, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_i32x4(ab_hi, cd_hi, _MM_SHUFFLE(3, 1, 3, 1))};
      for (int q = 0; q < 4; ++q)
        _mm512_storeu_si512((void*)(out + (4 * q + j) * 16), _mm512_xor_si512(col[q], flip));
    }
  }
};

}  // namespace

void gemm_avx512vnni(const Problem& p, int64_t n_begin, int64_t n_end) {
  if (p.M >= panels::kMinRows)
    panels::gemm<Avx512VnniPanels>(p, n_begin, n_end);
  else
    tiles::gemm<Avx512Vnni>(p, n_begin, n_end);
}

}  // namespace tinylm::int8

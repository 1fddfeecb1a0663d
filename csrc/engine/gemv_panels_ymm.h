// What the AVX2 and AVX-VNNI panel kernels (gemv_panels.h) share: a panel's 16 rows as
// two 256-bit vectors, rows 0-7 and 8-15, for the sums and for a group of weights. In an
// anonymous namespace, so that each kernel file compiles its own copy with its own flags.
#pragma once

#include <cstdint>

#include "../simd_x86.h"

namespace tinylm::engine {
namespace {

struct Ymm2 {
  __m256i lo, hi;
};

struct Ymm2Ops {
  using Acc = Ymm2;
  using W = Ymm2;
  static Acc zero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
  static Ymm2 load_group(const int8_t* w) {
    return {_mm256_loadu_si256((const __m256i*)w), _mm256_loadu_si256((const __m256i*)(w + 32))};
  }
  static Acc add(Acc a, Acc b) { return {_mm256_add_epi32(a.lo, b.lo), _mm256_add_epi32(a.hi, b.hi)}; }
  static void store(int32_t* out, Acc a) {
    _mm256_storeu_si256((__m256i*)out, a.lo);
    _mm256_storeu_si256((__m256i*)(out + 8), a.hi);
  }
};

}  // namespace
}  // namespace tinylm::engine

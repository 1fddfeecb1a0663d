// The decode step's x86 float32 GEMV loop, written once as a template over a
// per-instruction-set "Ops" struct (gemv_avx2.cpp and gemv_avx512.cpp define theirs; NEON
// has its own loop in gemv_neon.cpp; int8 weights are in panels, gemv_panels.h).
//
// Four rows at a time, one from each quarter of the range (rows n, n + q, n + 2q,
// n + 3q): each vector of x is loaded once for four rows, the
// four horizontal sums are done together, and the weights are read as four long
// sequential streams, which the hardware prefetchers follow (four adjacent rows at
// once, four short interleaved streams, measured 2x slower than one row at a time on a
// matrix larger than the caches; four quarters are 15-20% faster than one row at a
// time on the `small` and `medium` presets' matrices).
//
// As in csrc/int8/tiles.h, everything here is a template on Ops, which each kernel file
// defines in an anonymous namespace, so that every instantiation is compiled with its
// own file's flags.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../simd_x86.h"
#include "gemv_kernels.h"

namespace tinylm::engine::streams {

// How far ahead of its loads each stream asks for its weights, when the caller asks for
// that (a hint: it never faults, even past the matrix's end). Decode steps, old and new
// builds alternated. On the Xeon (2 MB of L2) it was added with: `baby` int8 (0.9 MB, in
// L2) 1 thread 26.3 -> 24.4 us (256 and 1024 bytes the same), `baby` fp32 2 threads
// (1.6 MB each) 100 -> 96 us (medians of 8), and `small` fp32 2 threads (beyond L2)
// 606 -> 583 us. On the Zen 4 EPYC (1 MB of L2) it costs where the weights stream from
// beyond L2: without it `medium` int8 1 thread 1,030-1,213 -> 892-984 us, `small` fp32
// 731-782 -> 633-681, `baby` int8 the same (benchmarks/NOTES.md, the thirteenth
// session). The engine asks for it where a thread's share of the weights fits in its L2:
// right for every preset on the Zen 4, for `baby` on the Xeon; on the Xeon's `small`
// fp32 and the Zen 3's `medium` (AVX2) the earlier measures favoured it beyond L2 too.
// (The int8 figures are of the row-major int8 kernels this loop also ran until the
// int8 weights moved to panels.)
constexpr int64_t kPrefetchBytes = 512;

// The address is formed as an integer: it may lie past the end of the weights. Static,
// so that each kernel file keeps its own copy, like the templates here.
static inline void prefetch_ahead(const void* p, int64_t offset) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + uintptr_t(offset)),
               _MM_HINT_T0);
}

// ---- float32. Ops: V, kWidth (floats per vector), zero(), load(p), fma(a, b, c) = a*b + c,
// mul(a, b), add(a, b), hsum(v).
//
// Each row sums in the same order whether it is one of four or alone (two accumulators,
// then the one-vector tail, then the scalar tail), so its result does not depend on how
// the rows are split.

// Always inlined: called with vectors by value, GCC leaves the upper halves of the
// vector registers dirty on returning from it and from its caller (no vzeroupper), and
// every SSE instruction after that, in the sampler's exp() calls above all, paid for
// it: `baby` fp32 decode steps took 182 us instead of 138.
template <class O>
[[gnu::always_inline]] inline float finish(typename O::V a0, typename O::V a1, const float* w,
                                           const float* x, int64_t k, int64_t K) {
  float s = O::hsum(O::add(a0, a1));
  for (; k + O::kWidth <= K; k += O::kWidth) s += O::hsum(O::mul(O::load(w + k), O::load(x + k)));
  for (; k < K; ++k) s += w[k] * x[k];
  return s;
}

template <class O>
void gemv_f32(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
              bool prefetch) {
  using V = typename O::V;
  constexpr int64_t w2 = 2 * O::kWidth;
  const int64_t q = (n1 - n0) / 4, whole = K / w2 * w2;
  const int64_t stride = q * K;  // from one quarter's row to the next's
  for (int64_t n = n0; n < n0 + q; ++n) {
    const float* w = W + n * K;
    V a[4][2];
    for (auto& r : a) r[0] = r[1] = O::zero();
    for (int64_t k = 0; k < whole; k += w2) {
      const V x0 = O::load(x + k), x1 = O::load(x + k + O::kWidth);
      if (prefetch)
        for (int r = 0; r < 4; ++r)
          for (int64_t b = 0; b < w2 * 4; b += 64)  // every cache line of this step's block
            prefetch_ahead(w + r * stride + k, kPrefetchBytes + b);
      for (int r = 0; r < 4; ++r) {
        a[r][0] = O::fma(O::load(w + r * stride + k), x0, a[r][0]);
        a[r][1] = O::fma(O::load(w + r * stride + k + O::kWidth), x1, a[r][1]);
      }
    }
    for (int r = 0; r < 4; ++r)
      y[n + r * q] = finish<O>(a[r][0], a[r][1], w + r * stride, x, whole, K);
  }
  for (int64_t n = n0 + 4 * q; n < n1; ++n) {  // the rest one at a time
    const float* w = W + n * K;
    V a0 = O::zero(), a1 = a0;
    for (int64_t k = 0; k < whole; k += w2) {
      a0 = O::fma(O::load(w + k), O::load(x + k), a0);
      a1 = O::fma(O::load(w + k + O::kWidth), O::load(x + k + O::kWidth), a1);
    }
    y[n] = finish<O>(a0, a1, w, x, whole, K);
  }
}

}  // namespace tinylm::engine::streams

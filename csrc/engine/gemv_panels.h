// The decode step's int8 GEMV over weights stored in panels (the int8 model file's
// layout, tinylm/quant.py): rows come in panels of 16, and within a panel each group of
// four bytes of K holds those four bytes of all 16 rows side by side, [ceil(N / 16)]
// [ceil(K / 4)][16][4], rows past N and bytes past K zero. One group is 64 bytes: one
// AVX-512 vector, two AVX2 ones, four NEON ones, whose 32-bit lanes are 16 different rows;
// x is broadcast four bytes at a time, and every lane ends as a finished sum, where the
// row-major layout ended each row in a horizontal sum (as many instructions as the
// products at `baby`'s K = 128). The weights are one sequential stream a panel.
//
// The prefill's products (gemm below) read the same panels for several rows of x at once,
// each group loaded once for all of them.
//
// Written once as a template on a per-instruction-set "Ops" struct, which each kernel
// file (gemv_panels_*.cpp) defines in an anonymous namespace, so that every instantiation
// is compiled with its own file's flags (as csrc/int8/tiles.h). Ops must provide:
//   Acc, W         the sums of one panel's 16 rows; one group of weights, loaded
//   kChains        independent accumulators a panel in the GEMV (to hide the dot's latency)
//   kRows          rows of x a pass in the GEMM (as many accumulators as the registers hold)
//   kBias          c = raw - kBias * x_sum (for kernels that bias w to unsigned)
//   zero(), load(w) (the group at w, 64 bytes), dot(acc, W, x) (acc += W times x's four
//   bytes at x, broadcast), add(a, b), store(int32_t out[16], acc)
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gemv_kernels.h"

namespace tinylm::engine::panels {

// The rows [first, last) of a panel whose first row is p0, from its raw sums: rescaled
// with int8::linear's expression, so that the two agree bit for bit, into y[n - n0]. A
// template on Ops like the rest, so that each kernel file has its own copy (a plain
// inline function compiled with AVX-512 flags could be the one every file calls).
template <class O>
void finish(const int32_t* raw, int64_t p0, int64_t first, int64_t last, uint32_t bias,
            float x_scale, const float* scale, float* y, int64_t n0) {
  for (int64_t n = first; n < last; ++n)
    y[n - n0] = float(int32_t(uint32_t(raw[n - p0]) - bias)) * (x_scale * scale[n]);
}

template <class O>
void gemv(const PanelGemv& g, int64_t n0, int64_t n1) {
  using Acc = typename O::Acc;
  constexpr int kChains = O::kChains;
  const int64_t groups = panel_groups(g.K);
  // wrapping arithmetic: the biased sums may exceed int32, the differences are exact
  const uint32_t bias = uint32_t(O::kBias) * uint32_t(g.x_sum);
  for (int64_t p = n0 / kPanelRows; p * kPanelRows < n1; ++p) {
    const int8_t* w = g.W + p * groups * kPanelBytesPerGroup;
    Acc a[kChains];
    for (auto& acc : a) acc = O::zero();
    int64_t k = 0;
    for (; k + kChains <= groups; k += kChains)
      for (int j = 0; j < kChains; ++j)
        a[j] = O::dot(a[j], O::load(w + (k + j) * kPanelBytesPerGroup), g.x + 4 * (k + j));
    for (; k < groups; ++k) a[0] = O::dot(a[0], O::load(w + k * kPanelBytesPerGroup), g.x + 4 * k);
    for (int j = 1; j < kChains; ++j) a[0] = O::add(a[0], a[j]);
    alignas(64) int32_t raw[kPanelRows];
    O::store(raw, a[0]);
    // only the rows asked for: a panel at either end of [n0, n1) may hold others' rows
    const int64_t p0 = p * kPanelRows;
    finish<O>(raw, p0, std::max(n0, p0), std::min(n1, p0 + kPanelRows), bias, g.x_scale, g.scale,
              g.y, n0);
  }
}

// Rows [t0, t0 + R) of x against one panel, whose rows [first, last) are written (the
// panel's first row is p0).
template <class O, int R>
void gemm_rows(const PanelGemm& g, const int8_t* w, int64_t groups, int64_t t0, int64_t p0,
               int64_t first, int64_t last, int64_t n0) {
  typename O::Acc acc[R];
  for (auto& a : acc) a = O::zero();
  const int8_t* x = g.x + t0 * g.x_stride;
  for (int64_t k = 0; k < groups; ++k) {
    const typename O::W wv = O::load(w + k * kPanelBytesPerGroup);
    for (int i = 0; i < R; ++i) acc[i] = O::dot(acc[i], wv, x + i * g.x_stride + 4 * k);
  }
  for (int i = 0; i < R; ++i) {
    alignas(64) int32_t raw[kPanelRows];
    O::store(raw, acc[i]);
    const uint32_t bias = uint32_t(O::kBias) * uint32_t(g.x_sum[t0 + i]);
    finish<O>(raw, p0, first, last, bias, g.x_scale[t0 + i], g.scale, g.y + (t0 + i) * g.y_stride, n0);
  }
}

// The last r < R rows of x, through the largest pass that fits.
template <class O, int R>
void gemm_rows_any(const PanelGemm& g, const int8_t* w, int64_t groups, int64_t t0, int r,
                   int64_t p0, int64_t first, int64_t last, int64_t n0) {
  if constexpr (R > 1)
    if (r < R) return gemm_rows_any<O, R - 1>(g, w, groups, t0, r, p0, first, last, n0);
  gemm_rows<O, R>(g, w, groups, t0, p0, first, last, n0);
}

template <class O>
void gemm(const PanelGemm& g, int64_t n0, int64_t n1) {
  constexpr int R = O::kRows;
  const int64_t groups = panel_groups(g.K);
  for (int64_t p = n0 / kPanelRows; p * kPanelRows < n1; ++p) {
    const int8_t* w = g.W + p * groups * kPanelBytesPerGroup;
    const int64_t p0 = p * kPanelRows;
    const int64_t first = std::max(n0, p0), last = std::min(n1, p0 + kPanelRows);
    int64_t t = 0;
    for (; t + R <= g.T; t += R) gemm_rows<O, R>(g, w, groups, t, p0, first, last, n0);
    if (t < g.T) gemm_rows_any<O, R>(g, w, groups, t, int(g.T - t), p0, first, last, n0);
  }
}

}  // namespace tinylm::engine::panels

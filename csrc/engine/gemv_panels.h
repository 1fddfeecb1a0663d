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
//   Acc, W, X      the sums of one panel's 16 rows; a group of weights, loaded; four
//                  bytes of x, broadcast
//   kChains        independent accumulators a panel in the GEMV (to hide the dot's latency)
//   kRows, kPanels rows of x and panels a pass in the GEMM (kRows x kPanels accumulators,
//                  as many as the registers hold)
//   kBias          c = raw - kBias * x_sum (for kernels that bias w to unsigned)
//   zero(), load(w) (the group at w, 64 bytes), broadcast(x) (the four bytes at x),
//   dot(acc, W, X) (acc += W times X), add(a, b), store(int32_t out[16], acc)
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gemv_kernels.h"

namespace tinylm::engine::panels {

// The rows of the panel whose first row is p0 that lie in [n0, n1) (a panel at either
// end may hold others' rows), from its raw sums: rescaled with int8::linear's expression,
// so that the two agree bit for bit, into y[n - n0]. A template on Ops like the rest, so
// that each kernel file has its own copy (a plain inline function compiled with AVX-512
// flags could be the one every file calls).
template <class O>
void finish(const int32_t* raw, int64_t p0, int64_t n0, int64_t n1, uint32_t bias,
            float x_scale, const float* scale, float* y) {
  const int64_t first = std::max(n0, p0), last = std::min(n1, p0 + kPanelRows);
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
      for (int j = 0; j < kChains; ++j) {
        const int64_t at = k + j;
        a[j] = O::dot(a[j], O::load(w + at * kPanelBytesPerGroup), O::broadcast(g.x + 4 * at));
      }
    for (; k < groups; ++k)
      a[0] = O::dot(a[0], O::load(w + k * kPanelBytesPerGroup), O::broadcast(g.x + 4 * k));
    for (int j = 1; j < kChains; ++j) a[0] = O::add(a[0], a[j]);
    alignas(64) int32_t raw[kPanelRows];
    O::store(raw, a[0]);
    finish<O>(raw, p * kPanelRows, n0, n1, bias, g.x_scale, g.scale, g.y);
  }
}

// Rows [t0, t0 + R) of x against NP consecutive panels from panel p (each x broadcast
// once for all of them), writing the panels' rows within [n0, n1). Every loop over the
// accumulators is unrolled, the stores after the products too: with those left a loop,
// GCC kept the accumulators in memory as well, copying and storing each around every
// product (6 rows x 4 panels at AVX-512 VNNI then took 183 ms over 512 tokens of `medium`,
// 120 ms unrolled; benchmarks/NOTES.md).
template <class O, int R, int NP>
void gemm_rows(const PanelGemm& g, int64_t p, int64_t groups, int64_t t0, int64_t n0, int64_t n1) {
  const int64_t panel_bytes = groups * kPanelBytesPerGroup;
  const int8_t* w = g.W + p * panel_bytes;
  typename O::Acc acc[R * NP];
#pragma GCC unroll 32
  for (int i = 0; i < R * NP; ++i) acc[i] = O::zero();
  const int8_t* x = g.x + t0 * g.x_stride;
  for (int64_t k = 0; k < groups; ++k) {
    typename O::W wv[NP];
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) wv[j] = O::load(w + j * panel_bytes + k * kPanelBytesPerGroup);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const typename O::X xv = O::broadcast(x + i * g.x_stride + 4 * k);
#pragma GCC unroll 4
      for (int j = 0; j < NP; ++j) acc[i * NP + j] = O::dot(acc[i * NP + j], wv[j], xv);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    const uint32_t bias = uint32_t(O::kBias) * uint32_t(g.x_sum[t0 + i]);
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) {
      alignas(64) int32_t raw[kPanelRows];
      O::store(raw, acc[i * NP + j]);
      finish<O>(raw, (p + j) * kPanelRows, n0, n1, bias, g.x_scale[t0 + i], g.scale,
                g.y + (t0 + i) * g.y_stride);
    }
  }
}

// Rows [t, T) of x, fewer than R, against NP panels from panel p: the largest pass that
// fits, then the rest.
template <class O, int R, int NP>
void gemm_tail(const PanelGemm& g, int64_t p, int64_t groups, int64_t t, int64_t n0, int64_t n1) {
  if constexpr (R > 1)
    if (g.T - t < R) return gemm_tail<O, R - 1, NP>(g, p, groups, t, n0, n1);
  gemm_rows<O, R, NP>(g, p, groups, t, n0, n1);
  if (t + R < g.T) gemm_tail<O, R, NP>(g, p, groups, t + R, n0, n1);
}

// Every row of x against NP panels from panel p, R rows a pass.
template <class O, int R, int NP>
void gemm_panels(const PanelGemm& g, int64_t p, int64_t groups, int64_t n0, int64_t n1) {
  int64_t t = 0;
  for (; t + R <= g.T; t += R) gemm_rows<O, R, NP>(g, p, groups, t, n0, n1);
  if (t < g.T) gemm_tail<O, R, NP>(g, p, groups, t, n0, n1);
}

template <class O>
void gemm(const PanelGemm& g, int64_t n0, int64_t n1) {
  constexpr int R = O::kRows, NP = O::kPanels;
  const int64_t groups = panel_groups(g.K), end = (n1 + kPanelRows - 1) / kPanelRows;
  int64_t p = n0 / kPanelRows;
  for (; p + NP <= end; p += NP) gemm_panels<O, R, NP>(g, p, groups, n0, n1);
  for (; p < end; ++p) gemm_panels<O, R, 1>(g, p, groups, n0, n1);
}

}  // namespace tinylm::engine::panels

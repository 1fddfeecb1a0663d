// The blocking loop shared by every SIMD int8 kernel, written once as a template over a
// per-ISA "Ops" struct (vector types, loads, the dot-product step, the reduction).
//
// Each kernel file defines its Ops struct in an anonymous namespace, so every
// instantiation below has internal linkage and is compiled with that file's flags only;
// this header must therefore contain nothing that is not a template on Ops (a plain
// inline function here would be shared between files built with different flags).
//
// Layout: both operands are row-major along K ("dot-product" form), so the weights are
// read in place: an MR x NR tile keeps MR*NR vector accumulators, streams K in
// vector-width steps, and reduces each accumulator horizontally at the end. This is the
// GEMV of every kernel and the GEMM of those without a packed form (panels.h).
// Ops must provide:
//   kWidth                  bytes of K per step (x rows are zero-padded to it)
//   kMR, kNR                largest tile (fits the register file)
//   kBias                   c = raw - kBias * x_sum[m] (for kernels that bias w to u8)
//   Acc, X, W               vector types; X is whatever load_x prepares per x row
//   zero(), load_x(p), load_w(p), load_w_tail(p, bytes), dot(acc, X, W)
//   reduce<NR>(const Acc*, int32_t* out)   out[j] = horizontal sum of acc[j]
#pragma once

#include <cstdint>
#include <cstring>

#include "int8.h"

namespace tinylm::int8::tiles {

template <class Ops, int MR, int NR>
void tile(const Problem& p, int64_t m0, int64_t n0) {
  typename Ops::Acc acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = Ops::zero();
  const int8_t* xr[MR];
  const int8_t* wr[NR];
  for (int i = 0; i < MR; ++i) xr[i] = p.x + (m0 + i) * p.x_stride;
  for (int j = 0; j < NR; ++j) wr[j] = p.w + (n0 + j) * p.K;

  const int64_t k_full = p.K - p.K % Ops::kWidth;
  int64_t k = 0;
  for (; k < k_full; k += Ops::kWidth) {
    typename Ops::W wv[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) wv[j] = Ops::load_w(wr[j] + k);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const typename Ops::X xv = Ops::load_x(xr[i] + k);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = Ops::dot(acc[i][j], xv, wv[j]);
    }
  }
  if (k < p.K) {
    // The last partial vector. x is zero-padded, so whatever w bytes lie past the row's
    // end (the next row's) are multiplied by 0; only past the end of the whole matrix
    // must w be copied into a padded buffer instead of read in place.
    const int8_t* w_end = p.w + p.N * p.K;
    typename Ops::W wv[NR];
    for (int j = 0; j < NR; ++j)
      wv[j] = wr[j] + k + Ops::kWidth <= w_end ? Ops::load_w(wr[j] + k)
                                               : Ops::load_w_tail(wr[j] + k, int(p.K - k));
    for (int i = 0; i < MR; ++i) {
      const typename Ops::X xv = Ops::load_x(xr[i] + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = Ops::dot(acc[i][j], xv, wv[j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    int32_t out[NR];
    Ops::template reduce<NR>(acc[i], out);
    write_row(p, m0 + i, n0, out, NR, uint32_t(Ops::kBias) * uint32_t(p.x_sum[m0 + i]));
  }
}

// Runs the tile for a runtime-sized edge (mr <= MR, nr <= NR) with compile-time sizes.
template <class Ops, int MR>
void tile_nr(const Problem& p, int64_t m0, int64_t n0, int nr) {
  if constexpr (MR > 0) {
    switch (nr) {
      case 1: return tile<Ops, MR, 1>(p, m0, n0);
      case 2: if constexpr (Ops::kNR >= 2) return tile<Ops, MR, 2>(p, m0, n0); break;
      case 3: if constexpr (Ops::kNR >= 3) return tile<Ops, MR, 3>(p, m0, n0); break;
      case 4: if constexpr (Ops::kNR >= 4) return tile<Ops, MR, 4>(p, m0, n0); break;
      default: break;
    }
  }
}

template <class Ops>
void tile_any(const Problem& p, int64_t m0, int64_t n0, int mr, int nr) {
  switch (mr) {
    case 1: return tile_nr<Ops, 1>(p, m0, n0, nr);
    case 2: if constexpr (Ops::kMR >= 2) return tile_nr<Ops, 2>(p, m0, n0, nr); break;
    case 3: if constexpr (Ops::kMR >= 3) return tile_nr<Ops, 3>(p, m0, n0, nr); break;
    case 4: if constexpr (Ops::kMR >= 4) return tile_nr<Ops, 4>(p, m0, n0, nr); break;
    default: break;
  }
}

// The kernel entry point: c[:, n_begin:n_end].
template <class Ops>
void gemm(const Problem& p, int64_t n_begin, int64_t n_end) {
  static_assert(Ops::kMR >= 1 && Ops::kMR <= 4 && Ops::kNR >= 1 && Ops::kNR <= 4, "tile");
  if (p.M == 1) {
    // GEMV is bound by reading w: one row at a time reads w as a single sequential
    // stream, which the hardware prefetcher follows best (measured on Zen 4: 27 GB/s
    // against 21 GB/s for four interleaved rows, and 33 GB/s for a plain read).
    for (int64_t n = n_begin; n < n_end; ++n) tile<Ops, 1, 1>(p, 0, n);
    return;
  }
  // GEMM: x rows are visited in blocks of kMB so that a block of x (kMB * K bytes) stays
  // in L2 while the w tile (kNR rows) sits in L1 and is reused by every x row.
  constexpr int64_t kMB = 64;
  for (int64_t mb = 0; mb < p.M; mb += kMB) {
    const int64_t mb_end = mb + kMB < p.M ? mb + kMB : p.M;
    for (int64_t n = n_begin; n < n_end; n += Ops::kNR) {
      const int nr = int(n_end - n < Ops::kNR ? n_end - n : Ops::kNR);
      for (int64_t m = mb; m < mb_end; m += Ops::kMR) {
        const int mr = int(mb_end - m < Ops::kMR ? mb_end - m : Ops::kMR);
        if (mr == Ops::kMR && nr == Ops::kNR)
          tile<Ops, Ops::kMR, Ops::kNR>(p, m, n);
        else
          tile_any<Ops>(p, m, n, mr, nr);
      }
    }
  }
}

// Copies the last `bytes` (< kWidth) bytes of a w row into a zeroed vector-sized buffer.
// (Templated on Ops, not on the width, so that each kernel file gets its own copy.)
template <class Ops>
struct Tail {
  alignas(64) int8_t b[Ops::kWidth];
  Tail(const int8_t* p, int bytes) {
    std::memset(b, 0, sizeof b);
    std::memcpy(b, p, size_t(bytes));
  }
};

}  // namespace tinylm::int8::tiles

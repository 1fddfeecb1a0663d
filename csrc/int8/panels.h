// The GEMM loop for the kernels whose dot-product instruction adds groups of four byte
// products into each 32-bit lane (VNNI's vpdpbusd, ARM's sdot): w is repacked at each
// call so that a vector's lanes are different output rows, and x is broadcast.
//
// Why: in the dot-product form of tiles.h a vector accumulates one output along K and
// must be summed horizontally at the end. With the short rows of small models (K = 128
// is two 64-byte steps) those sums cost as much as the products. Here every lane of
// every accumulator is a finished output: no horizontal sum at all.
//
// Packed layout, for L lanes: w rows come in panels of L rows. Within a panel, group g
// (bytes 4g .. 4g+3 of each row) is L consecutive 32-bit words, word l holding those four
// bytes of row l, XORed with Ops::kFlip (0x80808080 for the kernels that bias w to
// unsigned). Rows past the end and bytes past K hold a flipped zero. Packing reads each
// weight byte once; the packed products then run up to twice as fast per x row, which
// repays the packing from about 8 rows (measured at K = 1024 on AVX-512 VNNI; sooner at
// K = 128). Below kMinRows, and for the GEMV, the dot-product form runs.
//
// Like tiles.h, everything here is a template on Ops, which each kernel file defines in
// an anonymous namespace, so each instantiation is compiled with its own file's flags.
// Ops must provide:
//   kLanes, kMR, kNR        lanes (rows per panel); tile of kMR x rows by kNR panels
//   kFlip, kBias            w word XOR mask; c = raw - kBias * x_sum[m]
//   kPackGroups             0, or the groups pack_groups(rows[kLanes], k, out) packs:
//                           bytes k .. k + 4*kPackGroups of every row, flipped, to `out`
//   Acc, W, X               vector types
//   zero(), load_w(const uint32_t*), broadcast_x(const int8_t*) (4 bytes to every lane),
//   dot(acc, W, X), store(int32_t* out, Acc)
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "int8.h"

namespace tinylm::int8::panels {

// From this many x rows up, gemm() below beats the dot-product form (tiles::gemm).
constexpr int64_t kMinRows = 8;

inline int64_t groups_of(int64_t K) { return (K + 3) / 4; }

// Packs w rows [0, rows) (row-major, K bytes each) into `out`. Full panels go through
// Ops::pack_groups, kPackGroups groups at a time, if the kernel has a vector transpose;
// the rest word by word.
template <class Ops>
void pack(const int8_t* w, int64_t K, int64_t rows, uint32_t* out) {
  constexpr int L = Ops::kLanes;
  const int64_t groups = groups_of(K), full = K / 4;
  for (int64_t r0 = 0; r0 < rows; r0 += L) {
    uint32_t* panel = out + (r0 / L) * groups * L;
    int64_t g0 = 0;
    if constexpr (Ops::kPackGroups > 0) {
      if (r0 + L <= rows) {
        const int8_t* src[L];
        for (int l = 0; l < L; ++l) src[l] = w + (r0 + l) * K;
        for (; g0 + Ops::kPackGroups <= full; g0 += Ops::kPackGroups)
          Ops::pack_groups(src, 4 * g0, panel + g0 * L);
      }
    }
    for (int l = 0; l < L; ++l) {
      uint32_t* dst = panel + l;
      if (r0 + l >= rows) {
        for (int64_t g = g0; g < groups; ++g) dst[g * L] = Ops::kFlip;
        continue;
      }
      const int8_t* src = w + (r0 + l) * K;
      for (int64_t g = g0; g < full; ++g) {
        uint32_t v;
        std::memcpy(&v, src + 4 * g, 4);
        dst[g * L] = v ^ Ops::kFlip;
      }
      if (full < groups) {  // the row's last 1-3 bytes; never read past the row
        uint32_t v = 0;
        std::memcpy(&v, src + 4 * full, size_t(K - 4 * full));
        dst[full * L] = v ^ Ops::kFlip;
      }
    }
  }
}

// c[m0 .. m0+MR, n0 .. n0+n_valid) from NR consecutive packed panels starting at `w`.
template <class Ops, int MR, int NR>
void tile(const Problem& p, const uint32_t* w, int64_t groups, int64_t m0, int64_t n0,
          int64_t n_valid) {
  constexpr int L = Ops::kLanes;
  // Every loop over the tile is unrolled, so the accumulators live in registers.
  typename Ops::Acc acc[MR][NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = Ops::zero();
  const int8_t* xr[MR];
  for (int i = 0; i < MR; ++i) xr[i] = p.x + (m0 + i) * p.x_stride;
  const int64_t panel_words = groups * L;
  for (int64_t g = 0; g < groups; ++g) {
    typename Ops::W wv[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) wv[j] = Ops::load_w(w + j * panel_words + g * L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const typename Ops::X xv = Ops::broadcast_x(xr[i] + 4 * g);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) acc[i][j] = Ops::dot(acc[i][j], wv[j], xv);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const uint32_t bias = uint32_t(Ops::kBias) * uint32_t(p.x_sum[m0 + i]);
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      alignas(64) int32_t raw[L];
      Ops::store(raw, acc[i][j]);
      const int64_t lanes = std::min<int64_t>(L, n_valid - j * L);
      if (lanes > 0) write_row(p, m0 + i, n0 + j * L, raw, int(lanes), bias);
    }
  }
}

// Runs the tile for a runtime-sized edge (mr <= kMR rows, nr <= kNR panels).
template <class Ops, int MR>
void tile_nr(const Problem& p, const uint32_t* w, int64_t groups, int64_t m0, int64_t n0,
             int64_t n_valid, int nr) {
  if constexpr (MR > 0) {
    switch (nr) {
      case 1: return tile<Ops, MR, 1>(p, w, groups, m0, n0, n_valid);
      case 2: if constexpr (Ops::kNR >= 2) return tile<Ops, MR, 2>(p, w, groups, m0, n0, n_valid); break;
      case 3: if constexpr (Ops::kNR >= 3) return tile<Ops, MR, 3>(p, w, groups, m0, n0, n_valid); break;
      case 4: if constexpr (Ops::kNR >= 4) return tile<Ops, MR, 4>(p, w, groups, m0, n0, n_valid); break;
      default: break;
    }
  }
}

template <class Ops, int MR = Ops::kMR>
void tile_any(const Problem& p, const uint32_t* w, int64_t groups, int64_t m0, int64_t n0,
              int64_t n_valid, int mr, int nr) {
  if constexpr (MR > 0) {
    if (mr == MR) return tile_nr<Ops, MR>(p, w, groups, m0, n0, n_valid, nr);
    return tile_any<Ops, MR - 1>(p, w, groups, m0, n0, n_valid, mr, nr);
  }
}

// c[:, n_begin:n_end], for p.M >= kMinRows. Rows of w are packed a block at a time, a
// block small enough to stay in L2 while every x row passes over it.
template <class Ops>
void gemm(const Problem& p, int64_t n_begin, int64_t n_end) {
  static_assert(Ops::kNR >= 1 && Ops::kNR <= 4, "tile");
  constexpr int L = Ops::kLanes;
  constexpr int64_t kBlockBytes = 256 << 10;
  const int64_t groups = groups_of(p.K);
  const int64_t tile_rows = int64_t(Ops::kNR) * L;
  const int64_t block_rows =
      std::max<int64_t>(1, kBlockBytes / (groups * 4 * tile_rows)) * tile_rows;
  thread_local std::vector<uint32_t> packed;
  for (int64_t b0 = n_begin; b0 < n_end; b0 += block_rows) {
    const int64_t rows = std::min(block_rows, n_end - b0);
    const int64_t panels = (rows + L - 1) / L;
    if (packed.size() < size_t(panels * groups * L)) packed.resize(size_t(panels * groups * L));
    pack<Ops>(p.w + b0 * p.K, p.K, rows, packed.data());
    for (int64_t m = 0; m < p.M; m += Ops::kMR) {
      const int mr = int(std::min<int64_t>(Ops::kMR, p.M - m));
      for (int64_t j = 0; j < panels; j += Ops::kNR) {
        const int nr = int(std::min<int64_t>(Ops::kNR, panels - j));
        const uint32_t* w = packed.data() + j * groups * L;
        const int64_t n0 = b0 + j * L;
        if (mr == Ops::kMR && nr == Ops::kNR)
          tile<Ops, Ops::kMR, Ops::kNR>(p, w, groups, m, n0, b0 + rows - n0);
        else
          tile_any<Ops>(p, w, groups, m, n0, b0 + rows - n0, mr, nr);
      }
    }
  }
}

}  // namespace tinylm::int8::panels

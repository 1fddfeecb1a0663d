// NEON i8mm int8 kernel (ARMv8.6 smmla: Apple M2+, Neoverse V1/N2, Cortex-A710+), GEMM only.
//
// smmla multiplies a 2x8 by an 8x2 block of signed bytes into a 2x2 int32 block:
// acc = [x0.w0, x0.w1, x1.w0, x1.w1] for the 8 bytes of two x rows and two w rows, twice
// the work of an sdot per instruction. A 4x4 tile holds four such blocks. Edges reuse a
// valid row and discard its results. GEMV (M = 1) would waste half of every smmla, so it
// goes to the dotprod kernel, which every i8mm CPU also has.
#include <arm_neon.h>

#include <cstring>

#include "kernels.h"

namespace tinylm::int8 {
namespace {

// Loads 8 bytes of w at `p` (the row's last chunk is copied if it would cross the end).
inline int8x8_t load_w8(const int8_t* p, const int8_t* end) {
  if (p + 8 <= end) return vld1_s8(p);
  int8_t b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(b, p, size_t(end - p));
  return vld1_s8(b);
}

void tile4x4(const Problem& p, int64_t m0, int mr, int64_t n0, int nr) {
  const int8_t* x[4];
  const int8_t* w[4];
  for (int i = 0; i < 4; ++i) x[i] = p.x + (m0 + (i < mr ? i : 0)) * p.x_stride;
  for (int j = 0; j < 4; ++j) w[j] = p.w + (n0 + (j < nr ? j : 0)) * p.K;
  const int8_t* w_end = p.w + p.N * p.K;
  int32x4_t acc[2][2];  // [x pair][w pair]
  for (auto& row : acc)
    for (auto& a : row) a = vdupq_n_s32(0);
  for (int64_t k = 0; k < p.K; k += 8) {
    // x rows are zero-padded to a multiple of 64 bytes, so they are read in place; the
    // zeros also cancel whatever w bytes past K (the next row's) are read.
    const int8x16_t xa = vcombine_s8(vld1_s8(x[0] + k), vld1_s8(x[1] + k));
    const int8x16_t xb = vcombine_s8(vld1_s8(x[2] + k), vld1_s8(x[3] + k));
    const int8x16_t wa = vcombine_s8(load_w8(w[0] + k, w_end), load_w8(w[1] + k, w_end));
    const int8x16_t wb = vcombine_s8(load_w8(w[2] + k, w_end), load_w8(w[3] + k, w_end));
    acc[0][0] = vmmlaq_s32(acc[0][0], xa, wa);
    acc[0][1] = vmmlaq_s32(acc[0][1], xa, wb);
    acc[1][0] = vmmlaq_s32(acc[1][0], xb, wa);
    acc[1][1] = vmmlaq_s32(acc[1][1], xb, wb);
  }
  for (int xi = 0; xi < 2; ++xi)
    for (int wj = 0; wj < 2; ++wj) {
      int32_t v[4];
      vst1q_s32(v, acc[xi][wj]);
      for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 2; ++c) {
          const int i = 2 * xi + r, j = 2 * wj + c;
          if (i < mr && j < nr) write_row(p, m0 + i, n0 + j, &v[2 * r + c], 1, 0);
        }
    }
}

}  // namespace

void gemm_neon_i8mm(const Problem& p, int64_t n_begin, int64_t n_end) {
  if (p.M == 1) return gemm_neon_dotprod(p, n_begin, n_end);
  constexpr int64_t kMB = 64;  // x block kept in L2 while a w tile is reused
  for (int64_t mb = 0; mb < p.M; mb += kMB) {
    const int64_t mb_end = mb + kMB < p.M ? mb + kMB : p.M;
    for (int64_t n = n_begin; n < n_end; n += 4)
      for (int64_t m = mb; m < mb_end; m += 4)
        tile4x4(p, m, int(mb_end - m < 4 ? mb_end - m : 4), n, int(n_end - n < 4 ? n_end - n : 4));
  }
}

}  // namespace tinylm::int8

// int8 dispatch: quantizes activations, pads them for the kernels, picks the kernel
// for the active instruction-set level at each call, and splits the output rows over
// the thread pool. Portable C++ (no ISA flags): it only calls the kernels through
// kernels() after checking the CPU level.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "../cpu.h"
#include "../threads.h"
#include "kernels.h"

namespace tinylm::int8 {
namespace {

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// Rounds to nearest, ties to even, like numpy.rint, for |v| < 2^22: adding 1.5 * 2^23
// pushes the fraction bits out of the float32 mantissa. Vectorizes, unlike nearbyintf.
inline float round_even(float v) {
  const float magic = 12582912.0f;
  return (v + magic) - magic;
}

// Reusable per-thread buffers, so a decode step allocates nothing.
struct Scratch {
  std::vector<int8_t> xq;
  std::vector<int32_t> x_sum;
  std::vector<float> x_scale;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Output rows are handed to threads in blocks of 16 (a packed panel of the VNNI kernels,
// a multiple of every other kernel's tile), and a chunk carries at least ~2M
// multiply-adds (~10 us): waking a pool thread costs tens of microseconds on a busy
// machine, so small layers stay on the calling thread.
constexpr int64_t kRowBlock = 16;
constexpr int64_t kMinChunkWork = int64_t(1) << 21;

template <class Fn>
void for_row_blocks(int64_t M, int64_t N, int64_t K, Fn&& fn) {
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  const int64_t work_per_block = std::max<int64_t>(1, M * K * kRowBlock);
  const int64_t grain = std::max<int64_t>(1, kMinChunkWork / work_per_block);
  parallel_for(blocks, grain, [&](int64_t b0, int64_t b1) {
    fn(b0 * kRowBlock, std::min(N, b1 * kRowBlock));
  });
}

const KernelInfo& select(uint32_t features) {
  for (const auto& k : kernels())
    if ((k.features & ~features) == 0) return k;
  return kernels().back();
}

// Sums each padded row of q (the kernels that bias w need sum_k x[m, k]).
void row_sums(const int8_t* q, int64_t M, int64_t stride, int32_t* sums) {
  for (int64_t m = 0; m < M; ++m) {
    int32_t s = 0;
    for (int64_t k = 0; k < stride; ++k) s += q[m * stride + k];
    sums[m] = s;
  }
}

}  // namespace

const std::vector<KernelInfo>& kernels() {
  static const std::vector<KernelInfo> list = {
#if defined(__x86_64__) || defined(_M_X64)
      {"avx512vnni", kAVX2 | kAVX512 | kAVX512VNNI, gemm_avx512vnni},
      {"avxvnni", kAVX2 | kAVXVNNI, gemm_avxvnni},
      {"avx2", kAVX2, gemm_avx2},
#endif
#if defined(__aarch64__)
      {"neon_i8mm", kNEON | kDotProd | kI8MM, gemm_neon_i8mm},
#endif
#if defined(__aarch64__) || defined(__arm__)
      {"neon_dotprod", kNEON | kDotProd, gemm_neon_dotprod},
      {"neon", kNEON, gemm_neon},
#endif
      {"scalar", 0, gemm_ref},
  };
  return list;
}

std::string active_kernel() { return select(active_features()).name; }

void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, int64_t q_stride,
                   float* scale, int32_t* sums) {
#if defined(__x86_64__) || defined(_M_X64)
  const bool avx2 = (active_features() & kAVX2) != 0;
#endif
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    int8_t* out = q + m * q_stride;
#if defined(__x86_64__) || defined(_M_X64)
    int32_t sum = 0;
    if (avx2 && quantize_row_avx2(row, K, out, scale + m, &sum)) {
      if (sums != nullptr) sums[m] = sum;
      continue;
    }
#endif
    // max |x| on the float bit patterns: for non-negative floats integer order is float
    // order, inf and NaN sort above every finite value, and the integer max vectorizes
    // (a float max reduction does not without -ffast-math).
    int32_t amax_bits = 0;
    for (int64_t k = 0; k < K; ++k) {
      int32_t bits;
      std::memcpy(&bits, &row[k], 4);
      bits &= 0x7fffffff;
      amax_bits = bits > amax_bits ? bits : amax_bits;
    }
    float amax;
    std::memcpy(&amax, &amax_bits, 4);
    if (amax_bits >= 0x7f800000 || amax < kMinAmax) {
      // A row with NaN or inf gets scale NaN and q = 0, so its outputs are NaN. A row
      // whose largest magnitude is below kMinAmax counts as zero.
      scale[m] = amax_bits >= 0x7f800000 ? NAN : 0.0f;
      std::memset(out, 0, size_t(K));
      if (sums != nullptr) sums[m] = 0;
      continue;
    }
    scale[m] = amax / 127.0f;
    const float inv = 127.0f / amax;
    for (int64_t k = 0; k < K; ++k) {
      float v = round_even(row[k] * inv);
      v = v < 127.0f ? v : 127.0f;  // |x * inv| <= 127 already; guards rounding only
      v = v > -127.0f ? v : -127.0f;  // never -128: see int8.h
      out[k] = int8_t(int32_t(v));
    }
    if (sums != nullptr) row_sums(out, 1, K, sums + m);
  }
}

void gemm_i32_with(const KernelInfo& kernel, const int8_t* a, const int8_t* b, int32_t* c,
                   int64_t M, int64_t N, int64_t K) {
  Scratch& s = scratch();
  const int64_t stride = round_up(K, kPad);
  s.xq.assign(size_t(M * stride), 0);
  s.x_sum.resize(size_t(M));
  for (int64_t m = 0; m < M; ++m) std::memcpy(&s.xq[size_t(m * stride)], a + m * K, size_t(K));
  row_sums(s.xq.data(), M, stride, s.x_sum.data());
  const Problem p{s.xq.data(), stride, s.x_sum.data(), M, b, N, K, c, N};
  for_row_blocks(M, N, K, [&](int64_t n0, int64_t n1) { kernel.fn(p, n0, n1); });
}

void gemm_i32(const int8_t* a, const int8_t* b, int32_t* c, int64_t M, int64_t N, int64_t K) {
  gemm_i32_with(select(active_features()), a, b, c, M, N, K);
}

void linear(const float* x, int64_t M, int64_t K, const int8_t* wq, const float* w_scale,
            int64_t N, float* y) {
  const Linear layer{wq, w_scale, N, y};
  linear(x, M, K, &layer, 1);
}

void linear(const float* x, int64_t M, int64_t K, const Linear* layers, int n_layers) {
  const KernelInfo& kernel = select(active_features());
  Scratch& s = scratch();
  const int64_t stride = round_up(K, kPad);
  s.xq.assign(size_t(M * stride), 0);
  s.x_scale.resize(size_t(M));
  s.x_sum.resize(size_t(M));
  int8_t* xq = s.xq.data();
  float* x_scale = s.x_scale.data();
  int32_t* x_sum = s.x_sum.data();
  const int64_t rows_per_chunk = std::max<int64_t>(1, (int64_t(1) << 16) / K);  // ~64K values
  parallel_for(M, rows_per_chunk, [&](int64_t m0, int64_t m1) {
    quantize_rows(x + m0 * K, m1 - m0, K, xq + m0 * stride, stride, x_scale + m0, x_sum + m0);
  });
  for (int i = 0; i < n_layers; ++i) {
    const Linear& l = layers[i];
    Problem p{xq, stride, x_sum, M, l.wq, l.N, K, nullptr, l.N};
    p.x_scale = x_scale, p.w_scale = l.w_scale, p.y = l.y;  // dequantized in the kernels
    for_row_blocks(M, l.N, K, [&](int64_t n0, int64_t n1) { kernel.fn(p, n0, n1); });
  }
}

}  // namespace tinylm::int8

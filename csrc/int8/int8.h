// int8 matrix multiply: the public C++ API the inference engine calls.
//
// Scheme (see tinylm/quant.py for why): weights are symmetric int8 with one float scale
// per output row; activations are quantized per row (token) at call time to [-127, 127];
// products accumulate exactly in int32; the result is rescaled to float:
//
//     y[m, n] = float(sum_k xq[m, k] * wq[n, k]) * (x_scale[m] * w_scale[n])
//
// Every int8 value must lie in [-127, 127]: the AVX2 path (vpmaddubsw) and the ARMv8.0
// path (smull + smlal into int16) can overflow on -128. quantize_rows never produces
// -128; callers that bring their own int8 data (a model file) must check it.
//
// All functions are thread-safe and split the output rows (n) over tinylm::parallel_for.
// The instruction-set path is chosen at each call from tinylm::active_features().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tinylm::int8 {

// Quantizes each row of x [M, K] symmetrically: scale[m] = max|x[m, :]| / 127 and
// q[m, k] = round_half_even(x[m, k] * (127 / max|x[m, :]|)), clamped to [-127, 127].
// An all-zero row (or one whose max |x| < kMinAmax) gets scale 0 and q = 0; a row with
// NaN or inf gets scale NaN and q = 0 (its outputs become NaN). q_stride >= K.
// Below kMinAmax a row counts as zero: it keeps 127 / max|x| finite (no inf * 0).
// With `sums`, also sums[m] = sum_k q[m, k] (what kernels that bias x or w need), which
// the vector quantizer adds up as it goes.
constexpr float kMinAmax = 1e-30f;
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, int64_t q_stride,
                   float* scale, int32_t* sums = nullptr);

// Exact int32 accumulation c[m, n] = sum_k a[m, k] * b[n, k] (a [M, K], b [N, K],
// c [M, N], all row-major and contiguous) on the active path.
void gemm_i32(const int8_t* a, const int8_t* b, int32_t* c, int64_t M, int64_t N, int64_t K);

// y [M, N] = dequant(q(x) . wq^T) with x [M, K] float, wq [N, K] int8, w_scale [N].
// M == 1 is the decode GEMV, M > 1 the prefill/evaluation GEMM.
void linear(const float* x, int64_t M, int64_t K, const int8_t* wq, const float* w_scale,
            int64_t N, float* y);
// The same for several weight matrices applied to one x (a layer's q, k and v, or its
// gate and up): x is quantized once for all of them.
struct Linear {
  const int8_t* wq;
  const float* w_scale;
  int64_t N;
  float* y;
};
void linear(const float* x, int64_t M, int64_t K, const Linear* layers, int n_layers);

// Name of the kernel the active level selects (e.g. "avx512vnni", "avx2", "scalar").
std::string active_kernel();

// ---- kernels, for the tests (csrc/tests/test_int8.cpp) and the dispatcher -----------

// One int32 GEMM problem as the per-ISA kernels see it. x rows are zero-padded: bytes
// K .. x_stride-1 of every row are 0, and x_stride is a multiple of kPad, so a kernel may
// read whole vectors of x past K. w rows are exactly K bytes (a kernel must not read past
// the end of a w row). x_sum[m] = sum_k x[m, k] (used by kernels that bias x or w).
constexpr int64_t kPad = 64;

struct Problem {
  const int8_t* x;
  int64_t x_stride;
  const int32_t* x_sum;
  int64_t M;
  const int8_t* w;
  int64_t N, K;
  int32_t* c;
  int64_t c_stride;
  // With y set, kernels write y[m * c_stride + n] = float(c[m, n]) * (x_scale[m] *
  // w_scale[n]) instead of c: linear() dequantizes while a tile's sums are in registers.
  const float* x_scale = nullptr;
  const float* w_scale = nullptr;
  float* y = nullptr;
};

namespace {  // internal linkage: each kernel file compiles this with its own flags

// Writes the results for row m, columns n0 .. n0+count, from raw sums less `bias`
// (unsigned arithmetic: a biased kernel's raw sum may wrap around; the difference is
// still exact modulo 2^32, and the true result fits in int32), as c or as y.
inline void write_row(const Problem& p, int64_t m, int64_t n0, const int32_t* raw, int count,
                      uint32_t bias) {
  if (p.y != nullptr) {
    const float xs = p.x_scale[m];
    const float* ws = p.w_scale + n0;
    float* y = p.y + m * p.c_stride + n0;
    for (int j = 0; j < count; ++j) y[j] = float(int32_t(uint32_t(raw[j]) - bias)) * (xs * ws[j]);
  } else {
    int32_t* c = p.c + m * p.c_stride + n0;
    for (int j = 0; j < count; ++j) c[j] = int32_t(uint32_t(raw[j]) - bias);
  }
}

}  // namespace

// Computes c[m, n] for every m and for n in [n_begin, n_end).
using Kernel = void (*)(const Problem& p, int64_t n_begin, int64_t n_end);

struct KernelInfo {
  const char* name;
  uint32_t features;  // tinylm::Feature bits the kernel needs
  Kernel fn;
};

// The kernels compiled into this build, best first; the last is the scalar reference.
const std::vector<KernelInfo>& kernels();

// gemm_i32 on a given kernel (tests use it to run a path regardless of the active level,
// e.g. a SIMDe build of a VNNI kernel on a CPU without VNNI).
void gemm_i32_with(const KernelInfo& kernel, const int8_t* a, const int8_t* b, int32_t* c,
                   int64_t M, int64_t N, int64_t K);

// Reads n_words 64-bit words and returns their wrapping sum, in the widest loads of the
// active instruction-set level. The benchmarks use it to measure the machine's streaming
// read bandwidth with the same thread pool: the roofline of a decode step.
uint64_t read_checksum(const uint64_t* data, int64_t n_words);
// The loads read_checksum uses at the active level: "avx512", "avx2" or "portable" (the
// baseline's 16-byte vectors).
const char* read_path();

}  // namespace tinylm::int8

// The decode step's per-instruction-set kernels (each file compiled with its own flags by
// build_isa.py); only gemv.cpp, the tests and benchmarks/*.cpp call them directly.
//
// int8 (gemv_panels_*.cpp): exact int32 products over weights in panels, below.
//
// float32 (gemv_*.cpp): each computes rows [n0, n1) of y = W x for a row-major W [N, K],
// and sums K in the same blocked order whatever rows it is given, so a row's result does
// not depend on how rows are split. With `prefetch`, the x86 kernels ask for each weight
// stream ahead of its loads (gemv_streams.h: where the weights sit in L2, not beyond
// it); the others ignore it.
#pragma once

#include <cstdint>

namespace tinylm::engine {

// One int8 product for the decode step, W in panels (gemv_panels.h: [ceil(N / 16)]
// [ceil(K / 4)][16][4], rows past N and bytes past K zero), rescaled as int8::linear does:
// y[n - n0] = float(sum_k x[k] W[n, k]) * (x_scale * scale[n]) for the rows n in [n0, n1)
// of the whole matrix, the sums exact in int32. x is padded with zeros to whole groups of
// four bytes; x_sum = sum(x).
constexpr int64_t kPanelRows = 16, kPanelBytesPerGroup = 64;
inline int64_t panel_groups(int64_t K) { return (K + 3) / 4; }
inline int64_t panel_bytes(int64_t N, int64_t K) {
  return (N + kPanelRows - 1) / kPanelRows * panel_groups(K) * kPanelBytesPerGroup;
}
struct PanelGemv {
  const int8_t* W;
  int64_t K;
  const float* scale;
  const int8_t* x;
  int32_t x_sum;
  float x_scale;
  float* y;
};
using PanelGemvKernel = void (*)(const PanelGemv& g, int64_t n0, int64_t n1);
// The same for T rows of x at once (the prefill), rescaled as int8::linear does:
// y[t * y_stride + n - n0] = float(sum_k x[t, k] W[n, k]) * (x_scale[t] * scale[n]) for the
// rows n in [n0, n1) of the whole matrix. x [T, x_stride], each row zero-padded to whole
// groups of four bytes; x_sum[t] its sum.
struct PanelGemm {
  const int8_t* W;
  int64_t K;
  const float* scale;
  const int8_t* x;
  int64_t x_stride, T;
  const float* x_scale;
  const int32_t* x_sum;
  float* y;
  int64_t y_stride;
};
using PanelGemmKernel = void (*)(const PanelGemm& g, int64_t n0, int64_t n1);

void gemv_panels_ref(const PanelGemv& g, int64_t n0, int64_t n1);
void gemm_panels_ref(const PanelGemm& g, int64_t n0, int64_t n1);

#if defined(__x86_64__) || defined(_M_X64)
void gemv_panels_avx2(const PanelGemv& g, int64_t n0, int64_t n1);
void gemm_panels_avx2(const PanelGemm& g, int64_t n0, int64_t n1);
void gemv_panels_avx512vnni(const PanelGemv& g, int64_t n0, int64_t n1);
void gemm_panels_avx512vnni(const PanelGemm& g, int64_t n0, int64_t n1);
void gemv_panels_avxvnni(const PanelGemv& g, int64_t n0, int64_t n1);
void gemm_panels_avxvnni(const PanelGemm& g, int64_t n0, int64_t n1);
#endif

void gemv_ref(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
              bool prefetch);
void silu_mul_ref(float* g, const float* u, int64_t n);

// engine.h's weigh and extremes, one value at a time (sampling.cpp).
struct Extremes;
uint64_t weigh_ref(const double* x, int64_t n, double top, double inverse_temperature,
                   double unit, uint64_t* w);
Extremes extremes_ref(const double* x, int64_t n);
// weight_exp's constants, shared by its kernels: ln 2 in two parts (Cody and Waite),
// log2(e), and e^r's Taylor coefficients from r^10 down, in Horner's order.
namespace weight_exp_constants {
constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
constexpr double kLog2e = 1.44269504088896338700e+00;
constexpr double kTaylor[11] = {1.0 / 3628800, 1.0 / 362880, 1.0 / 40320, 1.0 / 5040,
                                1.0 / 720,     1.0 / 120,    1.0 / 24,    1.0 / 6,
                                1.0 / 2,       1.0,          1.0};
}  // namespace weight_exp_constants

#if defined(__x86_64__) || defined(_M_X64)
void gemv_avx2(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
               bool prefetch);
void silu_mul_avx2(float* g, const float* u, int64_t n);
void halves_f16c(const float* x, uint16_t* h, int64_t n);  // F16C comes with our AVX2 level
uint64_t weigh_avx2(const double* x, int64_t n, double top, double inverse_temperature,
                    double unit, uint64_t* w);
Extremes extremes_avx2(const double* x, int64_t n);
void gemv_avx512(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
                 bool prefetch);
void silu_mul_avx512(float* g, const float* u, int64_t n);
uint64_t weigh_avx512(const double* x, int64_t n, double top, double inverse_temperature,
                      double unit, uint64_t* w);
Extremes extremes_avx512(const double* x, int64_t n);
#endif

#if defined(__aarch64__) || defined(__arm__)
void gemv_neon(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
               bool prefetch);
void silu_mul_neon(float* g, const float* u, int64_t n);
void gemv_panels_neon(const PanelGemv& g, int64_t n0, int64_t n1);
void gemm_panels_neon(const PanelGemm& g, int64_t n0, int64_t n1);
void gemv_panels_neon_dotprod(const PanelGemv& g, int64_t n0, int64_t n1);
void gemm_panels_neon_dotprod(const PanelGemm& g, int64_t n0, int64_t n1);
#endif

}  // namespace tinylm::engine

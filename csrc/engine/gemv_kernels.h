// The per-instruction-set float32 GEMV kernels (each file compiled with its own flags by
// build_isa.py); only gemv.cpp, the tests and benchmarks/*.cpp call them directly. Each
// computes rows [n0, n1) of y = W x for a row-major W [N, K], and sums K in the same
// blocked order whatever rows it is given, so a row's result does not depend on how rows
// are split.
// With `prefetch`, the x86 kernels ask for each weight stream ahead of its loads
// (gemv_streams.h: where the weights sit in L2, not beyond it); the others ignore it.
#pragma once

#include <cstdint>

namespace tinylm::engine {

// One int8 product c = W x (exact int32) for the decode step. x is padded with zeros to
// a multiple of 64 bytes (kernels may read whole vectors of it); x_sum = sum(x). A row
// of W may be read past its end, up to the next vector boundary (those bytes meet x's
// zeros), but never past the end of W (the last row's end). prefetch: as at the top of
// this file.
struct GemvI8 {
  const int8_t* W;
  int64_t N, K;
  const int8_t* x;
  int32_t x_sum;
  int32_t* c;
  bool prefetch = true;
};
using GemvI8Kernel = void (*)(const GemvI8& g, int64_t n0, int64_t n1);

void gemv_i8_ref(const GemvI8& g, int64_t n0, int64_t n1);

// y[n] = float(c[n]) * (x_scale * scale[n]) for n in [0, count): the int8 products
// rescaled, by the same expression as int8::linear, so that the two agree bit for bit.
using RescaleKernel = void (*)(const int32_t* c, const float* scale, float x_scale, float* y,
                               int64_t count);
void rescale_ref(const int32_t* c, const float* scale, float x_scale, float* y, int64_t count);
#if defined(__x86_64__) || defined(_M_X64)
void gemv_i8_avx2(const GemvI8& g, int64_t n0, int64_t n1);
void gemv_i8_avx512vnni(const GemvI8& g, int64_t n0, int64_t n1);
void gemv_i8_avxvnni(const GemvI8& g, int64_t n0, int64_t n1);
void rescale_avx2(const int32_t* c, const float* scale, float x_scale, float* y, int64_t count);
#endif

void gemv_ref(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
              bool prefetch);
void silu_mul_ref(float* g, const float* u, int64_t n);

// engine.h's weigh, one weight at a time (sampling.cpp).
uint64_t weigh_ref(const double* x, int64_t n, double top, double inverse_temperature,
                   double unit, uint64_t* w);
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
void gemv_avx512(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
                 bool prefetch);
void silu_mul_avx512(float* g, const float* u, int64_t n);
uint64_t weigh_avx512(const double* x, int64_t n, double top, double inverse_temperature,
                      double unit, uint64_t* w);
#endif

#if defined(__aarch64__) || defined(__arm__)
void gemv_neon(const float* W, const float* x, float* y, int64_t K, int64_t n0, int64_t n1,
               bool prefetch);
void silu_mul_neon(float* g, const float* u, int64_t n);
#endif

}  // namespace tinylm::engine

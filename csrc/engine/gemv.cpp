// Matrix-vector products for the decode step: chooses the float32 kernel (gemv_*.cpp) or
// the int8 one (gemv_panels_*.cpp) for the active instruction-set level at each call, and
// runs several products that share one input (q/k/v, gate/up) in one pass: one share of
// their rows on the calling thread (the decode step's teams), or all of them split over
// the thread pool. Portable C++ (no ISA flags).
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cpu.h"
#include "../half.h"
#include "../int8/int8.h"
#include "../threads.h"
#include "engine.h"
#include "gemv_kernels.h"

namespace tinylm::engine {
namespace {

// Rows per block, the unit in which rows are split between threads: float32 kernels
// take four rows at a time, int8 ones a panel of 16 (gemv_panels.h).
constexpr int64_t kRowBlock = 4;
// For products split over the pool: a parallel job costs about 0.7 us (the pool's round
// trip with its workers awake; far more on a busy machine), while 128 KB of cached
// weights stream in ~1.5 us, so smaller chunks would spend more on handing out work than
// they save. (Measured when decode steps still split each product over the pool, 2
// threads, int8: `small` 5-20% faster than with 512 KB chunks; 64 KB made `baby` 15-40%
// slower.)
constexpr int64_t kMinChunkBytes = 128 * 1024;

int64_t block_rows(const Product& p) { return p.m->is_int8() ? kPanelRows : kRowBlock; }
int64_t blocks_of(const Product& p) { return (p.m->rows + block_rows(p) - 1) / block_rows(p); }

// Calls fn(product index, row begin, row end) for the blocks [b0, b1), counting through
// the products' rows one product after another.
template <class Fn>
void for_blocks(const Product* products, int n_products, int64_t b0, int64_t b1, Fn&& fn) {
  int64_t base = 0;
  for (int i = 0; i < n_products && b0 < b1; ++i) {
    const int64_t blocks = blocks_of(products[i]), rows = block_rows(products[i]);
    const int64_t lo = std::max(b0, base), hi = std::min(b1, base + blocks);
    if (lo < hi) fn(i, (lo - base) * rows, std::min(products[i].m->rows, (hi - base) * rows));
    base += blocks;
  }
}

// Calls fn(product index, row begin, row end) over the rows of all products (split over
// the pool), or over one share of them (on this thread); the split depends only on the
// shapes.
template <class Fn>
void for_rows(const Product* products, int n_products, int64_t bytes_per_row, RowShare share,
              Fn&& fn) {
  int64_t total = 0;
  for (int i = 0; i < n_products; ++i) total += blocks_of(products[i]);
  if (share.count > 0) {
    const int64_t b0 = total * share.index / share.count, b1 = total * (share.index + 1) / share.count;
    return for_blocks(products, n_products, b0, b1, fn);
  }
  const int64_t block_bytes = bytes_per_row * block_rows(products[0]);
  const int64_t grain = std::max<int64_t>(1, kMinChunkBytes / block_bytes);
  parallel_for(total, grain, [&](int64_t b0, int64_t b1) { for_blocks(products, n_products, b0, b1, fn); });
}

const GemvInfo& select_gemv() {
  const uint32_t active = active_features();
  for (const auto& k : gemv_kernels())
    if ((k.features & ~active) == 0) return k;
  return gemv_kernels().back();
}

// The quantized input, kept per thread (no allocation per token once it has grown).
std::vector<int8_t>& int8_scratch() {
  thread_local std::vector<int8_t> xq;
  return xq;
}

// The int8 GEMV kernels (gemv_panels_*.cpp) compiled into this build, best first.
struct I8Info {
  const char* name;
  uint32_t features;
  PanelGemvKernel fn;
  PanelGemmKernel gemm;
};

const std::vector<I8Info>& i8_kernels() {
  static const std::vector<I8Info> list = {
#if defined(__x86_64__) || defined(_M_X64)
      {"avx512vnni", kAVX2 | kAVX512 | kAVX512VNNI, gemv_panels_avx512vnni, gemm_panels_avx512vnni},
      {"avxvnni", kAVX2 | kAVXVNNI, gemv_panels_avxvnni, gemm_panels_avxvnni},
      {"avx2", kAVX2, gemv_panels_avx2, gemm_panels_avx2},
#endif
#if defined(__aarch64__) || defined(__arm__)
      {"neon_dotprod", kNEON | kDotProd, gemv_panels_neon_dotprod, gemm_panels_neon_dotprod},
      {"neon", kNEON, gemv_panels_neon, gemm_panels_neon},
#endif
      {"scalar", 0, gemv_panels_ref, gemm_panels_ref},
  };
  return list;
}

const I8Info& select_i8() {
  const uint32_t active = active_features();
  for (const auto& k : i8_kernels())
    if ((k.features & ~active) == 0) return k;
  return i8_kernels().back();
}

void gemv_int8(const float* x, const Product* products, int n_products, RowShare share) {
  const int64_t K = products[0].m->cols, padded = panel_groups(K) * 4;
  std::vector<int8_t>& xq = int8_scratch();
  xq.assign(size_t(padded), 0);  // zero padding: the kernels read whole groups of four
  float x_scale = 0;
  int32_t x_sum = 0;
  int8::quantize_rows(x, 1, K, xq.data(), padded, &x_scale, &x_sum);
  const I8Info& kernel = select_i8();
  for_rows(products, n_products, K, share, [&](int i, int64_t n0, int64_t n1) {
    const Matrix& m = *products[i].m;
    kernel.fn(PanelGemv{m.q, K, m.scale, xq.data(), x_sum, x_scale, products[i].y + n0},
              m.row0 + n0, m.row0 + n1);
  });
}

}  // namespace

void gemm_int8(const float* x, int64_t T, const Product* products, int n_products) {
  const int64_t K = products[0].m->cols, stride = panel_groups(K) * 4;
  for (int i = 0; i < n_products; ++i)
    if (!products[i].m->is_int8() || products[i].m->cols != K)
      throw std::invalid_argument("gemm_int8: int8 products of one K");
  std::vector<int8_t> xq(size_t(T * stride), 0);  // zero padding: whole groups of four
  std::vector<float> x_scale(static_cast<size_t>(T));
  std::vector<int32_t> x_sum(static_cast<size_t>(T));
  int8::quantize_rows(x, T, K, xq.data(), stride, x_scale.data(), x_sum.data());
  const I8Info& kernel = select_i8();
  // a row's work is T times a GEMV's: the pool's chunks are sized by it
  for_rows(products, n_products, K * T, {}, [&](int i, int64_t n0, int64_t n1) {
    const Matrix& m = *products[i].m;
    kernel.gemm(PanelGemm{m.q, K, m.scale, xq.data(), stride, T, x_scale.data(), x_sum.data(),
                          products[i].y + n0, m.rows},
                m.row0 + n0, m.row0 + n1);
  });
}

const std::vector<GemvInfo>& gemv_kernels() {
  static const std::vector<GemvInfo> list = {
#if defined(__x86_64__) || defined(_M_X64)
      {"avx512", kAVX2 | kAVX512, gemv_avx512, silu_mul_avx512, halves_f16c, weigh_avx512,
       extremes_avx512},
      {"avx2", kAVX2, gemv_avx2, silu_mul_avx2, halves_f16c, weigh_avx2, extremes_avx2},
#endif
#if defined(__aarch64__) || defined(__arm__)
      {"neon", kNEON, gemv_neon, silu_mul_neon, floats_to_halves, weigh_ref, extremes_ref},
#endif
      {"scalar", 0, gemv_ref, silu_mul_ref, floats_to_halves, weigh_ref, extremes_ref},
  };
  return list;
}

const char* active_gemv() { return select_gemv().name; }

void silu_mul(float* g, const float* u, int64_t n) { select_gemv().silu(g, u, n); }

void to_halves(const float* x, uint16_t* h, int64_t n) { select_gemv().halves(x, h, n); }

uint64_t weigh(const double* x, int64_t n, double top, double inverse_temperature, double unit,
               uint64_t* w) {
  return select_gemv().weigh(x, n, top, inverse_temperature, unit, w);
}

Extremes extremes(const double* x, int64_t n) { return select_gemv().extremes(x, n); }

std::string active_gemv_int8() { return select_i8().name; }

void gemv(const float* x, const Product* products, int n_products, RowShare share,
          bool prefetch) {
  if (n_products < 1 || n_products > 8) throw std::invalid_argument("gemv: 1 to 8 products");
  const bool int8 = products[0].m->is_int8();
  for (int i = 1; i < n_products; ++i)
    if (products[i].m->is_int8() != int8 || products[i].m->cols != products[0].m->cols)
      throw std::invalid_argument("gemv: products must share K and the weight type");
  if (int8) return gemv_int8(x, products, n_products, share);
  const GemvKernel kernel = select_gemv().fn;
  const int64_t K = products[0].m->cols;
  for_rows(products, n_products, K * int64_t(sizeof(float)), share, [&](int i, int64_t n0, int64_t n1) {
    kernel(products[i].m->f32, x, products[i].y, K, n0, n1, prefetch);
  });
}

}  // namespace tinylm::engine

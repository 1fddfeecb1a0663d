// Matrix-vector products for the decode step: chooses the float32 kernel (gemv_*.cpp) or
// the int8 kernel (csrc/int8/) for the active instruction-set level at each call, and
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

constexpr int64_t kRowBlock = 4;  // rows per block: the kernels' tile height
// For products split over the pool: a parallel job costs about 0.7 us (the pool's round
// trip with its workers awake; far more on a busy machine), while 128 KB of cached
// weights stream in ~1.5 us, so smaller chunks would spend more on handing out work than
// they save. (Measured when decode steps still split each product over the pool, 2
// threads, int8: `small` 5-20% faster than with 512 KB chunks; 64 KB made `baby` 15-40%
// slower.)
constexpr int64_t kMinChunkBytes = 128 * 1024;

int64_t blocks_of(const Product& p) { return (p.m->rows + kRowBlock - 1) / kRowBlock; }

// Calls fn(product index, row begin, row end) for the blocks [b0, b1) of kRowBlock rows,
// counting through the products' rows one product after another.
template <class Fn>
void for_blocks(const Product* products, int n_products, int64_t b0, int64_t b1, Fn&& fn) {
  int64_t base = 0;
  for (int i = 0; i < n_products && b0 < b1; ++i) {
    const int64_t blocks = blocks_of(products[i]);
    const int64_t lo = std::max(b0, base), hi = std::min(b1, base + blocks);
    if (lo < hi) {
      const int64_t rows = products[i].m->rows;
      fn(i, (lo - base) * kRowBlock, std::min(rows, (hi - base) * kRowBlock));
    }
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
  const int64_t grain = std::max<int64_t>(1, kMinChunkBytes / (bytes_per_row * kRowBlock));
  parallel_for(total, grain, [&](int64_t b0, int64_t b1) { for_blocks(products, n_products, b0, b1, fn); });
}

const GemvInfo& select_gemv() {
  const uint32_t active = active_features();
  for (const auto& k : gemv_kernels())
    if ((k.features & ~active) == 0) return k;
  return gemv_kernels().back();
}

const int8::KernelInfo& select_int8() {
  const uint32_t active = active_features();
  for (const auto& k : int8::kernels())
    if ((k.features & ~active) == 0) return k;
  return int8::kernels().back();
}

// Per-thread buffers for the quantized input and the int32 results (no allocation per
// token once they have grown).
struct Int8Scratch {
  std::vector<int8_t> xq;
  std::vector<int32_t> c;
};
Int8Scratch& int8_scratch() {
  thread_local Int8Scratch s;
  return s;
}

// The decode-specific int8 kernels (gemv_i8_*.cpp) where this build has one for the
// active level; elsewhere (ARM) the int8 family's kernels with M = 1.
struct I8Info {
  const char* name;
  uint32_t features;
  GemvI8Kernel fn;
  RescaleKernel rescale;
};

const std::vector<I8Info>& i8_kernels() {
  static const std::vector<I8Info> list = {
#if defined(__x86_64__) || defined(_M_X64)
      {"avx512vnni", kAVX2 | kAVX512 | kAVX512VNNI, gemv_i8_avx512vnni, rescale_avx2},
      {"avxvnni", kAVX2 | kAVXVNNI, gemv_i8_avxvnni, rescale_avx2},
      {"avx2", kAVX2, gemv_i8_avx2, rescale_avx2},
      {"scalar", 0, gemv_i8_ref, rescale_ref},
#endif
  };
  return list;
}

const I8Info* select_i8() {
  const uint32_t active = active_features();
  for (const auto& k : i8_kernels())
    if ((k.features & ~active) == 0) return &k;
  return nullptr;
}

void gemv_int8(const float* x, const Product* products, int n_products, RowShare share,
               bool prefetch) {
  const int64_t K = products[0].m->cols;
  const int64_t stride = (K + int8::kPad - 1) / int8::kPad * int8::kPad;
  Int8Scratch& s = int8_scratch();
  s.xq.assign(size_t(stride), 0);  // zero padding: the kernels read whole vectors
  float x_scale = 0;
  int32_t x_sum = 0;
  int8::quantize_rows(x, 1, K, s.xq.data(), stride, &x_scale, &x_sum);
  int64_t offsets[8], total = 0;
  for (int i = 0; i < n_products; ++i) {
    offsets[i] = total;
    total += products[i].m->rows;
  }
  s.c.resize(size_t(total));
  const I8Info* own = select_i8();
  const int8::KernelInfo& family = select_int8();
  const int8_t* xq = s.xq.data();
  int32_t* c_all = s.c.data();
  for_rows(products, n_products, K, share, [&](int i, int64_t n0, int64_t n1) {
    const Matrix& m = *products[i].m;
    int32_t* c = c_all + offsets[i];
    if (own != nullptr) {
      own->fn(GemvI8{m.q, m.rows, K, xq, x_sum, c, prefetch}, n0, n1);
    } else {
      const int8::Problem p{xq, stride, &x_sum, 1, m.q, m.rows, K, c, m.rows};
      family.fn(p, n0, n1);
    }
    const RescaleKernel rescale = own != nullptr ? own->rescale : rescale_ref;
    rescale(c + n0, m.scale + n0, x_scale, products[i].y + n0, n1 - n0);
  });
}

}  // namespace

const std::vector<GemvInfo>& gemv_kernels() {
  static const std::vector<GemvInfo> list = {
#if defined(__x86_64__) || defined(_M_X64)
      {"avx512", kAVX2 | kAVX512, gemv_avx512, silu_mul_avx512, halves_f16c, weigh_avx512},
      {"avx2", kAVX2, gemv_avx2, silu_mul_avx2, halves_f16c, weigh_avx2},
#endif
#if defined(__aarch64__) || defined(__arm__)
      {"neon", kNEON, gemv_neon, silu_mul_neon, floats_to_halves, weigh_ref},
#endif
      {"scalar", 0, gemv_ref, silu_mul_ref, floats_to_halves, weigh_ref},
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

std::string active_gemv_int8() {
  const I8Info* own = select_i8();
  return own != nullptr ? std::string(own->name) : "int8 family " + std::string(select_int8().name);
}

void gemv(const float* x, const Product* products, int n_products, RowShare share,
          bool prefetch) {
  if (n_products < 1 || n_products > 8) throw std::invalid_argument("gemv: 1 to 8 products");
  const bool int8 = products[0].m->is_int8();
  for (int i = 1; i < n_products; ++i)
    if (products[i].m->is_int8() != int8 || products[i].m->cols != products[0].m->cols)
      throw std::invalid_argument("gemv: products must share K and the weight type");
  if (int8) return gemv_int8(x, products, n_products, share, prefetch);
  const GemvKernel kernel = select_gemv().fn;
  const int64_t K = products[0].m->cols;
  for_rows(products, n_products, K * int64_t(sizeof(float)), share, [&](int i, int64_t n0, int64_t n1) {
    kernel(products[i].m->f32, x, products[i].y, K, n0, n1, prefetch);
  });
}

}  // namespace tinylm::engine

// The portable driver of the attention kernels: picks the kernel table from
// active_features() at every call, packs transposed and padded copies of the inputs,
// splits the work into independent items on the thread pool and combines the results.
//
// Work items never share an output element, and how the work is split depends only on
// the problem's shape (never on the thread count), so results are deterministic and
// need no atomics:
//   forward   one item per (batch, head, query tile);
//   backward  one item per (batch, kv head, range of key tiles); each writes dk and dv of
//             its key tiles and its own copy of dq, and the copies are summed in a fixed
//             order afterwards (one copy when there are enough kv heads to go round);
//   decode    one item per (kv head, range of cache positions), combined like the
//             partial softmaxes of flash-decoding.
#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../cpu.h"
#include "../int8/int8.h"
#include "../threads.h"
#include "attention.h"
#include "kernels.h"

namespace tinylm::attention {

namespace {

[[noreturn]] void invalid(const std::string& what) { throw std::invalid_argument(what); }

void check_heads(int64_t heads, int64_t kv_heads, int64_t head_dim) {
  if (heads % kv_heads != 0)
    invalid("heads (" + std::to_string(heads) + ") must be a multiple of kv_heads (" +
            std::to_string(kv_heads) + ")");
  if (head_dim > kMaxHeadDim)
    invalid("head_dim " + std::to_string(head_dim) + " is larger than the supported " +
            std::to_string(kMaxHeadDim));
}

}  // namespace

void validate(const Dims& d) {
  if (d.batch < 1 || d.heads < 1 || d.kv_heads < 1 || d.seq < 1 || d.head_dim < 1)
    invalid("attention sizes must be at least 1");
  check_heads(d.heads, d.kv_heads, d.head_dim);
}

void validate(const DecodeDims& d) {
  if (d.heads < 1 || d.kv_heads < 1 || d.capacity < 1 || d.head_dim < 1)
    invalid("attention decode sizes must be at least 1");
  check_heads(d.heads, d.kv_heads, d.head_dim);
  if (d.length < 1 || d.length > d.capacity)
    invalid("length " + std::to_string(d.length) + " must be in [1, capacity=" +
            std::to_string(d.capacity) + "]");
}

namespace detail {
namespace {

const TileKernels* select_kernels() {
  const uint32_t f = active_features();
#if defined(__x86_64__) || defined(_M_X64)
  if (f & kAVX512) return avx512_kernels();
  if (f & kAVX2) return avx2_kernels();
#elif defined(__aarch64__) || defined(__arm__)
  if (f & kNEON) return neon_kernels();
#endif
  (void)f;
  return nullptr;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Square tiles of 64 (T rounded up to whole vectors when shorter): big enough to keep the
// register blocks busy; the diagonal tiles skip their masked blocks, so a larger tile
// wastes little there (measured on Zen 4: 64 beats 32 at T = 64 and 128).
int choose_tile(int64_t T, int lanes) {
  return int(std::min<int64_t>(kMaxTile, round_up(T, lanes)));
}

// Scratch buffers carved from memory that each calling thread keeps between calls: a
// fresh multi-megabyte allocation per call costs more in page faults than the kernels
// take on short sequences. Contents are not initialized.
class Scratch {
 public:
  explicit Scratch(std::initializer_list<int64_t> sizes) {
    if (sizes.size() > 8) throw std::logic_error("Scratch holds at most 8 buffers");
    int64_t total = 0;
    for (int64_t n : sizes) total += round_up(n, 16);  // 64-byte aligned starts
    thread_local std::vector<float> arena;
    if (int64_t(arena.size()) < total + 16) arena = std::vector<float>(size_t(total + 16));
    float* p = arena.data();
    p += (16 - (reinterpret_cast<std::uintptr_t>(p) / sizeof(float)) % 16) % 16;
    size_t i = 0;
    for (int64_t n : sizes) {
      parts_[i++] = p;
      p += round_up(n, 16);
    }
  }
  float* operator[](size_t i) const { return parts_[i]; }

 private:
  std::array<float*, 8> parts_{};  // no allocation per call: decode runs once per token
};

// The calling thread's kWorkFloats of kernel working memory, 64-byte aligned.
float* thread_work() {
  thread_local std::vector<float> mem(size_t(kWorkFloats + 16));
  const std::uintptr_t misalign = reinterpret_cast<std::uintptr_t>(mem.data()) % 64;
  return mem.data() + (misalign ? (64 - misalign) / sizeof(float) : 0);
}

// src rows [T x D] -> dst [T x Dp], columns D..Dp zero.
void pad_rows(const float* src, int64_t T, int64_t D, float* dst, int64_t Dp) {
  for (int64_t t = 0; t < T; ++t) {
    std::copy(src + t * D, src + (t + 1) * D, dst + t * Dp);
    std::fill(dst + t * Dp + D, dst + (t + 1) * Dp, 0.f);
  }
}

// a . b in eight independent partial sums, which the compiler turns into vector code
// (one running sum would be a chain of dependent adds).
float dot(const float* a, const float* b, int64_t n) {
  float part[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 8; ++j) s += part[j];
  return s;
}

// Splits key tiles [0, n) into `parts` contiguous ranges of about equal work, where tile
// kt costs n - kt (the query tiles at or after it).
std::vector<int64_t> balanced_splits(int64_t n, int64_t parts) {
  const int64_t total = n * (n + 1) / 2;
  std::vector<int64_t> bounds{0};
  int64_t done = 0, kt = 0;
  for (int64_t s = 1; s < parts; ++s) {
    while (kt < n && done * parts < total * s) done += n - kt++;
    kt = std::max(kt, bounds.back() + 1);           // every range non-empty...
    kt = std::min(kt, n - (parts - s));             // ...and room left for the rest
    done = kt * n - kt * (kt - 1) / 2;              // work of tiles [0, kt)
    bounds.push_back(kt);
  }
  bounds.push_back(n);
  return bounds;
}

}  // namespace

void forward_with(const TileKernels* kern, const Dims& d, const float* q, const float* k,
                  const float* v, float* out, float* lse) {
  validate(d);
  if (kern == nullptr) return reference::forward(d, q, k, v, out, lse);
  const int64_t B = d.batch, H = d.heads, Hkv = d.kv_heads, T = d.seq, D = d.head_dim;
  const int tile = choose_tile(T, kern->lanes);
  const int64_t Tp = round_up(T, tile), Dp = round_up(D, kern->lanes), nq = Tp / tile;

  const Scratch scratch{B * Hkv * D * Tp, Dp == D ? 0 : B * Hkv * T * Dp};
  float *kT = scratch[0], *vp = scratch[1];
  // Each key tile transposed into its own contiguous D x tile block: with one row of
  // length Tp per feature instead, the rows a product reads lie Tp floats apart and, for
  // T a multiple of 256, all fall into the same few cache sets.
  parallel_for(B * Hkv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t t0 = 0; t0 < T; t0 += tile)
        kern->transpose(k + (i * T + t0) * D, std::min<int64_t>(tile, T - t0), D,
                        kT + i * D * Tp + t0 * D, tile);
      if (Dp != D) pad_rows(v + i * T * D, T, D, vp + i * T * Dp, Dp);
    }
  });

  const ForwardJob job{q, kT, Dp == D ? v : vp, out,  lse,
                       B, H,  Hkv,             T,   D,
                       Dp, Tp, tile,           float(1.0 / std::sqrt(double(D)))};
  // Longest items (last query tiles) first, so the pool's dynamic ranges balance.
  const int64_t heads = B * H;
  parallel_for(heads * nq, 1, [&](int64_t begin, int64_t end) {
    float* work = thread_work();
    for (int64_t i = begin; i < end; ++i)
      kern->forward_tile(job, i % heads, nq - 1 - i / heads, work);
  });
}

void backward_with(const TileKernels* kern, const Dims& d, const float* q, const float* k,
                   const float* v, const float* out, const float* lse, const float* dout,
                   float* dq, float* dk, float* dv) {
  validate(d);
  if (kern == nullptr) return reference::backward(d, q, k, v, out, lse, dout, dq, dk, dv);
  const int64_t B = d.batch, H = d.heads, Hkv = d.kv_heads, T = d.seq, D = d.head_dim;
  const int64_t group = H / Hkv;
  const int tile = choose_tile(T, kern->lanes);
  const int64_t Tp = round_up(T, tile), Dp = round_up(D, kern->lanes), nk = Tp / tile;

  // Enough items to keep a few threads busy when there are few kv heads, with a cap on
  // the memory the dq copies take.
  const int64_t per_copy = B * H * T * Dp;
  int64_t splits = std::min<int64_t>(nk, (16 + B * Hkv - 1) / (B * Hkv));
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, (int64_t(1) << 26) / per_copy));
  const std::vector<int64_t> bounds = balanced_splits(nk, splits);

  const bool pad = Dp != D;
  const bool dq_direct = splits == 1 && !pad;  // accumulate straight into dq
  const Scratch scratch{pad ? B * Hkv * T * Dp : 0, pad ? B * H * T * Dp : 0,
                        pad ? B * H * T * Dp : 0,   B * H * T,
                        dq_direct ? 0 : splits * per_copy};
  float *kp = scratch[0], *qp = scratch[1], *dop = scratch[2], *delta = scratch[3];
  float* dq_acc = dq_direct ? dq : scratch[4];

  parallel_for(B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t rows = bh * T * D;
      if (pad) {
        if (bh % group == 0) {  // the group's kv head
          const int64_t bkv = bh / group;
          pad_rows(k + bkv * T * D, T, D, kp + bkv * T * Dp, Dp);
        }
        pad_rows(q + rows, T, D, qp + bh * T * Dp, Dp);
        pad_rows(dout + rows, T, D, dop + bh * T * Dp, Dp);
      }
      for (int64_t p = 0; p < splits; ++p)  // dq accumulates from zero
        std::fill_n(dq_acc + p * per_copy + bh * T * Dp, T * Dp, 0.f);
      for (int64_t t = 0; t < T; ++t)
        delta[bh * T + t] = dot(dout + rows + t * D, out + rows + t * D, D);
    }
  });

  const BackwardJob job{q,  dout, lse,          delta,        k,           v,
                        pad ? kp : k, pad ? qp : q, pad ? dop : dout, dk, dv,
                        B,  H,    Hkv,          T,            D,           Dp,
                        Tp, tile, float(1.0 / std::sqrt(double(D)))};
  parallel_for(B * Hkv * splits, 1, [&](int64_t begin, int64_t end) {
    float* work = thread_work();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t bkv = i / splits, s = i % splits;
      kern->backward_keys(job, bkv, bounds[s], bounds[s + 1], dq_acc + s * per_copy, work);
    }
  });

  if (dq_direct) return;
  // dq = the sum of the copies, in a fixed order, without the padding.
  parallel_for(B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin * T; row < end * T; ++row)
      for (int64_t c = 0; c < D; ++c) {
        float s = 0.f;
        for (int64_t p = 0; p < splits; ++p) s += dq_acc[p * per_copy + row * Dp + c];
        dq[row * D + c] = s;
      }
  });
}

namespace {

// The decode items of a job (validated): the kernel's parts, combined.
void run_decode(const TileKernels* kern, const DecodeDims& d, const DecodeJob& job, float* out) {
  const int64_t H = d.heads, Hkv = d.kv_heads, D = d.head_dim, L = d.length, group = H / Hkv;
  const int64_t Dp = job.Dp;
  const int64_t splits = (L + kDecodePart - 1) / kDecodePart;
  const Scratch scratch{splits * H, splits * H, splits * H * Dp};
  float *m = scratch[0], *l = scratch[1], *acc = scratch[2];
  const int64_t items = Hkv * splits;
  // Waking the pool costs more than a short cache takes: stay on this thread then.
  const int64_t grain = L * H * D < (int64_t(1) << 15) ? items : 1;
  parallel_for(items, grain, [&](int64_t begin, int64_t end) {
    if (splits == 1) {  // items are kv heads: all of them in one call
      const int64_t row = begin * group;
      kern->decode_part(job, begin, end, 0, L, &m[row], &l[row], &acc[row * Dp]);
      return;
    }
    for (int64_t i = begin; i < end; ++i) {
      const int64_t hk = i / splits, s = i % splits, row = s * H + hk * group;
      const int64_t first = s * kDecodePart, last = std::min(L, first + kDecodePart);
      kern->decode_part(job, hk, hk + 1, first, last, &m[row], &l[row], &acc[row * Dp]);
    }
  });

  if (splits == 1) {  // one part per head (up to kDecodePart positions): only the division
    for (int64_t h = 0; h < H; ++h) {
      // in locals, so that the compiler sees no aliasing and divides in vectors (with l[h]
      // read from memory each time, a scalar loop: 0.27 us a `small` layer)
      const float sum = l[h];
      const float* __restrict a = acc + h * Dp;
      float* __restrict o = out + h * D;
      for (int64_t c = 0; c < D; ++c) o[c] = a[c] / sum;
    }
    return;
  }
  for (int64_t h = 0; h < H; ++h) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < splits; ++s) mx = std::max(mx, m[s * H + h]);
    float sum = 0.f;
    for (int64_t c = 0; c < D; ++c) out[h * D + c] = 0.f;
    for (int64_t s = 0; s < splits; ++s) {
      const float w = std::exp(m[s * H + h] - mx);
      sum += w * l[s * H + h];
      for (int64_t c = 0; c < D; ++c) out[h * D + c] += w * acc[(s * H + h) * Dp + c];
    }
    for (int64_t c = 0; c < D; ++c) out[h * D + c] /= sum;
  }
}

// Either cache type: E is float or uint16_t (halves); the job carries the pointers.
template <class E>
void decode_cache(const TileKernels* kern, const DecodeDims& d, const float* q,
                  const E* k_cache, const E* v_cache, float* out) {
  validate(d);
  if (kern == nullptr) return reference::decode(d, q, k_cache, v_cache, out);
  DecodeJob job{q, nullptr, nullptr, nullptr, nullptr, d.heads, d.kv_heads, d.capacity,
                d.head_dim, round_up(d.head_dim, kern->lanes),
                float(1.0 / std::sqrt(double(d.head_dim)))};
  job.prefetch = d.prefetch;
  if constexpr (std::is_same_v<E, float>) {
    job.k_cache = k_cache, job.v_cache = v_cache;
  } else {
    job.k_half = k_cache, job.v_half = v_cache;
  }
  run_decode(kern, d, job, out);
}

}  // namespace

void decode_with(const TileKernels* kern, const DecodeDims& d, const float* q,
                 const float* k_cache, const float* v_cache, float* out) {
  decode_cache(kern, d, q, k_cache, v_cache, out);
}

void decode_with(const TileKernels* kern, const DecodeDims& d, const float* q,
                 const uint16_t* k_cache, const uint16_t* v_cache, float* out) {
  decode_cache(kern, d, q, k_cache, v_cache, out);
}

void decode_with(const TileKernels* kern, Int8ScoresKernel scores, const DecodeDims& d,
                 const float* q, Int8Keys k_cache, const uint16_t* v_cache, float* out) {
  validate(d);
  if (kern == nullptr) return reference::decode(d, q, k_cache, v_cache, out);
  const int64_t H = d.heads, D = d.head_dim, row = key_row_bytes(D);
  // the queries quantized as the keys are, each head's bias and scale (Int8Scores)
  thread_local std::vector<int8_t> q8;
  thread_local std::vector<int32_t> bias;
  thread_local std::vector<float> scale;
  q8.assign(size_t(H * row), 0);
  bias.resize(size_t(H));
  scale.resize(size_t(H));
  int8::quantize_rows(q, H, D, q8.data(), row, scale.data(), bias.data());
  const float inverse_sqrt_d = float(1.0 / std::sqrt(double(D)));
  for (int64_t h = 0; h < H; ++h) bias[size_t(h)] *= 128, scale[size_t(h)] *= inverse_sqrt_d;
  DecodeJob job{q, nullptr, nullptr, nullptr, v_cache, H, d.kv_heads, d.capacity, D,
                round_up(D, kern->lanes), inverse_sqrt_d};
  job.k_codes = k_cache.codes, job.k_scales = k_cache.scales;
  job.q8 = q8.data(), job.q8_bias = bias.data(), job.q8_scale = scale.data();
  job.int8_scores = scores != nullptr ? scores : int8_scores_ref;
  job.prefetch = d.prefetch;
  run_decode(kern, d, job, out);
}

Int8ScoresKernel select_int8_scores() {
  const uint32_t f = active_features();
#if defined(__x86_64__) || defined(_M_X64)
  if ((f & kAVX512) && (f & kAVX512VNNI)) return int8_scores_avx512vnni;
  if (f & kAVX2) return int8_scores_avx2;
#elif defined(__aarch64__) || defined(__arm__)
  if ((f & kNEON) && (f & kDotProd)) return int8_scores_neon_dotprod;
  if (f & kNEON) return int8_scores_neon;
#endif
  (void)f;
  return int8_scores_ref;
}

}  // namespace detail

void forward(const Dims& d, const float* q, const float* k, const float* v, float* out,
             float* lse) {
  detail::forward_with(detail::select_kernels(), d, q, k, v, out, lse);
}

void backward(const Dims& d, const float* q, const float* k, const float* v, const float* out,
              const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  detail::backward_with(detail::select_kernels(), d, q, k, v, out, lse, dout, dq, dk, dv);
}

void decode(const DecodeDims& d, const float* q, const float* k_cache, const float* v_cache,
            float* out) {
  detail::decode_with(detail::select_kernels(), d, q, k_cache, v_cache, out);
}

void decode(const DecodeDims& d, const float* q, const uint16_t* k_cache,
            const uint16_t* v_cache, float* out) {
  detail::decode_with(detail::select_kernels(), d, q, k_cache, v_cache, out);
}

void decode(const DecodeDims& d, const float* q, Int8Keys k_cache, const uint16_t* v_cache,
            float* out) {
  detail::decode_with(detail::select_kernels(), detail::select_int8_scores(), d, q, k_cache,
                      v_cache, out);
}

const char* active_path() {
  const detail::TileKernels* k = detail::select_kernels();
  return k ? k->name : "scalar";
}

}  // namespace tinylm::attention

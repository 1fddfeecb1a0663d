// Internal interface between the portable driver (dispatch.cpp) and the per-ISA tile
// kernels (attention_avx2.cpp, attention_avx512.cpp, attention_neon.cpp).
//
// The driver owns everything that allocates, threads or reshapes: it packs transposed
// and padded copies of the inputs, splits the work into independent items and calls a
// kernel per item. A kernel only computes on the buffers it is given, so the ISA files
// need no std:: containers (whose out-of-line copies, compiled with AVX-512 flags, could
// otherwise be picked by the linker for code running on an older CPU).
//
// Layouts ("Tp" is T rounded up to the tile, "Dp" is D rounded up to the vector width;
// padding is zero unless noted):
#pragma once

#include <cstdint>

#include "attention.h"

namespace tinylm::attention::detail {

constexpr int kMaxTile = 64;

// The most cache positions one decode_part call takes: the driver splits longer caches
// into parts (their results combined like the training kernel's tiles), which also
// spreads one kv head's long cache over threads.
constexpr int64_t kDecodePart = 512;

// Floats of per-thread working memory a kernel call gets (64-byte aligned): tile buffers
// live there rather than on the stack, which may be small on a caller's threads.
constexpr int64_t kWorkFloats = 2 * kMaxTile * kMaxTile + 4 * kMaxTile * kMaxHeadDim + 3 * kMaxTile;

struct ForwardJob {
  const float* q;   // [B, H, T, D]    the caller's array
  const float* kT;  // [B, Hkv, Tp / tile, D, tile] keys transposed, tile by tile
  const float* v;   // [B, Hkv, T, Dp] values, padded rows
  float* out;       // [B, H, T, D]
  float* lse;       // [B, H, T]
  int64_t B, H, Hkv, T, D, Dp, Tp;
  int tile;  // query and key tile size, a multiple of the vector width, <= kMaxTile
  float scale;
};

struct BackwardJob {
  const float* q;      // [B, H, T, D]    the caller's arrays
  const float* dout;   // [B, H, T, D]
  const float* lse;    // [B, H, T]
  const float* delta;  // [B, H, T]       rowsum(dout * out)
  const float* k;      // [B, Hkv, T, D]  the caller's arrays
  const float* v;      // [B, Hkv, T, D]
  const float* kp;     // [B, Hkv, T, Dp] keys with padded rows
  const float* qp;     // [B, H, T, Dp]   q with padded rows
  const float* dop;    // [B, H, T, Dp]   dout with padded rows
  float* dk;           // [B, Hkv, T, D]
  float* dv;           // [B, Hkv, T, D]
  int64_t B, H, Hkv, T, D, Dp, Tp;
  int tile;
  float scale;
};

// One query head's scores over whole blocks of int8 keys (attention.h's Int8Keys):
//   s[t] = float(sum_d (keys[t][d] - 128) * q[d]) * q_scale * key_scales[t]
// for t in [0, 16 * blocks), the sum exact in int32. Stored keys' bytes are in [1, 255]
// (codes in [-127, 127]); a position never written holds 0s, whose score (masked by the
// caller) may differ from kernel to kernel.
struct Int8Scores {
  const int8_t* q;          // the query's codes, Dq * 4 of them (the padding 0)
  int32_t q_bias;           // 128 * sum(q): what the keys' bias adds to each sum
  float q_scale;            // the query's scale times 1 / sqrt(D)
  const uint8_t* keys;      // the first block
  const float* key_scales;  // its first position's
  int64_t blocks, Dq;
  const char* ahead;        // asked for on the way, ahead_bytes a block (the values next
  int64_t ahead_bytes;      // read), or null
  float* s;
};
using Int8ScoresKernel = void (*)(const Int8Scores& job);
namespace {  // each kernel file its own copy, compiled with its own flags
// Asks for the job's `ahead` rows of block b (a hint, which never faults; the address is
// computed as an integer, as the last blocks' may lie past the end of the array).
inline void ask_for_ahead(const Int8Scores& job, int64_t b, int64_t blocks) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(job.ahead) + uintptr_t(b * job.ahead_bytes);
  for (uintptr_t at = 0; at < uintptr_t(blocks * job.ahead_bytes); at += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(first + at), 0, 3);
}
}  // namespace
void int8_scores_ref(const Int8Scores& job);
#if defined(__x86_64__) || defined(_M_X64)
void int8_scores_avx2(const Int8Scores& job);
void int8_scores_avx512vnni(const Int8Scores& job);
#endif
#if defined(__aarch64__) || defined(__arm__)
void int8_scores_neon(const Int8Scores& job);
void int8_scores_neon_dotprod(const Int8Scores& job);
#endif

struct DecodeJob {
  const float* q;        // [H, D]
  const float* k_cache;  // [Hkv, capacity, D], float32; or
  const float* v_cache;
  const uint16_t* k_half;  // the same in IEEE halves (then k_cache, v_cache are null)
  const uint16_t* v_half;
  int64_t H, Hkv, capacity, D, Dp;
  float scale;
  // int8 keys (attention.h's Int8Keys; then k_half is null and the values are v_half),
  // with the queries quantized [H, Dq * 4], each head's bias and scale as in Int8Scores
  const uint8_t* k_codes = nullptr;
  const float* k_scales = nullptr;
  const int8_t* q8 = nullptr;
  const int32_t* q8_bias = nullptr;
  const float* q8_scale = nullptr;
  Int8ScoresKernel int8_scores = nullptr;
  bool prefetch = true;  // DecodeDims' prefetch
};

struct TileKernels {
  const char* name;
  int lanes;  // vector width in floats: tiles and Dp are multiples of it

  // src rows [T x D] -> dst [D x Tp], columns T..Tp zero (how kT and vT are packed).
  void (*transpose)(const float* src, int64_t T, int64_t D, float* dst, int64_t Tp);

  // Query tile `qt` of head `bh` (= b * H + h): writes its rows of out and lse.
  void (*forward_tile)(const ForwardJob& job, int64_t bh, int64_t qt, float* work);

  // Key tiles [kt_begin, kt_end) of kv head `bkv` (= b * Hkv + hk), for every query head
  // of its group: writes those rows of dk and dv, and adds the tiles' share of dq into
  // dq [B, H, T, Dp].
  void (*backward_keys)(const BackwardJob& job, int64_t bkv, int64_t kt_begin, int64_t kt_end,
                        float* dq, float* work);

  // Cache positions [begin, end), at most kDecodePart of them, for the query heads of kv
  // heads [hk0, hk1): per query head h, counted from the first of them, the max m[h] of
  // its scores, the sum l[h] of exp(score - m[h]) and the unnormalized output
  // acc[h * Dp + d].
  void (*decode_part)(const DecodeJob& job, int64_t hk0, int64_t hk1, int64_t begin,
                      int64_t end, float* m, float* l, float* acc);
};

// Defined in the ISA files compiled for this architecture.
const TileKernels* avx2_kernels();
const TileKernels* avx512_kernels();
const TileKernels* neon_kernels();

// The driver with an explicit kernel table (nullptr = the scalar reference); the public
// functions call it with the table active_features() selects. The native tests use it to
// run a table directly (e.g. the AVX-512 source compiled against SIMDe).
void forward_with(const TileKernels* kernels, const Dims& d, const float* q, const float* k,
                  const float* v, float* out, float* lse);
void backward_with(const TileKernels* kernels, const Dims& d, const float* q, const float* k,
                   const float* v, const float* out, const float* lse, const float* dout,
                   float* dq, float* dk, float* dv);
void decode_with(const TileKernels* kernels, const DecodeDims& d, const float* q,
                 const float* k_cache, const float* v_cache, float* out);
void decode_with(const TileKernels* kernels, const DecodeDims& d, const float* q,
                 const uint16_t* k_cache, const uint16_t* v_cache, float* out);
// int8 keys: `scores` scores them (nullptr: int8_scores_ref); select_int8_scores() is the
// kernel for active_features()
Int8ScoresKernel select_int8_scores();
void decode_with(const TileKernels* kernels, Int8ScoresKernel scores, const DecodeDims& d,
                 const float* q, Int8Keys k_cache, const uint16_t* v_cache, float* out);

}  // namespace tinylm::attention::detail

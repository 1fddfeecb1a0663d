// Causal self-attention with grouped-query heads: the public C++ API.
//
// Training (forward/backward) works on q [B, H, T, D] and k, v [B, Hkv, T, D], all
// C-contiguous float32; Hkv divides H and each key/value head serves H / Hkv consecutive
// query heads. Scores are scaled by 1/sqrt(D) and masked so that position t attends to
// positions 0..t. The forward pass returns the output and the per-row log-sum-exp of the
// scaled scores, lse [B, H, T]; the backward pass rebuilds the probabilities from lse, so
// no T x T matrix is ever stored.
//
// Decode is one query per head against a key/value cache:
//   q [H, D], k_cache and v_cache [Hkv, capacity, D], positions [0, length) valid.
// Each cache head's rows are contiguous, so a decode step streams through them once;
// appending a token writes row `length` of every head.
//
// Every function picks its implementation (AVX-512, AVX2+FMA, NEON or the scalar
// reference) from tinylm::active_features() at call time, and splits work with
// tinylm::parallel_for. Results do not depend on the thread count. Invalid dimensions
// throw std::invalid_argument; pointers are trusted (the Python bindings check arrays).
#pragma once

#include <cstdint>

namespace tinylm::attention {

constexpr int64_t kMaxHeadDim = 256;

struct Dims {
  int64_t batch, heads, kv_heads, seq, head_dim;
};

struct DecodeDims {
  int64_t heads, kv_heads, capacity, length, head_dim;
  // Ask for the cache's rows ahead of the loads: pays where the cache is read from beyond
  // L2, costs where it is in L2 (the engine decides; benchmarks/NOTES.md).
  bool prefetch = true;
};

// Throw std::invalid_argument describing the first problem (sizes < 1, Hkv not dividing
// H, head_dim above kMaxHeadDim, length outside [1, capacity]).
void validate(const Dims& d);
void validate(const DecodeDims& d);

// out [B,H,T,D], lse [B,H,T].
void forward(const Dims& d, const float* q, const float* k, const float* v, float* out,
             float* lse);

// Gradients given dout = dL/d(out); dq [B,H,T,D], dk and dv [B,Hkv,T,D] are overwritten.
void backward(const Dims& d, const float* q, const float* k, const float* v, const float* out,
              const float* lse, const float* dout, float* dq, float* dk, float* dv);

// out [H, D]. The caches hold float32, or IEEE halves (numpy's float16), widened to
// float as they are read.
void decode(const DecodeDims& d, const float* q, const float* k_cache, const float* v_cache,
            float* out);
void decode(const DecodeDims& d, const float* q, const uint16_t* k_cache,
            const uint16_t* v_cache, float* out);

// The int8 models' key cache: each key (one position of one kv head) quantized to int8
// with a scale of its own (int8::quantize_rows' scheme), in blocks of 16 positions laid
// out for 4-byte dot products (one vector instruction scores 16 positions at once):
//   codes [Hkv, capacity rounded up to 16 / 16, Dq, 16, 4] bytes, Dq = ceil(D / 4): a
//   block of 16 positions holds their dimensions 4g .. 4g + 3 side by side in its g-th
//   64 bytes, so dimension d of position p of a head is at byte ((p / 16 * Dq + d / 4) *
//   16 + p % 16) * 4 + d % 4; each holds the code + 128 (padding dimensions 128, i.e. 0);
//   scales [Hkv, capacity rounded up to 16] floats.
// The query is quantized the same way, a scale a head, so a score is an exact int32 dot
// product, rescaled: score[p] = float(sum_d q8[d] * key8[p][d]) * (q_scale * float(1 /
// sqrt(D))) * scales[p]. The values stay IEEE halves [Hkv, capacity, D].
struct Int8Keys {
  uint8_t* codes;
  float* scales;
};
constexpr int64_t kKeyBlock = 16;
inline int64_t key_positions(int64_t capacity) {  // a head's rows of codes and of scales
  return (capacity + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
}
inline int64_t key_row_bytes(int64_t head_dim) { return (head_dim + 3) / 4 * 4; }
// Quantizes key [head_dim] into position pos of one head's codes and scales.
void store_int8_key(const float* key, int64_t head_dim, int64_t pos, Int8Keys head);
// Dimension d of the key at position pos of one head: its code, and the key as floats,
// code * scale.
int8_t int8_key_code(Int8Keys head, int64_t head_dim, int64_t pos, int64_t d);
void load_int8_key(Int8Keys head, int64_t head_dim, int64_t pos, float* key);
void decode(const DecodeDims& d, const float* q, Int8Keys k_cache, const uint16_t* v_cache,
            float* out);

// Name of the implementation the calls above use now: "avx512", "avx2", "neon", "scalar".
const char* active_path();

// The scalar reference (double accumulation): the "scalar" path and the tests' oracle.
namespace reference {
void forward(const Dims& d, const float* q, const float* k, const float* v, float* out,
             float* lse);
void backward(const Dims& d, const float* q, const float* k, const float* v, const float* out,
              const float* lse, const float* dout, float* dq, float* dk, float* dv);
void decode(const DecodeDims& d, const float* q, const float* k_cache, const float* v_cache,
            float* out);
void decode(const DecodeDims& d, const float* q, const uint16_t* k_cache,
            const uint16_t* v_cache, float* out);
void decode(const DecodeDims& d, const float* q, Int8Keys k_cache, const uint16_t* v_cache,
            float* out);
}  // namespace reference

}  // namespace tinylm::attention

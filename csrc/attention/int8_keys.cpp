// The int8 key cache (attention.h's Int8Keys): storing a key, reading one back, and the
// scalar scores every SIMD kernel (int8_keys_*.cpp) must reproduce exactly. Portable C++.
#include <cstring>
#include <stdexcept>
#include <string>

#include "../int8/int8.h"
#include "attention.h"
#include "kernels.h"

namespace tinylm::attention {
namespace {

// Byte offset of dimension d of position p in a head's codes.
int64_t code_offset(int64_t p, int64_t d, int64_t Dq) {
  return ((p / kKeyBlock * Dq + d / 4) * kKeyBlock + p % kKeyBlock) * 4 + d % 4;
}

}  // namespace

void store_int8_key(const float* key, int64_t head_dim, int64_t pos, Int8Keys head) {
  if (head_dim < 1 || head_dim > kMaxHeadDim)
    throw std::invalid_argument("store_int8_key: head_dim " + std::to_string(head_dim) +
                                " outside [1, " + std::to_string(kMaxHeadDim) + "]");
  int8_t codes[kMaxHeadDim + 4];
  int8::quantize_rows(key, 1, head_dim, codes, head_dim, head.scales + pos);
  const int64_t Dq = key_row_bytes(head_dim) / 4;
  for (int64_t d = head_dim; d < Dq * 4; ++d) codes[d] = 0;  // the padding dimensions
  uint8_t* lane = head.codes + code_offset(pos, 0, Dq);  // its 4 bytes of each 64
  for (int64_t g = 0; g < Dq; ++g)
    for (int64_t i = 0; i < 4; ++i) lane[g * kKeyBlock * 4 + i] = uint8_t(codes[g * 4 + i] + 128);
}

int8_t int8_key_code(Int8Keys head, int64_t head_dim, int64_t pos, int64_t d) {
  return int8_t(int32_t(head.codes[code_offset(pos, d, key_row_bytes(head_dim) / 4)]) - 128);
}

void load_int8_key(Int8Keys head, int64_t head_dim, int64_t pos, float* key) {
  for (int64_t d = 0; d < head_dim; ++d)
    key[d] = float(int8_key_code(head, head_dim, pos, d)) * head.scales[pos];
}

namespace detail {

void int8_scores_ref(const Int8Scores& job) {
  for (int64_t b = 0; b < job.blocks; ++b) {
    const uint8_t* block = job.keys + b * kKeyBlock * job.Dq * 4;
    for (int64_t p = 0; p < kKeyBlock; ++p) {
      int32_t sum = 0;
      for (int64_t g = 0; g < job.Dq; ++g)
        for (int64_t i = 0; i < 4; ++i)
          sum += int32_t(block[(g * kKeyBlock + p) * 4 + i]) * job.q[g * 4 + i];
      const int64_t t = b * kKeyBlock + p;
      job.s[t] = float(sum - job.q_bias) * job.q_scale * job.key_scales[t];
    }
  }
}

}  // namespace detail
}  // namespace tinylm::attention

// Scores over int8 keys, NEON (AArch64 and ARMv7; int8_keys_neon.h): vmull_s8 multiplies
// 2 positions' 4 dimensions by the query's 4 bytes into int16 (at most 128 * 127),
// vpadalq adds them in pairs to int32 sums, and the pairs of sums are added at the end.
#include "int8_keys_neon.h"

namespace tinylm::attention::detail {
namespace {

struct WideningDots {
  struct Sums {  // per 4 positions: the pair sums of dimensions 0-1 and 2-3 of the first
    int32x4_t lo[4], hi[4];  // two positions (lo) and of the last two (hi)
    Sums() {
      for (int v = 0; v < 4; ++v) lo[v] = hi[v] = vdupq_n_s32(0);
    }
  };
  static void add(Sums& s, int v, int8x16_t key, int8x16_t q) {
    s.lo[v] = vpadalq_s16(s.lo[v], vmull_s8(vget_low_s8(key), vget_low_s8(q)));
    s.hi[v] = vpadalq_s16(s.hi[v], vmull_s8(vget_high_s8(key), vget_high_s8(q)));
  }
  static int32x4_t sums(const Sums& s, int v) {  // [lo0 + lo1, lo2 + lo3, hi0 + hi1, hi2 + hi3]
#if defined(__aarch64__)
    return vpaddq_s32(s.lo[v], s.hi[v]);
#else
    return vcombine_s32(vpadd_s32(vget_low_s32(s.lo[v]), vget_high_s32(s.lo[v])),
                        vpadd_s32(vget_low_s32(s.hi[v]), vget_high_s32(s.hi[v])));
#endif
  }
};

}  // namespace

void int8_scores_neon(const Int8Scores& j) { neon_int8_scores<WideningDots>(j); }

}  // namespace tinylm::attention::detail

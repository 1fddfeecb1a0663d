// Scores over int8 keys with ARM's dot products (ARMv8.2 sdot: Raspberry Pi 5, Apple M,
// Neoverse; also built for AArch32; int8_keys_neon.h): one sdot adds a vector's 4
// dimensions into its 4 positions' sums, where plain NEON takes four instructions.
#include "int8_keys_neon.h"

namespace tinylm::attention::detail {
namespace {

struct DotProducts {
  struct Sums {
    int32x4_t s[4];  // positions 4v .. 4v + 3
    Sums() {
      for (int v = 0; v < 4; ++v) s[v] = vdupq_n_s32(0);
    }
  };
  static void add(Sums& s, int v, int8x16_t key, int8x16_t q) {
    s.s[v] = vdotq_s32(s.s[v], key, q);
  }
  static int32x4_t sums(const Sums& s, int v) { return s.s[v]; }
};

}  // namespace

void int8_scores_neon_dotprod(const Int8Scores& j) { neon_int8_scores<DotProducts>(j); }

}  // namespace tinylm::attention::detail

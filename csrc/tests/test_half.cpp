// The float16 conversions of csrc/half.h (the int8 models' KV cache) on every target,
// against definitions written another way: half_to_float against ldexp of the fields;
// float_to_half by what it must return, the nearest half (ties to the even one), for
// floats around every half. On x86 also with denormals flushed (DAZ/FTZ), which the
// results must not depend on. (The Python tests also compare both with numpy.)
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../half.h"
#include "check.h"

namespace {

using tinylm::float_to_half;
using tinylm::half_to_float;

double half_value(uint16_t h) {  // from the fields; NaN for exponent 31 with a mantissa
  const int e = h >> 10 & 0x1f, m = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1 : 1;
  if (e == 0x1f) return m ? NAN : sign * INFINITY;
  return sign * (e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25));
}

float bits_to_float(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// Floats at and around every finite half: the half, its neighbours one float ulp away,
// the midpoints to the next half and one ulp either side of them, both signs.
std::vector<float> floats_near_halves() {
  std::vector<float> out;
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    uint32_t x;
    const float f = float(half_value(uint16_t(h)));
    std::memcpy(&x, &f, 4);
    const float next = h + 1 < 0x7c00 ? float(half_value(uint16_t(h + 1))) : 65536.f;
    const float mid = float((double(f) + double(next)) / 2);
    uint32_t xm;
    std::memcpy(&xm, &mid, 4);
    for (uint32_t v : {x, x + 1, x - 1, xm, xm + 1, xm - 1}) {
      if (std::isnan(bits_to_float(v))) continue;  // x - 1 below zero
      out.push_back(bits_to_float(v));
      out.push_back(-bits_to_float(v));
    }
  }
  for (float f : {65519.996f, 65520.f, 1e30f, INFINITY, 1e-45f, 1e-40f}) {
    out.push_back(f);
    out.push_back(-f);
  }
  return out;
}

void check_all(const char* mode) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const double want = half_value(uint16_t(h));
    const float got = half_to_float(uint16_t(h));
    CHECK(std::isnan(want) ? std::isnan(got) : double(got) == want && std::signbit(got) == bool(h & 0x8000),
          "%s: half_to_float(0x%04x) = %.9g, want %.9g", mode, unsigned(h), double(got), want);
  }
  std::vector<float> fs = floats_near_halves();
  std::vector<uint16_t> batch(fs.size());
  tinylm::floats_to_halves(fs.data(), batch.data(), int64_t(fs.size()));
  for (size_t i = 0; i < fs.size(); ++i) {
    const double f = fs[i];
    const uint16_t h = float_to_half(fs[i]);
    CHECK(batch[i] == h, "%s: floats_to_halves and float_to_half differ at %.9g", mode, f);
    CHECK(bool(h & 0x8000) == std::signbit(fs[i]), "%s: sign of %.9g lost", mode, f);
    const double a = std::fabs(f);
    const uint16_t mag = h & 0x7fff;
    if (a >= 65520) {
      CHECK(mag == 0x7c00, "%s: %.9g gave 0x%04x, want infinity", mode, f, unsigned(h));
      continue;
    }
    CHECK(mag < 0x7c00, "%s: %.9g gave 0x%04x, not finite", mode, f, unsigned(h));
    const double err = std::fabs(a - half_value(mag));
    for (uint16_t other : {uint16_t(mag - 1), uint16_t(mag + 1)}) {
      if (mag == 0 && other == 0xffff) continue;
      const double other_err = std::fabs(a - (other < 0x7c00 ? half_value(other) : 65536.0));
      CHECK(err < other_err || (err == other_err && (mag & 1) == 0),
            "%s: %.9g gave 0x%04x (off by %.3g), 0x%04x is nearer or even (off by %.3g)", mode,
            f, unsigned(h), err, unsigned(other), other_err);
    }
  }
}

}  // namespace

TEST(half_conversions_round_to_nearest_even) { check_all("default"); }

#if defined(__x86_64__)
TEST(half_conversions_do_not_depend_on_flushing_denormals) {
  tinylm::testing::with_denormals_flushed([] { check_all("DAZ/FTZ"); });
}
#endif
